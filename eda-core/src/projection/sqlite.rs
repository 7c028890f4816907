//! The SQLite kind: the read model is in a SQLite database of its own (or the
//! event store's file), and each page of events is applied in one transaction
//! that also moves the projection's checkpoint, kept in that database's
//! `eda_projections` table (the algorithm is `page`'s). A crash before the
//! commit loses the page's writes and its checkpoint together; after it, keeps
//! both: each event's writes happen exactly once in effect.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use uuid::Uuid;

use super::page::{self, to_i64, Database, ReadDb, Stream};
use super::runner::{self, Control, Failure, Sink, Started, Then};
use super::{
    lock, read_model, ApplyError, ParkedEvent, Parking, ProjectionBuilder, ProjectionHandle,
    Retried, SqliteProjection,
};
use crate::app::App;
use crate::envelope::RecordedEvent;
use crate::error::StoreError;
use crate::failpoint;
use crate::policy::lease;
use crate::store::{BoxFuture, LogPage};

const CREATE: &str = "CREATE TABLE IF NOT EXISTS eda_projections (
    name TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS eda_leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS eda_parked (
    projection TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    name TEXT NOT NULL,
    error TEXT NOT NULL,
    parked_at TEXT NOT NULL,
    PRIMARY KEY (projection, position)
) STRICT";
const INSERT: &str = "INSERT INTO eda_projections (name, version, position) VALUES (?1, ?2, 0)
    ON CONFLICT (name) DO NOTHING";
const SELECT: &str = "SELECT version, position FROM eda_projections WHERE name = ?1";
/// A rebuild's start: the new version, the checkpoint back to 0.
const RESTART: &str = "UPDATE eda_projections SET version = ?2, position = 0 WHERE name = ?1";
const UNPARK_ALL: &str = "DELETE FROM eda_parked WHERE projection = ?1";
/// Where to start a projection instead of a database built by another version.
const FRESH: &str = "on a new database file";
/// The compare-and-set that moves a checkpoint: no row changes if another
/// runner of the same projection moved it first.
const MOVE: &str = "UPDATE eda_projections SET position = ?3 WHERE name = ?1 AND position = ?2";
const PARK: &str = "INSERT INTO eda_parked
    (projection, position, event_id, aggregate_type, aggregate_id, name, error, parked_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const PARKED: &str =
    "SELECT position, event_id, aggregate_type, aggregate_id, name, error, parked_at
    FROM eda_parked WHERE projection = ?1 ORDER BY position";
const PARKED_STREAMS: &str = "SELECT aggregate_type, aggregate_id, count(*)
    FROM eda_parked WHERE projection = ?1 GROUP BY aggregate_type, aggregate_id";
const UNPARK: &str = "DELETE FROM eda_parked WHERE projection = ?1 AND position = ?2";
const UNPARK_ID: &str = "DELETE FROM eda_parked WHERE projection = ?1 AND event_id = ?2";
const STILL_FAILS: &str =
    "UPDATE eda_parked SET error = ?3 WHERE projection = ?1 AND position = ?2";

/// Takes the lease of a projection for a runner: when no runner holds it, its
/// holder renews it, or it expired (the holder stopped renewing: it died).
const ACQUIRE: &str = "INSERT INTO eda_leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE eda_leases.holder = excluded.holder OR eda_leases.expires_at < ?4";
const RENEW: &str = "UPDATE eda_leases SET expires_at = ?3 WHERE name = ?1 AND holder = ?2";
const RELEASE: &str = "DELETE FROM eda_leases WHERE name = ?1 AND holder = ?2";

/// How long a lease lasts without being renewed, by default: a runner whose
/// process died is taken over after this (one that stops releases its lease at
/// once). It is renewed every fifth of it (before a page, and while idle).
const LEASE: Duration = Duration::from_secs(5);

/// How long a runner waits for the read database's write lock (held by its
/// readers' writes, or another process) before the batch fails and is retried.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A SQLite projection with its database, about to be started:
/// [`ProjectionBuilder::database`].
#[must_use = "a projection does nothing until it is started"]
pub struct SqliteProjectionBuilder<P> {
    app: App,
    projection: P,
    path: PathBuf,
    lease: Duration,
}

impl<P: fmt::Debug> fmt::Debug for SqliteProjectionBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteProjectionBuilder")
            .field("projection", &self.projection)
            .field("path", &self.path)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<P: SqliteProjection> ProjectionBuilder<P, read_model::Sqlite> {
    /// The SQLite database the read model lives in, created if missing: a file of
    /// its own, or the event store's (the runner writes through a connection of
    /// its own, in WAL mode). Queries open their own connections to it.
    pub fn database(self, path: impl AsRef<Path>) -> SqliteProjectionBuilder<P> {
        SqliteProjectionBuilder {
            app: self.app,
            projection: self.projection,
            path: path.as_ref().to_owned(),
            lease: LEASE,
        }
    }
}

impl<P: SqliteProjection> SqliteProjectionBuilder<P> {
    /// How long the runner's lease on the read model lasts without being
    /// renewed (5 s by default; renewed every fifth of it): one runner applies
    /// the read model at a time, across processes, and when its process dies
    /// another takes over after this. A runner that stops gives up its lease at
    /// once.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// Opens the database, finds the projection's checkpoint there (creating
    /// the `eda_projections` table on first use), and starts the runner on a
    /// task of its own after it.
    ///
    /// A read model built by an older [`VERSION`](crate::Projection::VERSION)
    /// of a projection with a `#[reset]` method is rebuilt: the runner first
    /// empties it, its parked events and its checkpoint in one transaction,
    /// then replays the log into it ([`RunnerState::Rebuilding`](crate::RunnerState::Rebuilding)).
    ///
    /// # Errors
    /// The database cannot be opened or read, or it holds the read model of a
    /// newer version of the projection, or of an older one and the projection
    /// has no `#[reset]` method ([`StoreError::Invalid`], `what: "projection
    /// version"`).
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub async fn start(self) -> Result<ProjectionHandle<P>, StoreError> {
        let path = self.path;
        let db = blocking(move || open::<P>(&path, P::NAME, P::VERSION)).await?;
        let parked = Arc::new(AtomicU64::new(db.parked_total()));
        let db = Arc::new(Mutex::new(db));
        let state = Arc::new(Mutex::new(self.projection));
        let sink = SqliteSink {
            db: Arc::clone(&db),
            state: Arc::clone(&state),
            parked: Arc::clone(&parked),
            holder: crate::event_id::new_event_id().to_string(),
            lease: self.lease,
            renewed_at: None,
        };
        let control = runner::spawn(self.app.clone(), sink);
        let parking = SqliteParking {
            app: self.app,
            db,
            state: Arc::clone(&state),
            parked,
            control: Arc::clone(&control),
        };
        Ok(ProjectionHandle {
            control,
            state,
            parking: Some(Arc::new(parking)),
        })
    }
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.into())
}

