//! SQLite read models (`#[projection]` with a transaction, `.database(path)`): the
//! read-model suite (`eda_test::read_models`: catch-up and live, restarts,
//! retries, dead letters), and what is SQLite's own: a second runner of the same
//! projection cannot move its checkpoint, another version's file is refused.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use eda::prelude::*;
use eda::rusqlite::{self, Transaction};
use eda::{ProjectionHandle, RecordedEvent};
use eda_test::bank::open_account;
use eda_test::bank::MoneyDeposited;
use eda_test::ledger::{self, Ledger, LedgerRows, LedgerV2};
use eda_test::read_models::{deposit, Harness, WAIT};

/// Fails on the deposit of `amount == 13` until `failures` runs out.
#[derive(Debug)]
pub struct Flaky {
    failures: Arc<AtomicU32>,
}

#[projection(name = "flaky", version = 2)]
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

/// A store and a read database (with the ledger's tables) in a directory of
/// their own.
struct Sqlite {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    app: App,
    read: PathBuf,
}

impl Sqlite {
    async fn new() -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("events.db"))
            .await
            .unwrap();
        let read = dir.path().join("read.db");
        ledger::create(&read).expect("create the ledger's tables");
        Sqlite {
            _dir: dir,
            app: App::new(store.clone()),
            store,
            read,
        }
    }
}

impl Harness for Sqlite {
    type Ledger = Ledger;
    type LedgerV2 = LedgerV2;
    type Flaky = Flaky;
    type Store = SqliteStore;

    fn app(&self) -> &App {
        &self.app
    }

    fn store(&self) -> &SqliteStore {
        &self.store
    }

    async fn try_start_ledger(&self) -> Result<ProjectionHandle<Ledger>, StoreError> {
        self.app.project(Ledger).database(&self.read).start().await
    }

    async fn try_start_ledger_v2(&self) -> Result<ProjectionHandle<LedgerV2>, StoreError> {
        self.app
            .project(LedgerV2)
            .database(&self.read)
            .start()
            .await
    }

    async fn try_start_flaky(
        &self,
        failures: &Arc<AtomicU32>,
    ) -> Result<ProjectionHandle<Flaky>, StoreError> {
        let flaky = Flaky {
            failures: Arc::clone(failures),
        };
        self.app.project(flaky).database(&self.read).start().await
    }

    async fn set_version(&self, name: &str, version: u32) {
        let connection = rusqlite::Connection::open(&self.read).unwrap();
        let sql = "UPDATE eda_projections SET version = ?2 WHERE name = ?1";
        assert_eq!(connection.execute(sql, (name, version)).unwrap(), 1);
    }

    async fn rows(&self) -> LedgerRows {
        ledger::read(&self.read).unwrap()
    }

    async fn applied_positions(&self) -> Vec<u64> {
        applied_positions(&self.read)
    }
}

async fn with_harness<F: std::future::Future<Output = ()>>(check: impl FnOnce(Sqlite) -> F) {
    check(Sqlite::new().await).await;
}

eda_test::read_model_tests!(with_harness);

/// The control of the test above: with every runner taking its turn, the
/// second does not stand by.
#[test]
fn control_runners_that_ignore_the_turn_do_not_stand_by() {
    if !cfg!(feature = "failpoints") {
        eprintln!("skipped: the control needs the `failpoints` feature");
        return;
    }
    assert!(eda_test::crash::fails_when_broken(
        "a_second_runner_stands_by_and_takes_over_when_the_first_stops",
        "runner.turn_ignored",
    ));
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

/// The checkpoint moves behind the runner's back (another process that took the
/// lease and applied a page, as far as the runner can tell): its next page's
/// compare-and-set is refused, so it applies nothing of it, stands by, takes the
/// lease again and goes on from the checkpoint it finds.
#[tokio::test]
async fn the_checkpoints_compare_and_set_refuses_a_runner_that_lost_its_turn() {
    let h = Sqlite::new().await;
    let ledger = h.start_ledger().await;
    let opened = open_account(&h.app, "a").await;
    ledger.wait_for(Some(opened), WAIT).await.unwrap();

    // The write lock of the read database, held while a deposit commits: the
    // runner cannot apply the deposit before its checkpoint moved past it.
    let mut other = rusqlite::Connection::open(&h.read).unwrap();
    let tx = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let skipped = deposit(&h.app, "a", 1).await;
    tx.execute(
        "UPDATE eda_projections SET position = ?1 WHERE name = 'ledger'",
        [skipped as i64],
    )
    .unwrap();
    tx.commit().unwrap();

    let next = deposit(&h.app, "a", 2).await;
    ledger.wait_for(Some(next), WAIT).await.unwrap();
    assert_eq!(h.applied_positions().await, [opened, next]);
    ledger.stop().await;
}

/// The control of the test above: with the checkpoint moved from wherever it
/// is (no compare), the runner that lost its turn applies the skipped deposit.
#[test]
fn control_a_checkpoint_moved_without_its_compare_applies_a_skipped_event() {
    if !cfg!(feature = "failpoints") {
        eprintln!("skipped: the control needs the `failpoints` feature");
        return;
    }
    assert!(eda_test::crash::fails_when_broken(
        "the_checkpoints_compare_and_set_refuses_a_runner_that_lost_its_turn",
        "projection.move_without_compare",
    ));
}

#[tokio::test]
async fn a_database_built_by_another_version_is_refused() {
    let h = Sqlite::new().await;
    bump_version(&h.read, 7);
    let builder = h.app.project(Ledger).database(&h.read);
    let error = builder.start().await.unwrap_err();
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
    handle.wait_for(Some(last), WAIT).await.unwrap();
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
    handle.wait_for(Some(later), WAIT).await.unwrap();
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

/// The fixture applies events as the runner would, in an in-memory database.
#[test]
fn the_fixture_applies_events_in_an_in_memory_database() {
    let flaky = Flaky {
        failures: Arc::new(AtomicU32::new(0)),
    };
    let fixture = eda::testing::SqliteProjectionFixture::new(flaky)
        .schema("CREATE TABLE applications (event_id TEXT NOT NULL, position INTEGER NOT NULL)")
        .given("Account", "a", MoneyDeposited { amount: 13 })
        .given("Account", "b", MoneyDeposited { amount: 1 });
    let positions: Vec<i64> = fixture
        .connection()
        .prepare("SELECT position FROM applications ORDER BY position")
        .unwrap()
        .query_map((), |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(positions, [1, 2]);
}

#[test]
#[should_panic(expected = "projection `flaky` could not apply `MoneyDeposited` at position 1")]
fn the_fixture_panics_when_an_on_method_fails() {
    let flaky = Flaky {
        failures: Arc::new(AtomicU32::new(1)),
    };
    let _ = eda::testing::SqliteProjectionFixture::new(flaky)
        .schema("CREATE TABLE applications (event_id TEXT NOT NULL, position INTEGER NOT NULL)")
        .given("Account", "a", MoneyDeposited { amount: 13 });
}
