//! The behaviour every read model kept in a database must show (SQLite,
//! PostgreSQL), as [`conformance`](crate::conformance) is for stores: catch-up
//! then live, a restart from the stored checkpoint, failing events retried,
//! parked with their aggregate's later events while others flow on, retried and
//! skipped from the handle, undecodable events parked at once; rebuilds, by a
//! new version or on demand, equal to the read model built live, with their
//! progress; versions refused. Each kind's test file implements [`Harness`] and
//! runs every check through [`read_model_tests!`](crate::read_model_tests).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eda::prelude::*;
use eda::read_model::InDatabase;
use eda::{Metadata, NewEvent, Projection, ProjectionHandle, RunnerState, StreamId};

use crate::bank::{open_account, DepositMoney};
use crate::ledger::LedgerRows;

/// How long a check waits for a runner.
pub const WAIT: Duration = Duration::from_secs(30);

/// A kind of read model under test, on a fresh store and read database.
pub trait Harness {
    /// The ledger ([`crate::ledger`]) in this kind, named `ledger`, at version
    /// 1, with a `#[reset]` method.
    type Ledger: Projection<Kind: InDatabase>;
    /// The same ledger at version 2.
    type LedgerV2: Projection<Kind: InDatabase>;
    /// A read model named `flaky`, at version 2 and without a `#[reset]`
    /// method, that fails on the deposit of 13 while its failure count is above
    /// zero (counting down), and otherwise records each deposit's position in
    /// the ledger's `applications` table.
    type Flaky: Projection<Kind: InDatabase>;

    /// The test's store.
    type Store: EventStore;

    /// The `App` on the test's store.
    fn app(&self) -> &App;

    /// The test's store itself.
    fn store(&self) -> &Self::Store;

    /// Starts the ledger on the test's read database.
    fn try_start_ledger(
        &self,
    ) -> impl Future<Output = Result<ProjectionHandle<Self::Ledger>, StoreError>>;

    /// Starts the ledger's version 2 on the test's read database.
    fn try_start_ledger_v2(
        &self,
    ) -> impl Future<Output = Result<ProjectionHandle<Self::LedgerV2>, StoreError>>;

    /// Starts the flaky read model, failing `failures` more times.
    fn try_start_flaky(
        &self,
        failures: &Arc<AtomicU32>,
    ) -> impl Future<Output = Result<ProjectionHandle<Self::Flaky>, StoreError>>;

    /// Stores `version` as the version that built the read model `name`.
    fn set_version(&self, name: &str, version: u32) -> impl Future<Output = ()>;

    /// Starts the ledger on the test's read database.
    fn start_ledger(&self) -> impl Future<Output = ProjectionHandle<Self::Ledger>> {
        async { self.try_start_ledger().await.expect("start the ledger") }
    }

    /// Starts the flaky read model, failing `failures` more times.
    fn start_flaky(
        &self,
        failures: &Arc<AtomicU32>,
    ) -> impl Future<Output = ProjectionHandle<Self::Flaky>> {
        async { self.try_start_flaky(failures).await.expect("start flaky") }
    }

    /// The ledger's rows.
    fn rows(&self) -> impl Future<Output = LedgerRows>;

    /// The positions in `applications`, in the order they were applied.
    fn applied_positions(&self) -> impl Future<Output = Vec<u64>>;

    /// Appends `event` to `stream` straight to the store: its position.
    fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        event: NewEvent,
    ) -> impl Future<Output = u64> {
        async move {
            let metadata = Metadata::default();
            let appended = self
                .store()
                .append(stream, expected_version, vec![event], &metadata);
            appended.await.unwrap().position
        }
    }
}

/// Declares one test per check, each run through `$with_harness`: an async
/// function that gives the check a fresh [`Harness`] and cleans up after it.
#[macro_export]
macro_rules! read_model_tests {
    ($with_harness:path) => {
        $crate::read_model_tests!(@each $with_harness;
            it_catches_up_then_follows,
            a_restart_goes_on_from_the_stored_checkpoint,
            a_failing_event_is_retried_and_the_events_before_it_are_kept,
            a_poison_event_parks_its_aggregates_later_events_while_others_flow_on,
            a_skipped_parked_event_is_never_applied,
            an_event_it_cannot_decode_is_parked_at_once,
            a_second_runner_stands_by_and_takes_over_when_the_first_stops,
            a_new_version_rebuilds_the_read_model_once,
            a_rebuild_on_demand_equals_the_read_model_before_it,
            a_rebuild_reports_its_progress,
            an_older_version_without_reset_is_refused,
            a_newer_version_is_refused,
        );
    };
    (@each $with_harness:path; $($name:ident,)*) => {$(
        #[tokio::test]
        async fn $name() {
            $with_harness($crate::read_models::$name).await;
        }
    )*};
}

