//! The behaviour every read model kept in a database must show (SQLite,
//! PostgreSQL), as [`conformance`](crate::conformance) is for stores: catch-up
//! then live, a restart from the stored checkpoint, failing events retried,
//! parked with their aggregate's later events while others flow on, retried and
//! skipped from the handle, undecodable events parked at once. Each kind's test
//! file implements [`Harness`] and runs every check through
//! [`read_model_tests!`](crate::read_model_tests).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eda::prelude::*;
use eda::{Metadata, NewEvent, Projection, ProjectionHandle, RunnerState, StreamId};

use crate::bank::{DepositMoney, OpenAccount};
use crate::ledger::LedgerRows;

/// How long a check waits for a runner.
pub const WAIT: Duration = Duration::from_secs(10);

/// A kind of read model under test, on a fresh store and read database.
pub trait Harness {
    /// The ledger ([`crate::ledger`]) in this kind, named `ledger`.
    type Ledger: Projection;
    /// A read model named `flaky` that fails on the deposit of 13 while its
    /// failure count is above zero (counting down), and otherwise records each
    /// deposit's position in the ledger's `applications` table.
    type Flaky: Projection;

    /// The test's store.
    type Store: EventStore;

    /// The `App` on the test's store.
    fn app(&self) -> &App;

    /// The test's store itself.
    fn store(&self) -> &Self::Store;

    /// Starts the ledger on the test's read database.
    fn start_ledger(&self) -> impl Future<Output = ProjectionHandle<Self::Ledger>>;

    /// Starts the flaky read model, failing `failures` more times.
    fn start_flaky(
        &self,
        failures: &Arc<AtomicU32>,
    ) -> impl Future<Output = ProjectionHandle<Self::Flaky>>;

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
        );
    };
    (@each $with_harness:path; $($name:ident,)*) => {$(
        #[tokio::test]
        async fn $name() {
            $with_harness($crate::read_models::$name).await;
        }
    )*};
}

/// Opens `account`: the event's position.
pub async fn open(app: &App, account: &str) -> u64 {
    let command = OpenAccount {
        account: account.into(),
        owner: "ada".into(),
    };
    app.execute(command).await.expect("open").position.unwrap()
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
    open(h.app(), "a").await;
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
    open(h.app(), "a").await;
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
    open(h.app(), "a").await;
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
    open(app, "a").await;
    open(app, "b").await;
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
    open(h.app(), "a").await;
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
    open(h.app(), "a").await;
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
    let status = standby.status();
    assert!(is_standby(&status.state), "{status:?}");
    assert_eq!(status.applied, 0);

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
    assert!(took < Duration::from_secs(5), "took over after {took:?}");
    assert_eq!(standby.status().applied, 1, "only the new deposit");
    let rows = h.rows().await;
    assert_eq!((rows.applications.len(), rows.applied_twice()), (4, 0));
    assert_eq!(rows.balances["a"], 6);
    standby.stop().await;
}
