//! In-memory projections (`#[projection]`, `App::project`): catch-up from the start
//! of the log, live following (this `App`'s commits and other writers'), only the
//! handled events read and decoded, read-your-writes, stopping, an event that
//! cannot be decoded stopping the runner with the state before it, and every
//! start a rebuild, with its progress.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use eda::prelude::*;
use eda::{RecordedEvent, RunnerState, WaitError};
use eda_test::bank::{
    open_account, AccountOpened, DepositMoney, MoneyDeposited, MoneyWithdrawn, OpenAccount,
    WithdrawMoney,
};
use eda_test::{Route, Routed};
use proptest::prelude::*;

const WAIT: Duration = Duration::from_secs(60);

/// Balances by account, from the log.
#[derive(Debug, Default, PartialEq)]
pub struct Balances {
    by_account: BTreeMap<String, i64>,
    /// The positions applied, in order.
    positions: Vec<u64>,
}

#[projection(name = "balances", version = 2)]
impl Balances {
    #[on]
    fn opened(&mut self, _: &AccountOpened, recorded: &RecordedEvent) {
        self.by_account.insert(recorded.aggregate_id.clone(), 0);
        self.positions.push(recorded.position);
    }

    #[on]
    fn deposited(&mut self, e: &MoneyDeposited, recorded: &RecordedEvent) {
        *self
            .by_account
            .entry(recorded.aggregate_id.clone())
            .or_default() += e.amount as i64;
        self.positions.push(recorded.position);
    }

    #[on]
    fn withdrawn(&mut self, e: &MoneyWithdrawn, recorded: &RecordedEvent) {
        *self
            .by_account
            .entry(recorded.aggregate_id.clone())
            .or_default() -= e.amount as i64;
        self.positions.push(recorded.position);
    }
}

/// Counts openings only: the other events of the log are not its business.
#[derive(Debug, Default)]
pub struct Openings {
    count: usize,
}

#[projection]
impl Openings {
    #[on]
    fn opened(&mut self, _: &AccountOpened) {
        self.count += 1;
    }
}

fn deposit(account: &str, amount: u64) -> DepositMoney {
    DepositMoney {
        account: account.into(),
        amount,
    }
}

#[test]
fn the_macro_names_and_lists_the_events() {
    use eda::Projection;
    assert_eq!(Balances::NAME, "balances");
    assert_eq!(Balances::VERSION, 2);
    assert_eq!(
        Balances::EVENTS,
        ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]
    );
    assert_eq!((Openings::NAME, Openings::VERSION), ("Openings", 1));
}

#[tokio::test]
async fn it_catches_up_then_follows_live() {
    let app = App::new(MemoryStore::new());
    for account in ["a", "b", "c"] {
        open_account(&app, account).await;
        for amount in 1..=50 {
            app.execute(deposit(account, amount)).await.unwrap();
        }
    }
    let balances = app.project(Balances::default()).start();
    let last = app.execute(deposit("a", 1000)).await.unwrap();
    balances.wait_for(last.position, WAIT).await.unwrap();
    balances.read(|b| {
        assert_eq!(b.by_account["a"], 1275 + 1000);
        assert_eq!(b.by_account["b"], 1275);
        assert_eq!(b.positions.len(), 154);
        assert!(
            b.positions.windows(2).all(|w| w[0] < w[1]),
            "in log order, once"
        );
    });
    let status = balances.status();
    assert_eq!(status.name, "balances");
    assert!(status.checkpoint >= last.position.unwrap());
    assert_eq!(status.applied, 154);

    // A withdrawal (upcast from its stored version as usual) and another account.
    let done = app
        .execute(WithdrawMoney {
            account: "b".into(),
            amount: 75,
            reference: "rent".into(),
        })
        .await
        .unwrap();
    balances.wait_for(done.position, WAIT).await.unwrap();
    assert_eq!(balances.read(|b| b.by_account["b"]), 1200);
    assert_eq!(balances.status().state, RunnerState::Live);
}

/// Every start of an in-memory projection is a rebuild: the status says so,
/// with the events to apply counted, until the runner is live.
#[tokio::test]
async fn every_start_is_a_rebuild_with_its_progress() {
    // Every read suspends, so the test sees the runner between its pages.
    let app = App::new(eda_test::YieldingStore::default());
    for account in ["a", "b", "c"] {
        open_account(&app, account).await;
        for amount in 1..=400 {
            app.execute(deposit(account, amount)).await.unwrap();
        }
    }
    let last = app.execute(deposit("a", 1)).await.unwrap().position;
    let balances = app.project(Balances::default()).start();
    let mut rebuilding = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while balances.status().state != RunnerState::Live {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            balances.status()
        );
        tokio::task::yield_now().await;
        let status = balances.status();
        if status.state == RunnerState::Rebuilding {
            rebuilding.push(status.progress.expect("the progress of a rebuild"));
        }
    }
    assert!(!rebuilding.is_empty(), "never seen rebuilding");
    for (progress, next) in rebuilding.iter().zip(rebuilding.iter().skip(1)) {
        assert_eq!(progress.total, Some(1204), "{progress:?}");
        assert!(progress.done <= next.done && next.done <= 1204, "{next:?}");
    }
    balances.wait_for(last, WAIT).await.unwrap();
    let status = balances.status();
    assert_eq!((status.applied, status.progress), (1204, None));
    assert_eq!(balances.read(|b| b.positions.len()), 1204);
}