/// Runs `f` on a thread that may block.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|join| StoreError::Backend(join.into()))?
}

/// Opens the read database and reads (or creates) the projection's checkpoint
/// and its parked aggregates.
fn open<P: SqliteProjection>(
    path: &Path,
    name: &'static str,
    version: u32,
) -> Result<ReadDb<Connection>, StoreError> {
    let connection = Connection::open(path).map_err(backend)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    // WAL: readers of the read model do not block the runner, nor it them.
    // NORMAL: a commit survives the process crashing (not the machine).
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(backend)?;
    connection.execute_batch(CREATE).map_err(backend)?;
    connection
        .execute(INSERT, (name, version))
        .map_err(backend)?;
    let (stored, position): (i64, i64) = connection
        .query_row(SELECT, [name], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map_err(backend)?
        .ok_or_else(|| StoreError::Backend("the checkpoint row vanished".into()))?;
    let place = path.display().to_string();
    // Refused at once; rebuilt when the runner starts.
    page::to_rebuild(name, &place, stored, version, P::RESETS, FRESH)?;
    let checkpoint = page::checkpoint_of(name, position)?;
    pollster::block_on(ReadDb::new::<P>(connection, name, place, checkpoint))
}

/// Applies pages in transactions of the read database, one runner at a time:
/// the holder of the projection's lease in `eda_leases`.
struct SqliteSink<P> {
    db: Arc<Mutex<ReadDb<Connection>>>,
    state: Arc<Mutex<P>>,
    parked: Arc<AtomicU64>,
    /// This runner's name in `eda_leases`.
    holder: String,
    lease: Duration,
    /// When it last took or renewed its lease.
    renewed_at: Option<Instant>,
}

/// [`lease::epoch_millis`] as SQLite stores it.
fn epoch_millis(after: Duration) -> i64 {
    to_i64(lease::epoch_millis(after))
}

/// Takes (or keeps) the lease of `db`'s projection for `holder`: `false` while
/// another runner holds it.
fn take_lease(
    db: &mut ReadDb<Connection>,
    holder: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let now = epoch_millis(Duration::ZERO);
    let taken = db
        .connection
        .execute(ACQUIRE, (db.name, holder, epoch_millis(lease), now))
        .map_err(backend)?;
    // The control of the one-runner-at-a-time tests: every runner takes its turn.
    Ok(taken == 1 || failpoint::broken("runner.turn_ignored"))
}

impl<P: SqliteProjection> Sink for SqliteSink<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn events(&self) -> &'static [&'static str] {
        P::EVENTS
    }

    /// Takes the lease (or stands by while another runner holds it), and goes
    /// on after the checkpoint the last holder left; from the start of the log
    /// after emptying a read model that an older version built.
    async fn start(&mut self) -> Result<Started, Failure> {
        let (db, state) = (Arc::clone(&self.db), Arc::clone(&self.state));
        let (holder, lease) = (self.holder.clone(), self.lease);
        let parked = Arc::clone(&self.parked);
        let started = blocking(move || {
            let (mut db, mut state) = (lock(&db), lock(&state));
            if !take_lease(&mut db, &holder, lease)? {
                return Ok(None);
            }
            let started = page::start(&mut db, &mut *state, P::VERSION, FRESH);
            let started = pollster::block_on(started);
            parked.store(db.parked_total(), Ordering::Relaxed);
            started.map(Some)
        })
        .await;
        match started {
            Ok(Some(started)) => {
                self.renewed_at = Some(Instant::now());
                Ok(started)
            }
            Ok(None) => Err(Failure::standby(format!(
                "another runner holds the lease of `{}`",
                P::NAME
            ))),
            Err(error @ StoreError::Invalid { .. }) => Err(Failure::stop(error, None)),
            Err(error) => Err(Failure::retry(error, None)),
        }
    }

    async fn rebuild(&mut self) -> Result<(), StoreError> {
        let (db, state) = (Arc::clone(&self.db), Arc::clone(&self.state));
        let parked = Arc::clone(&self.parked);
        blocking(move || {
            let (mut db, mut state) = (lock(&db), lock(&state));
            let rebuilt = pollster::block_on(page::rebuild(&mut db, &mut *state, P::VERSION));
            parked.store(db.parked_total(), Ordering::Relaxed);
            rebuilt
        })
        .await
    }

    async fn apply(&mut self, page: LogPage, last_attempt: bool) -> Result<(), Failure> {
        let (db, state) = (Arc::clone(&self.db), Arc::clone(&self.state));
        let parked = Arc::clone(&self.parked);
        let lease = self.lease;
        let renew = self
            .renewed_at
            .is_none_or(|at| at.elapsed() >= lease / 5)
            .then(|| self.holder.clone());
        if renew.is_some() {
            self.renewed_at = Some(Instant::now());
        }
        let applied = tokio::task::spawn_blocking(move || {
            let mut db = lock(&db);
            if let Some(holder) = renew {
                let renewed = db
                    .connection
                    .execute(RENEW, (db.name, &holder, epoch_millis(lease)));
                match renewed {
                    Ok(1) => {}
                    Ok(_) => {
                        let error = format!("the runner lost the lease of `{}`", db.name);
                        return Err(Failure::standby(error));
                    }
                    Err(error) => return Err(Failure::retry(backend(error), None)),
                }
            }
            let mut state = lock(&state);
            let applying = page::apply_page(&mut db, &mut *state, &page, last_attempt);
            // Ready at once: rusqlite blocks, on this thread.
            let result = pollster::block_on(applying);
            parked.store(db.parked_total(), Ordering::Relaxed);
            result
        })
        .await;
        // A panicking #[on] method: the transaction was rolled back.
        applied.unwrap_or_else(|join| Err(Failure::stop(join, None)))
    }

    fn parked(&self) -> Option<u64> {
        Some(self.parked.load(Ordering::Relaxed))
    }

    fn renew_every(&self) -> Option<Duration> {
        Some(self.lease / 5)
    }

    async fn release(&mut self) {
        let (db, holder) = (Arc::clone(&self.db), self.holder.clone());
        let released = blocking(move || {
            let db = lock(&db);
            let released = db.connection.execute(RELEASE, (db.name, &holder));
            released.map(drop).map_err(backend)
        });
        if let Err(error) = released.await {
            tracing::warn!(projection = P::NAME, %error, "the lease could not be released: it expires");
        }
    }
}

