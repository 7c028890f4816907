//! SQLite read models (`#[projection]` with a transaction, `.database(path)`): the
//! handlers' writes and the checkpoint commit together, a restart goes on from
//! the checkpoint, a failing event is retried while the events before it are
//! kept, and a second runner of the same projection cannot move its checkpoint.

#![allow(missing_docs)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eda::prelude::*;
use eda::rusqlite::{self, Transaction};
use eda::{RecordedEvent, RunnerState};
use eda_test::bank::{open_account, DepositMoney, MoneyDeposited};
use eda_test::ledger::{self, Ledger};

const WAIT: Duration = Duration::from_secs(10);

async fn deposit(app: &App, account: &str, amount: u64) -> Option<u64> {
    let command = DepositMoney {
        account: account.into(),
        amount,
    };
    app.execute(command).await.expect("deposit").position
}

fn read_db(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("read.db");
    ledger::create(&path).expect("create the ledger's tables");
    path
}

#[tokio::test]
async fn it_catches_up_then_follows_in_its_own_database() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(
        SqliteStore::open(dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    open_account(&app, "a").await;
    deposit(&app, "a", 5).await;
    let path = read_db(&dir);
    let projection = app.project(Ledger).database(&path).start().await.unwrap();
    let position = deposit(&app, "a", 7).await;
    projection.wait_for(position, WAIT).await.unwrap();
    let rows = ledger::read(&path).unwrap();
    assert_eq!(rows.balances["a"], 12);
    assert_eq!(rows.applications.len(), 3);
    assert_eq!(rows.applied_twice(), 0);
    let status = projection.status();
    assert_eq!(
        (status.name, status.checkpoint, status.applied),
        ("ledger", 3, 3)
    );
    assert_eq!(status.state, RunnerState::Live);
}

#[tokio::test]
async fn a_restart_goes_on_from_the_stored_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(
        SqliteStore::open(dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    open_account(&app, "a").await;
    let path = read_db(&dir);
    let first = app.project(Ledger).database(&path).start().await.unwrap();
    first
        .wait_for(deposit(&app, "a", 1).await, WAIT)
        .await
        .unwrap();
    first.stop().await;
    deposit(&app, "a", 2).await;
    let position = deposit(&app, "a", 3).await;

    let second = app.project(Ledger).database(&path).start().await.unwrap();
    second.wait_for(position, WAIT).await.unwrap();
    let rows = ledger::read(&path).unwrap();
    assert_eq!(rows.balances["a"], 6);
    assert_eq!(rows.applications.len(), 4);
    assert_eq!(rows.applied_twice(), 0);
    // Only the two deposits made while it was stopped were applied again.
    assert_eq!(second.status().applied, 2);
}

/// Fails on the deposit of `amount == 13` until `failures` runs out.
#[derive(Debug)]
pub struct Flaky {
    failures: Arc<AtomicU32>,
}

#[projection(name = "flaky")]
impl Flaky {
    #[on]
    fn deposited(
        &mut self,
        e: &MoneyDeposited,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        if e.amount == 13 && self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(rusqlite::Error::InvalidQuery);
        }
        tx.execute(
            "INSERT INTO applications (event_id, position) VALUES (?1, ?2)",
            (recorded.event_id.to_string(), recorded.position as i64),
        )?;
        Ok(())
    }
}

async fn flaky_run(
    failures: u32,
) -> (
    eda::ProjectionHandle<Flaky>,
    std::path::PathBuf,
    tempfile::TempDir,
    Option<u64>,
) {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(
        SqliteStore::open(dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    open_account(&app, "a").await;
    for amount in [1, 2, 13, 4] {
        deposit(&app, "a", amount).await;
    }
    let last = deposit(&app, "a", 5).await;
    let path = read_db(&dir);
    let flaky = Flaky {
        failures: Arc::new(AtomicU32::new(failures)),
    };
    let handle = app.project(flaky).database(&path).start().await.unwrap();
    (handle, path, dir, last)
}

#[tokio::test]
async fn a_failing_event_is_retried_and_the_events_before_it_are_kept() {
    let (flaky, path, _dir, last) = flaky_run(2).await;
    flaky.wait_for(last, WAIT).await.unwrap();
    let rows = ledger::read(&path).unwrap();
    assert_eq!(rows.applications.len(), 5, "every deposit, once");
    assert_eq!(rows.applied_twice(), 0);
}

/// The positions in `applications`, in the order they were applied.
fn applied_positions(path: &Path) -> Vec<u64> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut statement = connection
        .prepare("SELECT position FROM applications ORDER BY rowid")
        .unwrap();
    let positions = statement.query_map((), |row| row.get::<_, i64>(0)).unwrap();
    positions.map(|p| p.unwrap() as u64).collect()
}

#[tokio::test]
async fn a_poison_event_parks_its_aggregates_later_events_while_others_flow_on() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.db");
    let app = App::new(SqliteStore::open(&events).await.unwrap());
    let path = read_db(&dir);
    open_account(&app, "a").await; // 1
    open_account(&app, "b").await; // 2
    deposit(&app, "a", 1).await; // 3
    deposit(&app, "a", 13).await; // 4: poison
    deposit(&app, "b", 2).await; // 5
    deposit(&app, "a", 3).await; // 6: behind 4
    let last = deposit(&app, "b", 4).await; // 7
    let failures = Arc::new(AtomicU32::new(u32::MAX));
    let flaky = Flaky {
        failures: Arc::clone(&failures),
    };
    let handle = app.project(flaky).database(&path).start().await.unwrap();
    handle.wait_for(last, WAIT).await.unwrap();

    assert_eq!(
        applied_positions(&path),
        [3, 5, 7],
        "b flows on; a stops at 4"
    );
    let parked = handle.parked().await.unwrap();
    let parked_positions: Vec<u64> = parked.iter().map(|p| p.position).collect();
    assert_eq!(parked_positions, [4, 6]);
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
    let later = deposit(&app, "a", 5).await; // 8
    handle.wait_for(later, WAIT).await.unwrap();
    assert_eq!(handle.status().parked, 3);

    // Parked events survive a restart.
    handle.stop().await;
    let flaky = Flaky {
        failures: Arc::clone(&failures),
    };
    let handle = app.project(flaky).database(&path).start().await.unwrap();
    assert_eq!(handle.status().parked, 3);
    let still: Vec<u64> = handle
        .parked()
        .await
        .unwrap()
        .iter()
        .map(|p| p.position)
        .collect();
    assert_eq!(still, [4, 6, 8]);

    // A retry that fails again keeps them, with the new error.
    let retried = handle.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (0, 3));

    // After the fix, a retry drains the park in order.
    failures.store(0, Ordering::SeqCst);
    let retried = handle.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (3, 0));
    assert_eq!(applied_positions(&path), [3, 5, 7, 4, 6, 8]);
    assert_eq!(handle.status().parked, 0);
    assert!(handle.parked().await.unwrap().is_empty());

    // And the aggregate flows again.
    let next = deposit(&app, "a", 6).await; // 9
    handle.wait_for(next, WAIT).await.unwrap();
    assert_eq!(applied_positions(&path).last(), Some(&9));
}

