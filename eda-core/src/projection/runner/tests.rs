//! Runners woken by commits their own `App` did not make: another store on the
//! same log (another writer, as another process would be) commits, and a live
//! runner on a store that signals such commits applies it long before its
//! safety poll would have found it (in unit tests the poll waits a minute, so
//! nothing here depends on how fast the machine is). Each has a control: the
//! same runner on the same store behind a wrapper whose signal never fires,
//! which must not have applied the event a while later.
//!
//! On PostgreSQL also: a notification that arrives while an older transaction
//! holds the horizon back, after which the runner reads again until it gets
//! there, skipping nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{spawn, Control, Failure, RunnerState, Sink, Started, SAFETY_POLL};
use crate::app::App;
use crate::envelope::{IdempotencyRecord, Metadata, NewEvent, RecordedEvent, StreamId};
use crate::error::StoreError;
use crate::projection::ParkedEvent;
use crate::store::internal::Internal;
use crate::store::memory::MemoryStore;
use crate::store::{Appended, EventStore, LogPage};

/// Far less than the safety poll: a runner that needs the poll misses it.
const WOKEN_WITHIN: Duration = Duration::from_secs(10);

/// How long the control waits without applying anything: longer than any
/// wake-up takes, far shorter than the safety poll.
const NOT_WOKEN_FOR: Duration = Duration::from_secs(2);

const _: () = assert!(WOKEN_WITHIN.as_secs() * 3 <= SAFETY_POLL.as_secs());

/// Long enough for a store's listener to be listening (its connection open).
const SETTLE: Duration = Duration::from_millis(300);

/// The positions a runner applied, in order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<u64>>>);

impl Recorder {
    fn applied(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

impl Sink for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn events(&self) -> &'static [&'static str] {
        &["Deposited"]
    }

    async fn start(&mut self) -> Result<Started, Failure> {
        Ok(Started::at(0))
    }

    async fn apply(&mut self, page: LogPage, _: bool) -> Result<(), Failure> {
        let mut applied = self.0.lock().unwrap();
        applied.extend(page.events.iter().map(|event| event.position));
        Ok(())
    }
}

/// The next event of `account` (at `version`), appended straight to `store`.
async fn deposit(store: &impl EventStore, account: &str, version: u64) -> Appended {
    let stream = StreamId {
        aggregate_type: "Account",
        aggregate_id: account,
    };
    let event = NewEvent {
        event_id: crate::new_event_id(),
        name: "Deposited".into(),
        version: 1,
        payload: "{}".into(),
    };
    store
        .append(stream, version, vec![event], &Metadata::default())
        .await
        .unwrap()
}

/// A runner on an `App` on `store`, once it is live and has been for
/// [`SETTLE`].
async fn live_runner(store: impl EventStore) -> (Arc<Control>, Recorder) {
    let recorder = Recorder::default();
    let control = spawn(App::new(store), recorder.clone());
    let mut progress = control.progress.subscribe();
    progress
        .wait_for(|p| p.state == RunnerState::Live)
        .await
        .unwrap();
    tokio::time::sleep(SETTLE).await;
    (control, recorder)
}

/// Whether the live runner applies what `writer` appends next (as the first
/// event of `account`) within `within`.
async fn woken(
    control: &Control,
    writer: &impl EventStore,
    account: &str,
    within: Duration,
) -> bool {
    let appended = deposit(writer, account, 0).await;
    control
        .wait_for(Some(appended.position), within)
        .await
        .is_ok()
}

/// `store`, with a signal that never fires: the control.
struct Silent<S> {
    store: S,
    signal: watch::Sender<u64>,
}

impl<S> Silent<S> {
    fn new(store: S) -> Self {
        Silent {
            store,
            signal: watch::channel(0).0,
        }
    }
}

impl<S: EventStore> EventStore for Silent<S> {
    async fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        self.store
            .append(stream, expected_version, events, metadata)
            .await
    }

    async fn read_stream(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_stream(stream, after_version).await
    }

    async fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_all(after_position, limit).await
    }

    async fn read_all_of(
        &self,
        after_position: u64,
        limit: usize,
        names: &[&str],
    ) -> Result<LogPage, StoreError> {
        self.store.read_all_of(after_position, limit, names).await
    }

    async fn read_event(&self, event_id: uuid::Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.store.read_event(event_id).await
    }

    async fn read_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.store.read_idempotency_key(key).await
    }

    async fn read_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.store.read_checkpoint(name).await
    }

    async fn write_checkpoint(
        &self,
        name: &str,
        from: Option<u64>,
        to: u64,
    ) -> Result<(), StoreError> {
        self.store.write_checkpoint(name, from, to).await
    }

    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
        self.store.park(name, event).await
    }

    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        self.store.parked(name).await
    }

    async fn unpark(&self, name: &str, position: u64) -> Result<bool, StoreError> {
        self.store.unpark(name, position).await
    }

    fn watch_log(&self, _: Internal) -> Option<watch::Receiver<u64>> {
        Some(self.signal.subscribe())
    }
}