/// Another `App` (another process, in effect) writes: the runner finds its events
/// by polling.
#[tokio::test]
async fn events_of_other_writers_are_found() {
    let store = MemoryStore::new();
    let reader = App::new(store.clone());
    let openings = reader.project(Openings::default()).start();
    let writer = App::new(store);
    open_account(&writer, "a").await;
    let done = writer.execute(deposit("a", 5)).await.unwrap();
    openings.wait_for(done.position, WAIT).await.unwrap();
    assert_eq!(openings.read(|o| o.count), 1);
}

/// An event no handler takes is neither read nor decoded: a stored row that is
/// not even JSON does not stop a projection of other events.
#[tokio::test]
async fn events_it_does_not_handle_are_not_decoded() {
    let store = MemoryStore::new();
    let garbage = eda::NewEvent {
        event_id: eda::new_event_id(),
        name: "Garbage".into(),
        version: 1,
        payload: "not json".into(),
    };
    let stream = eda::StreamId {
        aggregate_type: "Other",
        aggregate_id: "x",
    };
    store
        .append(stream, 0, vec![garbage], &eda::Metadata::default())
        .await
        .unwrap();
    let app = App::new(store);
    let openings = app.project(Openings::default()).start();
    open_account(&app, "a").await;
    let done = app.execute(deposit("a", 1)).await.unwrap();
    openings.wait_for(done.position, WAIT).await.unwrap();
    assert_eq!(openings.read(|o| o.count), 1);
    assert_eq!(openings.status().applied, 1);
}

/// A handled event that cannot be decoded stops the runner: the state keeps what
/// came before it, and waiting past it says so instead of timing out.
#[tokio::test]
async fn an_undecodable_event_stops_the_runner_with_the_state_before_it() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    let bad = eda::NewEvent {
        event_id: eda::new_event_id(),
        name: "AccountOpened".into(),
        version: 1,
        payload: r#"{"owner": 42}"#.into(),
    };
    let stream = eda::StreamId {
        aggregate_type: "Account",
        aggregate_id: "broken",
    };
    let appended = store
        .append(stream, 0, vec![bad], &eda::Metadata::default())
        .await
        .unwrap();
    let openings = app.project(Openings::default()).start();
    let err = openings
        .wait_for(Some(appended.position), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, WaitError::Stopped { .. }), "{err:?}");
    assert_eq!(openings.read(|o| o.count), 1);
    match openings.status().state {
        RunnerState::Stopped { error: Some(error) } => {
            assert!(error.contains("AccountOpened"), "{error}");
        }
        other => panic!("expected a stopped runner, got {other:?}"),
    }
}

/// The control of "each event applied once, in log order": a store whose
/// `read_all_of` does not move `read_to` on makes the runner read the same events
/// again, and the check the tests here make (strictly increasing positions) sees it.
#[tokio::test]
async fn a_store_that_repeats_its_pages_is_caught() {
    let app = App::new(Routed::new(Route::RepeatsReads));
    open_account(&app, "a").await;
    let balances = app.project(Balances::default()).start();
    // The runner reads again at every poll (20 ms) once it thinks it is live.
    let started = std::time::Instant::now();
    while balances.read(|b| b.positions.len() < 2) {
        assert!(started.elapsed() < WAIT, "read only once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    balances.stop().await;
    balances.read(|b| {
        assert!(b.positions.len() > 1, "{:?}", b.positions);
        assert!(
            !b.positions.windows(2).all(|w| w[0] < w[1]),
            "{:?}",
            b.positions
        );
    });
}

#[tokio::test]
async fn a_stopped_runner_applies_nothing_more() {
    let app = App::new(MemoryStore::new());
    let openings = app.project(Openings::default()).start();
    open_account(&app, "a").await;
    let done = app.execute(deposit("a", 1)).await.unwrap();
    openings.wait_for(done.position, WAIT).await.unwrap();
    openings.stop().await;
    assert_eq!(
        openings.status().state,
        RunnerState::Stopped { error: None }
    );
    open_account(&app, "b").await;
    let later = app.execute(deposit("b", 1)).await.unwrap();
    let err = openings.wait_for(later.position, WAIT).await.unwrap_err();
    assert!(matches!(err, WaitError::Stopped { .. }), "{err:?}");
    assert_eq!(openings.read(|o| o.count), 1);
}

#[tokio::test]
async fn waiting_for_a_position_not_reached_times_out() {
    let app = App::new(MemoryStore::new());
    let openings = app.project(Openings::default()).start();
    let err = openings
        .wait_for(Some(1_000), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WaitError::TimedOut {
                position: 1_000,
                ..
            }
        ),
        "{err:?}"
    );
    // A command that stored nothing has no position to wait for.
    openings.wait_for(None, Duration::ZERO).await.unwrap();
}

/// What the balances must be: the commands' effects computed directly.
fn expected_balances(commands: &[(usize, u64, bool)]) -> BTreeMap<String, i64> {
    let mut balances = BTreeMap::new();
    for &(account, amount, withdraw) in commands {
        let balance: &mut i64 = balances.entry(format!("acc-{account}")).or_default();
        if !withdraw {
            *balance += amount as i64;
        } else if *balance >= amount as i64 {
            *balance -= amount as i64;
        }
    }
    balances
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any mix of deposits and withdrawals (some refused) over a few accounts,
    /// part of it before the runner starts and part after: the projection ends
    /// equal to the effects computed directly, each event applied once.
    #[test]
    fn any_history_projects_to_its_balances(
        commands in prop::collection::vec((0..4usize, 1..100u64, any::<bool>()), 1..60),
        started_after in 0..60usize,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let app = App::new(MemoryStore::new());
            let mut last = None;
            for account in 0..4 {
                let open = OpenAccount { account: format!("acc-{account}"), owner: "ada".into() };
                last = app.execute(open).await.unwrap().position;
            }
            let mut balances = None;
            for (i, &(account, amount, withdraw)) in commands.iter().enumerate() {
                if i == started_after {
                    balances = Some(app.project(Balances::default()).start());
                }
                let account = format!("acc-{account}");
                let done = if withdraw {
                    let withdraw = WithdrawMoney { account, amount, reference: String::new() };
                    app.execute(withdraw).await
                } else {
                    app.execute(deposit(&account, amount)).await
                };
                if let Ok(done) = done {
                    last = done.position.or(last);
                }
            }
            let balances = balances.unwrap_or_else(|| app.project(Balances::default()).start());
            balances.wait_for(last, WAIT).await.unwrap();
            let mut expected = expected_balances(&commands);
            for account in 0..4 {
                expected.entry(format!("acc-{account}")).or_default();
            }
            balances.read(|b| {
                assert_eq!(b.by_account, expected);
                assert!(b.positions.windows(2).all(|w| w[0] < w[1]));
            });
        });
    }
}