/// Deposits `amount` into `account`: the event's position.
pub async fn deposit(app: &App, account: &str, amount: u64) -> u64 {
    let command = DepositMoney {
        account: account.into(),
        amount,
    };
    app.execute(command)
        .await
        .expect("deposit")
        .position
        .unwrap()
}

/// Events before the start are caught up with, later ones followed live.
pub async fn it_catches_up_then_follows<H: Harness>(h: H) {
    open_account(h.app(), "a").await;
    deposit(h.app(), "a", 5).await;
    let ledger = h.start_ledger().await;
    let position = deposit(h.app(), "a", 7).await;
    ledger.wait_for(Some(position), WAIT).await.unwrap();
    let rows = h.rows().await;
    assert_eq!(rows.balances["a"], 12);
    assert_eq!(rows.applications.len(), 3);
    assert_eq!(rows.applied_twice(), 0);
    let status = ledger.status();
    assert_eq!((status.name, status.applied), ("ledger", 3));
    assert!(status.checkpoint >= position);
    assert_eq!(status.state, RunnerState::Live);
    ledger.stop().await;
}

/// A stopped read model started again applies only what came after its
/// checkpoint.
pub async fn a_restart_goes_on_from_the_stored_checkpoint<H: Harness>(h: H) {
    open_account(h.app(), "a").await;
    let first = h.start_ledger().await;
    let position = deposit(h.app(), "a", 1).await;
    first.wait_for(Some(position), WAIT).await.unwrap();
    first.stop().await;
    deposit(h.app(), "a", 2).await;
    let position = deposit(h.app(), "a", 3).await;

    let second = h.start_ledger().await;
    second.wait_for(Some(position), WAIT).await.unwrap();
    let rows = h.rows().await;
    assert_eq!(rows.balances["a"], 6);
    assert_eq!(rows.applications.len(), 4);
    assert_eq!(rows.applied_twice(), 0);
    // Only the two deposits made while it was stopped were applied again.
    assert_eq!(second.status().applied, 2);
    second.stop().await;
}

/// Account `a` with deposits of 1, 2, 13, 4 and 5 (their positions), and the
/// flaky read model started after them, failing `failures` times.
async fn flaky_run<H: Harness>(h: &H, failures: u32) -> (ProjectionHandle<H::Flaky>, Vec<u64>) {
    open_account(h.app(), "a").await;
    let mut deposits = Vec::new();
    for amount in [1, 2, 13, 4, 5] {
        deposits.push(deposit(h.app(), "a", amount).await);
    }
    let flaky = h.start_flaky(&Arc::new(AtomicU32::new(failures))).await;
    (flaky, deposits)
}

/// A handler's error is retried; the events before it are not applied again.
pub async fn a_failing_event_is_retried_and_the_events_before_it_are_kept<H: Harness>(h: H) {
    let (flaky, deposits) = flaky_run(&h, 2).await;
    flaky
        .wait_for(deposits.last().copied(), WAIT)
        .await
        .unwrap();
    assert_eq!(h.applied_positions().await, deposits, "every deposit, once");
    assert!(flaky.parked().await.unwrap().is_empty());
    flaky.stop().await;
}