#[tokio::test]
async fn a_skipped_parked_event_is_never_applied() {
    let (flaky, path, _dir, last) = flaky_run(u32::MAX).await;
    flaky.wait_for(last, WAIT).await.unwrap();
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
    assert_eq!(applied_positions(&path), [2, 3, 5, 6]);
}

#[tokio::test]
async fn an_event_it_cannot_decode_is_parked_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    // A deposit whose amount is text (written by hand, or by a broken producer).
    let stream = eda::StreamId {
        aggregate_type: "Account",
        aggregate_id: "a",
    };
    let bad = eda_test::new_event("MoneyDeposited", r#"{"amount":"ten"}"#);
    store
        .append(stream, 1, vec![bad], &eda::Metadata::default())
        .await
        .unwrap();
    let path = read_db(&dir);
    let flaky = Flaky {
        failures: Arc::new(AtomicU32::new(0)),
    };
    let handle = app.project(flaky).database(&path).start().await.unwrap();
    handle.wait_for(Some(2), WAIT).await.unwrap();
    let parked = handle.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].position, 2);
    assert!(
        parked[0].error.contains("cannot decode"),
        "{}",
        parked[0].error
    );
}

#[tokio::test]
async fn a_second_runner_of_one_projection_cannot_move_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(
        SqliteStore::open(dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    let path = read_db(&dir);
    let one = app.project(Ledger).database(&path).start().await.unwrap();
    let two = app.project(Ledger).database(&path).start().await.unwrap();
    open_account(&app, "a").await;
    let position = deposit(&app, "a", 1).await;
    let (first, second) = tokio::join!(one.wait_for(position, WAIT), two.wait_for(position, WAIT));
    assert!(first.is_ok() != second.is_ok(), "{first:?} {second:?}");
    let stopped = if first.is_err() { one } else { two };
    let RunnerState::Stopped { error: Some(error) } = stopped.status().state else {
        panic!("{:?}", stopped.status());
    };
    assert!(error.contains("another runner"), "{error}");
    let rows = ledger::read(&path).unwrap();
    assert_eq!((rows.applications.len(), rows.applied_twice()), (2, 0));
}

#[tokio::test]
async fn a_database_built_by_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(MemoryStore::new());
    let path = read_db(&dir);
    bump_version(&path, 7);
    let error = app
        .project(Ledger)
        .database(&path)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Invalid {
                what: "projection version",
                ..
            }
        ),
        "{error}"
    );
}