/// The read database's side of the page algorithm; every future is ready at
/// once.
impl<P: SqliteProjection> Database<P> for Connection {
    const LOST_TURN: Then = Then::Standby;
    const RESETS: bool = P::RESETS;

    type Tx<'c> = Transaction<'c>;

    async fn begin(&mut self) -> Result<Transaction<'_>, StoreError> {
        self.transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)
    }

    async fn commit(tx: Self::Tx<'_>) -> Result<(), StoreError> {
        tx.commit().map_err(backend)
    }

    async fn apply(
        tx: &Self::Tx<'_>,
        projection: &mut P,
        event: &RecordedEvent,
        index: usize,
    ) -> Result<(), (usize, ApplyError)> {
        projection.apply(event, tx).map_err(|error| (index, error))
    }

    /// The transaction is `IMMEDIATE`: no other writer until it ends.
    async fn stored(tx: &Self::Tx<'_>, name: &str) -> Result<(i64, i64), StoreError> {
        tx.query_row(SELECT, [name], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(backend)
    }

    async fn reset(
        tx: &Self::Tx<'_>,
        projection: &mut P,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        projection.reset(tx)
    }

    async fn restart(tx: &Self::Tx<'_>, name: &str, version: u32) -> Result<(), StoreError> {
        tx.execute(UNPARK_ALL, [name]).map_err(backend)?;
        tx.execute(RESTART, (name, version)).map_err(backend)?;
        Ok(())
    }

    async fn park(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut statement = tx.prepare_cached(PARK).map_err(backend)?;
        statement
            .execute((
                name,
                to_i64(event.position),
                event.event_id.to_string(),
                &event.aggregate_type,
                &event.aggregate_id,
                &event.name,
                error,
                Utc::now().to_rfc3339(),
            ))
            .map_err(backend)?;
        Ok(())
    }

    async fn move_checkpoint(
        tx: &Self::Tx<'_>,
        name: &str,
        from: u64,
        to: u64,
    ) -> Result<bool, StoreError> {
        let mut statement = tx.prepare_cached(MOVE).map_err(backend)?;
        let moved = statement
            .execute((name, to_i64(from), to_i64(to)))
            .map_err(backend)?;
        Ok(moved == 1)
    }

    async fn unpark(tx: &Self::Tx<'_>, name: &str, position: u64) -> Result<bool, StoreError> {
        let deleted = tx
            .execute(UNPARK, (name, to_i64(position)))
            .map_err(backend)?;
        Ok(deleted == 1)
    }

    async fn still_fails(
        &mut self,
        name: &str,
        position: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.execute(STILL_FAILS, (name, to_i64(position), error))
            .map_err(backend)?;
        Ok(())
    }

    async fn parked_streams(&mut self, name: &str) -> Result<HashMap<Stream, u64>, StoreError> {
        let mut statement = self.prepare_cached(PARKED_STREAMS).map_err(backend)?;
        let rows = statement
            .query_map([name], |row| {
                Ok(((row.get(0)?, row.get(1)?), row.get::<_, i64>(2)? as u64))
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }
}

/// The dead-letter operations of a SQLite projection's handle.
struct SqliteParking<P> {
    app: App,
    db: Arc<Mutex<ReadDb<Connection>>>,
    state: Arc<Mutex<P>>,
    parked: Arc<AtomicU64>,
    control: Arc<Control>,
}

impl<P: SqliteProjection> SqliteParking<P> {
    fn counted(&self, db: &ReadDb<Connection>) {
        let total = db.parked_total();
        self.parked.store(total, Ordering::Relaxed);
        self.control.set_parked(total);
    }
}

impl<P: SqliteProjection> Parking for SqliteParking<P> {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ParkedEvent>, StoreError>> {
        let db = Arc::clone(&self.db);
        Box::pin(blocking(move || list_parked(&lock(&db)).map_err(backend)))
    }

    fn retry(&self) -> BoxFuture<'_, Result<Retried, StoreError>> {
        Box::pin(async move {
            let events = page::parked_events(&self.app, self.list().await?).await?;
            let (db, state) = (Arc::clone(&self.db), Arc::clone(&self.state));
            let retried = blocking(move || {
                let (mut db, mut state) = (lock(&db), lock(&state));
                pollster::block_on(page::retry_parked(&mut db, &mut *state, &events))
            })
            .await?;
            self.counted(&lock(&self.db));
            Ok(retried)
        })
    }

    fn skip(&self, event_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let db = Arc::clone(&self.db);
            let skipped = blocking(move || {
                let mut db = lock(&db);
                let id = event_id.to_string();
                let deleted = db.connection.execute(UNPARK_ID, (db.name, id));
                pollster::block_on(db.count_parked::<P>())?;
                Ok(deleted.map_err(backend)? > 0)
            })
            .await?;
            self.counted(&lock(&self.db));
            Ok(skipped)
        })
    }
}

fn list_parked(db: &ReadDb<Connection>) -> rusqlite::Result<Vec<ParkedEvent>> {
    let mut statement = db.connection.prepare_cached(PARKED)?;
    let rows = statement.query_map([db.name], |row| {
        let position: i64 = row.get(0)?;
        let event_id: String = row.get(1)?;
        let parked_at: String = row.get(6)?;
        Ok(ParkedEvent {
            position: position as u64,
            event_id: event_id.parse().unwrap_or_default(),
            aggregate_type: row.get(2)?,
            aggregate_id: row.get(3)?,
            name: row.get(4)?,
            error: row.get(5)?,
            parked_at: DateTime::parse_from_rfc3339(&parked_at)
                .map(|at| at.with_timezone(&Utc))
                .unwrap_or_default(),
        })
    })?;
    rows.collect()
}