/// An event failing every attempt is parked with its aggregate's later events
/// (live ones too, and across a restart); other aggregates flow on; a retry
/// that fails keeps them, one after the fix drains the park in order.
pub async fn a_poison_event_parks_its_aggregates_later_events_while_others_flow_on<H: Harness>(
    h: H,
) {
    let app = h.app();
    open_account(app, "a").await;
    open_account(app, "b").await;
    let a1 = deposit(app, "a", 1).await;
    let poison = deposit(app, "a", 13).await;
    let b2 = deposit(app, "b", 2).await;
    let behind = deposit(app, "a", 3).await;
    let b4 = deposit(app, "b", 4).await;
    let failures = Arc::new(AtomicU32::new(u32::MAX));
    let handle = h.start_flaky(&failures).await;
    handle.wait_for(Some(b4), WAIT).await.unwrap();

    assert_eq!(
        h.applied_positions().await,
        [a1, b2, b4],
        "b flows on; a stops"
    );
    let parked = handle.parked().await.unwrap();
    let parked_positions: Vec<u64> = parked.iter().map(|p| p.position).collect();
    assert_eq!(parked_positions, [poison, behind]);
    assert!(
        parked[0].error.contains("#[on] method failed"),
        "{}",
        parked[0].error
    );
    assert!(parked[1].error.contains("behind"), "{}", parked[1].error);
    assert_eq!(
        (parked[0].aggregate_id.as_str(), parked[0].name.as_str()),
        ("a", "MoneyDeposited")
    );
    assert_eq!(handle.status().parked, 2);
    assert_eq!(handle.status().state, RunnerState::Live);

    // A later event of the parked aggregate is parked too, live.
    let later = deposit(app, "a", 5).await;
    handle.wait_for(Some(later), WAIT).await.unwrap();
    assert_eq!(handle.status().parked, 3);

    // Parked events survive a restart.
    handle.stop().await;
    let handle = h.start_flaky(&failures).await;
    assert_eq!(handle.status().parked, 3);
    let parked = handle.parked().await.unwrap();
    let still: Vec<u64> = parked.iter().map(|p| p.position).collect();
    assert_eq!(still, [poison, behind, later]);

    // A retry that fails again keeps them, with the new error.
    let retried = handle.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (0, 3));

    // After the fix, a retry drains the park in order.
    failures.store(0, Ordering::SeqCst);
    let retried = handle.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (3, 0));
    let applied = h.applied_positions().await;
    assert_eq!(applied, [a1, b2, b4, poison, behind, later]);
    assert_eq!(handle.status().parked, 0);
    assert!(handle.parked().await.unwrap().is_empty());

    // And the aggregate flows again.
    let next = deposit(app, "a", 6).await;
    handle.wait_for(Some(next), WAIT).await.unwrap();
    assert_eq!(h.applied_positions().await.last(), Some(&next));
    handle.stop().await;
}

/// A parked event skipped is never applied; its aggregate's later ones are,
/// once retried.
pub async fn a_skipped_parked_event_is_never_applied<H: Harness>(h: H) {
    let (flaky, deposits) = flaky_run(&h, u32::MAX).await;
    flaky
        .wait_for(deposits.last().copied(), WAIT)
        .await
        .unwrap();
    // Every later deposit of the one account is behind the poison one.
    let parked = flaky.parked().await.unwrap();
    assert_eq!(parked.len(), 3);
    assert!(flaky.skip_parked(parked[0].event_id).await.unwrap());
    assert!(
        !flaky.skip_parked(parked[0].event_id).await.unwrap(),
        "skipped once"
    );
    assert_eq!(flaky.status().parked, 2);
    let retried = flaky.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (2, 0));
    let expected = [deposits[0], deposits[1], deposits[3], deposits[4]];
    assert_eq!(h.applied_positions().await, expected);
    flaky.stop().await;
}

/// An event its method cannot decode is parked without retries.
pub async fn an_event_it_cannot_decode_is_parked_at_once<H: Harness>(h: H) {
    open_account(h.app(), "a").await;
    // A deposit whose amount is text (written by hand, or by a broken producer).
    let stream = StreamId {
        aggregate_type: "Account",
        aggregate_id: "a",
    };
    let bad = crate::new_event("MoneyDeposited", r#"{"amount":"ten"}"#);
    let position = h.append(stream, 1, bad).await;
    let handle = h.start_flaky(&Arc::new(AtomicU32::new(0))).await;
    handle.wait_for(Some(position), WAIT).await.unwrap();
    let parked = handle.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].position, position);
    assert!(
        parked[0].error.contains("cannot decode"),
        "{}",
        parked[0].error
    );
    handle.stop().await;
}

/// Waits (at most [`WAIT`]) until `done` holds.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a runner is on standby.
pub fn is_standby(state: &RunnerState) -> bool {
    matches!(state, RunnerState::Standby { .. })
}