fn bump_version(path: &Path, version: u32) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS eda_projections (name TEXT PRIMARY KEY NOT NULL, version INTEGER NOT NULL, position INTEGER NOT NULL) STRICT",
        )
        .unwrap();
    connection
        .execute(
            "INSERT INTO eda_projections (name, version, position) VALUES ('ledger', ?1, 0)",
            [version],
        )
        .unwrap();
}

/// A read model kept in the event store's own file parks its events in its own
/// table (`eda_parked`), apart from those the store keeps for other runners
/// (`eda_parked_events`): both park, neither lists the other's, and a store from
/// before parked events migrates beside a read model's table already there.
#[tokio::test]
async fn a_read_model_in_the_store_file_parks_apart_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let app = App::new(SqliteStore::open(&path).await.unwrap());
    ledger::create(&path).unwrap();
    open_account(&app, "a").await; // 1
    deposit(&app, "a", 13).await; // 2: poison
    let last = deposit(&app, "a", 1).await; // 3: behind 2
    let failures = Arc::new(AtomicU32::new(u32::MAX));
    let flaky = |failures: &Arc<AtomicU32>| Flaky {
        failures: Arc::clone(failures),
    };
    let handle = app
        .project(flaky(&failures))
        .database(&path)
        .start()
        .await
        .unwrap();
    handle.wait_for(last, WAIT).await.unwrap();
    handle.stop().await;
    app.close().await.unwrap();

    // The file as a store of schema version 4 left it, with the read model in it.
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch("DROP TABLE eda_parked_events; UPDATE eda_schema SET version = 4")
        .unwrap();
    drop(connection);
    let store = SqliteStore::open(&path).await.unwrap();
    let app = App::new(store.clone());
    let log = store.read_all(0, 10).await.unwrap();
    let mailer = eda::ParkedEvent::from_event(&log[1], "smtp: timed out");
    store.park("mailer", &mailer).await.unwrap();

    let handle = app
        .project(flaky(&failures))
        .database(&path)
        .start()
        .await
        .unwrap();
    let later = deposit(&app, "a", 2).await; // 4: behind 2
    handle.wait_for(later, WAIT).await.unwrap();
    let positions: Vec<u64> = handle
        .parked()
        .await
        .unwrap()
        .iter()
        .map(|p| p.position)
        .collect();
    assert_eq!(positions, [2, 3, 4]);
    assert_eq!(store.parked("mailer").await.unwrap(), [mailer]);
    assert!(store.parked("flaky").await.unwrap().is_empty());
    failures.store(0, Ordering::SeqCst);
    let retried = handle.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (3, 0));
    assert_eq!(store.parked("mailer").await.unwrap().len(), 1);
    handle.stop().await;
    app.close().await.unwrap();
}