#[test]
fn the_fixture_gives_events_as_the_runner_would() {
    use eda::testing::ProjectionFixture;
    let fixture = ProjectionFixture::new(Balances::default())
        .given(
            "Account",
            "a",
            AccountOpened {
                owner: "ada".into(),
            },
        )
        .given("Account", "a", MoneyDeposited { amount: 30 })
        // Not handled: passed over, but it takes its position.
        .given("Account", "a", eda_test::tally::Added { n: 1 })
        .given(
            "Account",
            "a",
            MoneyWithdrawn {
                amount: 10,
                reference: "r".into(),
            },
        );
    assert_eq!(fixture.state().by_account["a"], 20);
    assert_eq!(fixture.state().positions, [1, 2, 4]);
}

#[test]
#[should_panic(expected = "projection `balances` cannot decode `MoneyDeposited` v1")]
fn the_fixture_panics_on_an_event_its_projection_cannot_decode() {
    use eda::testing::ProjectionFixture;
    let recorded = RecordedEvent {
        event_id: eda::new_event_id(),
        aggregate_type: "Account".into(),
        aggregate_id: "a".into(),
        version: 1,
        position: 7,
        name: "MoneyDeposited".into(),
        event_version: 1,
        payload: r#"{"amount":"thirty"}"#.into(),
        metadata: eda::Metadata::default(),
        recorded_at: chrono::Utc::now(),
    };
    let _ = ProjectionFixture::new(Balances::default()).given_recorded(recorded);
}

/// Blocks its runner in every `#[on]` call until the test lets it go.
#[derive(Debug)]
pub struct Stuck {
    gate: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    seen: usize,
}

#[projection]
impl Stuck {
    #[on]
    fn opened(&mut self, _: &AccountOpened) {
        let (open, changed) = &*self.gate;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
        self.seen += 1;
    }
}

/// A projection stuck in an `#[on]` method delays neither another projection's
/// `wait_for` nor the commands, even on a single-threaded runtime.
#[tokio::test]
async fn a_stuck_projection_delays_no_other_runner_nor_the_commands() {
    let app = App::new(MemoryStore::new());
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let stuck = app
        .project(Stuck {
            gate: std::sync::Arc::clone(&gate),
            seen: 0,
        })
        .start();
    let openings = app.project(Openings::default()).start();
    for id in ["a", "b", "c"] {
        open_account(&app, id).await;
    }
    let deposit = DepositMoney {
        account: "a".into(),
        amount: 5,
    };
    let last = app.execute(deposit).await.unwrap().position;
    openings.wait_for(last, WAIT).await.unwrap();
    assert_eq!(openings.read(|o| o.count), 3);
    assert_eq!(
        stuck.status().checkpoint,
        0,
        "still stuck in its first page"
    );

    let (open, changed) = &*gate;
    *open.lock().unwrap() = true;
    changed.notify_all();
    stuck.wait_for(last, WAIT).await.unwrap();
    assert_eq!(stuck.read(|s| s.seen), 3);
}