/// Checks that a runner on `reader` is woken by `writer`'s append within
/// [`WOKEN_WITHIN`], and that the control, the same runner on `control` (the
/// store behind [`Silent`]), is not.
async fn woken_and_control<S: EventStore>(reader: S, control: Silent<S>, writer: &impl EventStore) {
    let (runner, recorder) = live_runner(reader).await;
    let signalled = woken(&runner, writer, "woken", WOKEN_WITHIN).await;
    runner.stop().await;
    assert!(signalled, "not woken within {WOKEN_WITHIN:?}");
    assert_eq!(recorder.applied().len(), 1);
    let (runner, recorder) = live_runner(control).await;
    let signalled = woken(&runner, writer, "polled", NOT_WOKEN_FOR).await;
    runner.stop().await;
    assert!(!signalled, "the control was woken");
    assert_eq!(recorder.applied().len(), 1, "only the earlier event");
}

#[tokio::test]
async fn memory_store_wakes_the_runners_of_every_app_on_it() {
    let store = MemoryStore::new();
    woken_and_control(store.clone(), Silent::new(store.clone()), &store).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// Another store on the same file is another writer, as another process
    /// would be: its commits are seen through the file's data version.
    #[tokio::test]
    async fn another_store_on_the_file_wakes_a_runner() {
        let dir = tempfile_dir();
        let path = dir.join("events.db");
        let reader = SqliteStore::open(&path).await.unwrap();
        let writer = SqliteStore::open(&path).await.unwrap();
        woken_and_control(reader.clone(), Silent::new(reader.clone()), &writer).await;
        // The store's own writer, outside the runner's App, too.
        let (runner, _) = live_runner(reader.clone()).await;
        let signalled = woken(&runner, &reader, "own", WOKEN_WITHIN).await;
        runner.stop().await;
        assert!(signalled, "not woken within {WOKEN_WITHIN:?}");
        writer.close().await.unwrap();
        reader.close().await.unwrap();
        // Every connection closed, the watching thread's included: SQLite
        // removed the write-ahead log.
        assert!(!dir.join("events.db-wal").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "eda-wake-{}-{}",
            std::process::id(),
            crate::new_event_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::store::postgres::{PostgresOptions, PostgresStore};

    /// One test at a time: an open transaction holds back every reader.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    struct Db {
        url: String,
        schema: String,
    }

    impl Db {
        fn new(test: &str) -> Option<Db> {
            let Ok(url) = std::env::var("EDA_TEST_POSTGRES_URL") else {
                eprintln!("skipped: EDA_TEST_POSTGRES_URL is not set");
                return None;
            };
            let schema = format!("eda_wake_{test}_{}", std::process::id());
            Some(Db { url, schema })
        }

        /// Another store on the test's schema.
        async fn store(&self) -> PostgresStore {
            let options = PostgresOptions::new().schema(&self.schema);
            PostgresStore::connect_with(&self.url, options)
                .await
                .unwrap()
        }

        /// A plain connection with the schema on its search path.
        async fn connect(&self) -> tokio_postgres::Client {
            let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(&format!("SET search_path = {}", self.schema))
                .await
                .unwrap();
            client
        }

        async fn drop_schema(self) {
            let client = self.connect().await;
            client
                .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
                .await
                .unwrap();
        }
    }

    /// Another store on the same schema is another writer, as another process
    /// would be: its appends notify the channel the reader's store listens on.
    #[tokio::test]
    async fn another_store_on_the_schema_wakes_a_runner() {
        let Some(db) = Db::new("other") else { return };
        let _turn = ONE_AT_A_TIME.lock().await;
        let (reader, writer) = (db.store().await, db.store().await);
        woken_and_control(reader.clone(), Silent::new(reader.clone()), &writer).await;
        // Batched appends notify too: concurrent ones share a statement.
        let (runner, recorder) = live_runner(reader.clone()).await;
        let appends = (0..8).map(|i| {
            let writer = writer.clone();
            tokio::spawn(async move { deposit(&writer, &format!("batch-{i}"), 0).await })
        });
        let mut last = 0;
        for append in appends {
            last = last.max(append.await.unwrap().position);
        }
        let signalled = runner.wait_for(Some(last), WOKEN_WITHIN).await;
        runner.stop().await;
        signalled.expect("woken by the batch's notification");
        assert_eq!(recorder.applied().len(), 8 + 2);
        reader.close().await.unwrap();
        db.drop_schema().await;
    }

    /// A notification that arrives while an older transaction holds the
    /// horizon back: the runner cannot read the event yet, and reads again
    /// until it can, soon after the older transaction ends (which itself
    /// notifies nothing, having appended nothing).
    #[tokio::test]
    async fn a_notification_below_the_horizon_is_read_once_the_horizon_passes() {
        let Some(db) = Db::new("horizon") else { return };
        let _turn = ONE_AT_A_TIME.lock().await;
        let (reader, writer) = (db.store().await, db.store().await);
        let (runner, recorder) = live_runner(reader.clone()).await;
        let mut older = db.connect().await;
        let older = older.transaction().await.unwrap();
        older
            .query_one("SELECT pg_current_xact_id()", &[])
            .await
            .unwrap();
        let appended = deposit(&writer, "held", 0).await;
        tokio::time::sleep(SETTLE).await;
        assert_eq!(
            recorder.applied(),
            Vec::<u64>::new(),
            "read above the horizon"
        );
        assert_eq!(runner.status().head, appended.position, "notified");
        older.commit().await.unwrap();
        let read = runner.wait_for(Some(appended.position), WOKEN_WITHIN).await;
        runner.stop().await;
        read.expect("read once the horizon passed, without the poll");
        assert_eq!(recorder.applied(), [appended.position]);
        reader.close().await.unwrap();
        db.drop_schema().await;
    }

    /// An older append commits after a newer one was notified: the runner
    /// applies both, in the order of their positions, and skips neither.
    #[tokio::test]
    async fn an_older_append_committed_later_is_not_skipped() {
        let Some(db) = Db::new("older") else { return };
        let _turn = ONE_AT_A_TIME.lock().await;
        let (reader, writer) = (db.store().await, db.store().await);
        let (runner, recorder) = live_runner(reader.clone()).await;
        let mut client = db.connect().await;
        let older = client.transaction().await.unwrap();
        let stream = StreamId {
            aggregate_type: "Account",
            aggregate_id: "older",
        };
        let event = NewEvent {
            event_id: crate::new_event_id(),
            name: "Deposited".into(),
            version: 1,
            payload: "{}".into(),
        };
        let first = writer
            .append_in(&older, stream, 0, vec![event], &Metadata::default())
            .await
            .unwrap();
        let second = deposit(&writer, "newer", 0).await;
        assert!(first.position < second.position);
        tokio::time::sleep(SETTLE).await;
        assert_eq!(
            recorder.applied(),
            Vec::<u64>::new(),
            "read above the horizon"
        );
        older.commit().await.unwrap();
        let read = runner.wait_for(Some(second.position), WOKEN_WITHIN).await;
        runner.stop().await;
        read.expect("read once the older append committed, without the poll");
        assert_eq!(recorder.applied(), [first.position, second.position]);
        reader.close().await.unwrap();
        db.drop_schema().await;
    }
}

/// The progress a runner reports while it is behind.
mod progress {
    use std::time::Duration;

    use super::super::Progress;

    #[test]
    fn the_time_left_follows_the_rate_so_far() {
        let progress = Progress::new(250, Some(1_000), Duration::from_secs(10));
        assert_eq!(progress.remaining, Some(Duration::from_secs(30)));
        assert_eq!(progress.rate(), 25.0);
        // Nothing read yet: no rate, no time left.
        let start = Progress::new(0, Some(1_000), Duration::ZERO);
        assert_eq!((start.remaining, start.rate()), (None, 0.0));
        // Events not counted yet: the total is never below what was read.
        let ahead = Progress::new(1_200, Some(1_000), Duration::from_secs(12));
        assert_eq!(
            (ahead.total, ahead.remaining),
            (Some(1_200), Some(Duration::ZERO))
        );
        // A store that cannot count: a rate, no total, no time left.
        let uncounted = Progress::new(100, None, Duration::from_secs(1));
        assert_eq!((uncounted.total, uncounted.remaining), (None, None));
        assert_eq!(uncounted.rate(), 100.0);
    }
}