/// Two runners of one read model: one applies, the other stands by (and applies
/// nothing) until the first stops; then it takes over within seconds, from
/// where the first left off, and nothing is applied twice.
pub async fn a_second_runner_stands_by_and_takes_over_when_the_first_stops<H: Harness>(h: H) {
    let one = h.start_ledger().await;
    let two = h.start_ledger().await;
    open_account(h.app(), "a").await;
    let position = deposit(h.app(), "a", 1).await;
    until("applied by one of the runners", || {
        one.status().checkpoint >= position || two.status().checkpoint >= position
    })
    .await;
    let (active, standby) = if one.status().checkpoint >= position {
        (one, two)
    } else {
        (two, one)
    };
    // The other may still be taking its first look at the lease.
    until("the other on standby", || {
        is_standby(&standby.status().state)
    })
    .await;
    assert_eq!(standby.status().applied, 0);

    // It stays on standby while the other applies.
    let position = deposit(h.app(), "a", 2).await;
    active.wait_for(Some(position), WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(is_standby(&standby.status().state));
    assert_eq!(standby.status().applied, 0);

    // The first stops: the second takes over within seconds, from where the
    // first left off.
    active.stop().await;
    let stopped = std::time::Instant::now();
    let position = deposit(h.app(), "a", 3).await;
    standby.wait_for(Some(position), WAIT).await.unwrap();
    let took = stopped.elapsed();
    // Within seconds: it tries about once a second (the bound allows for a
    // loaded machine).
    assert!(took < Duration::from_secs(15), "took over after {took:?}");
    assert_eq!(standby.status().applied, 1, "only the new deposit");
    let rows = h.rows().await;
    assert_eq!((rows.applications.len(), rows.applied_twice()), (4, 0));
    assert_eq!(rows.balances["a"], 6);
    standby.stop().await;
}

/// The positions and ids of the events `handle` parked.
async fn parked_ids<P>(handle: &ProjectionHandle<P>) -> Vec<(u64, eda::Uuid)> {
    let parked = handle.parked().await.unwrap();
    parked.iter().map(|p| (p.position, p.event_id)).collect()
}

/// The status of `handle` once it is live.
async fn until_live<P>(handle: &ProjectionHandle<P>) -> eda::RunnerStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = handle.status();
        if status.state == RunnerState::Live {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Accounts `a` and `b` with deposits, and an undecodable deposit to `z`: the
/// position of the last event.
async fn accounts_and_a_bad_event<H: Harness>(h: &H) -> u64 {
    open_account(h.app(), "a").await;
    open_account(h.app(), "b").await;
    for (account, amount) in [("a", 1), ("b", 2), ("a", 3)] {
        deposit(h.app(), account, amount).await;
    }
    let stream = StreamId {
        aggregate_type: "Account",
        aggregate_id: "z",
    };
    let bad = crate::new_event("MoneyDeposited", r#"{"amount":"ten"}"#);
    h.append(stream, 0, bad).await;
    deposit(h.app(), "b", 4).await
}

/// The read model a new version of the ledger finds (built by version 1) is
/// emptied and rebuilt from the log, with its parked events, and equals the one
/// version 1 built live; started again, version 2 goes on from its checkpoint.
pub async fn a_new_version_rebuilds_the_read_model_once<H: Harness>(h: H) {
    let last = accounts_and_a_bad_event(&h).await;
    let v1 = h.start_ledger().await;
    v1.wait_for(Some(last), WAIT).await.unwrap();
    let live = h.rows().await;
    let parked = parked_ids(&v1).await;
    assert_eq!(parked.len(), 1);
    v1.stop().await;

    let v2 = h.try_start_ledger_v2().await.unwrap();
    v2.wait_for(Some(last), WAIT).await.unwrap();
    let rebuilt = h.rows().await;
    live.assert_rebuilt("the ledger", &rebuilt);
    assert_eq!(rebuilt.applications.len(), 6);
    assert_eq!(
        v2.status().applied,
        7,
        "every event again, the bad one parked"
    );
    assert_eq!(parked_ids(&v2).await, parked, "parked again, once");
    let later = deposit(h.app(), "a", 5).await;
    v2.wait_for(Some(later), WAIT).await.unwrap();
    assert_eq!(v2.status().state, RunnerState::Live);
    v2.stop().await;

    // Version 2 built it: a second start does not rebuild it.
    let again = h.try_start_ledger_v2().await.unwrap();
    let next = deposit(h.app(), "b", 6).await;
    again.wait_for(Some(next), WAIT).await.unwrap();
    assert_eq!(again.status().applied, 1, "only the new deposit");
    let rows = h.rows().await;
    assert_eq!(rows.applied_twice(), 0);
    assert_eq!((rows.balances["a"], rows.balances["b"]), (9, 12));
    assert_eq!(again.parked().await.unwrap().len(), 1);
    again.stop().await;
}

/// `rebuild()` on a running read model empties it and its parked events, and
/// replays the log into it: it equals the read model before.
pub async fn a_rebuild_on_demand_equals_the_read_model_before_it<H: Harness>(h: H) {
    let last = accounts_and_a_bad_event(&h).await;
    let ledger = h.start_ledger().await;
    ledger.wait_for(Some(last), WAIT).await.unwrap();
    let before = h.rows().await;
    let parked = parked_ids(&ledger).await;
    assert_eq!(ledger.status().applied, 7);

    ledger.rebuild().await.unwrap();
    let later = deposit(h.app(), "a", 5).await;
    ledger.wait_for(Some(later), WAIT).await.unwrap();
    let mut rows = h.rows().await;
    assert_eq!(rows.applied_twice(), 0);
    // Without the deposit made after the rebuild, as before it.
    *rows.balances.get_mut("a").unwrap() -= 5;
    rows.applications
        .retain(|id, _| before.applications.contains_key(id));
    before.assert_rebuilt("the ledger", &rows);
    assert_eq!(ledger.status().applied, 7 + 7 + 1);
    assert_eq!(parked_ids(&ledger).await, parked, "parked again, once");
    assert_eq!(ledger.status().parked, 1);
    assert_eq!(ledger.status().state, RunnerState::Live);
    ledger.stop().await;

    // A projection without a #[reset] method cannot be rebuilt; nor can a
    // stopped one.
    let flaky = h.start_flaky(&Arc::new(AtomicU32::new(0))).await;
    let refused = flaky.rebuild().await.unwrap_err();
    assert!(refused.to_string().contains("#[reset]"), "{refused}");
    flaky.stop().await;
    let stopped = ledger.rebuild().await.unwrap_err();
    assert!(stopped.to_string().contains("stopped"), "{stopped}");
}

/// While it rebuilds a few thousand events, the status says so and counts
/// them: every event read of the total, never more.
pub async fn a_rebuild_reports_its_progress<H: Harness>(h: H) {
    let events = crate::ledger::fill(h.store(), 20, 249).await;
    let last = deposit(h.app(), "acc-0", 1).await;
    let total = events + 1;
    let ledger = h.start_ledger().await;
    ledger.wait_for(Some(last), WAIT).await.unwrap();
    let status = until_live(&ledger).await;
    assert_eq!((status.applied, status.progress), (total, None));
    let before = h.rows().await;

    ledger.rebuild().await.unwrap();
    let (mut seen, mut done) = (0, 0);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = ledger.status();
        match status.state {
            RunnerState::Rebuilding => {
                let progress = status.progress.clone().expect("the progress of a rebuild");
                assert_eq!(progress.total, Some(total), "{progress:?}");
                assert!(progress.done >= done, "{progress:?} after {done}");
                assert!(progress.done <= total, "{progress:?}");
                if progress.done > 0 {
                    assert!(progress.remaining.is_some(), "{progress:?}");
                }
                assert!(status.checkpoint <= last);
                done = progress.done;
                seen += 1;
            }
            RunnerState::Live => break,
            ref other => panic!("{other:?} while rebuilding"),
        }
        assert!(std::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(seen > 0, "the status never showed the rebuild");
    let status = ledger.status();
    assert_eq!((status.applied, status.progress), (2 * total, None));
    h.rows().await.assert_rebuilt("the ledger", &before);
    ledger.stop().await;
}

/// A read model built by an older version of a projection without a
/// `#[reset]` method is refused, saying how to rebuild it.
pub async fn an_older_version_without_reset_is_refused<H: Harness>(h: H) {
    let flaky = h.start_flaky(&Arc::new(AtomicU32::new(0))).await;
    flaky.stop().await;
    h.set_version("flaky", 1).await;
    let Err(error) = h.try_start_flaky(&Arc::new(AtomicU32::new(0))).await else {
        panic!("started on a read model of version 1");
    };
    let StoreError::Invalid { what, reason } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*what, "projection version");
    assert!(reason.contains("built by version 1"), "{reason}");
    assert!(reason.contains("#[reset]"), "{reason}");
}

/// Older code never overwrites a read model built by a newer version.
pub async fn a_newer_version_is_refused<H: Harness>(h: H) {
    let position = open_account(h.app(), "a").await;
    let v2 = h.try_start_ledger_v2().await.unwrap();
    v2.wait_for(Some(position), WAIT).await.unwrap();
    v2.stop().await;
    let Err(error) = h.try_start_ledger().await else {
        panic!("version 1 started on a read model of version 2");
    };
    let StoreError::Invalid { what, reason } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(*what, "projection version");
    assert!(reason.contains("newer"), "{reason}");
    // Version 2 still goes on.
    let v2 = h.try_start_ledger_v2().await.unwrap();
    let next = deposit(h.app(), "a", 1).await;
    v2.wait_for(Some(next), WAIT).await.unwrap();
    assert_eq!(v2.status().applied, 1);
    v2.stop().await;
}
