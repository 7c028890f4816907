//! The SQLite kind: the read model is in a SQLite database of its own (or the
//! event store's file), and each page of events is applied in one transaction
//! that also moves the projection's checkpoint, kept in that database's
//! `eda_projections` table. A crash before the commit loses the page's writes and
//! its checkpoint together; after it, keeps both: each event's writes happen
//! exactly once in effect.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use super::runner::{self, Control, Failure, Sink};
use super::{
    lock, read_model, ApplyError, ParkedEvent, Parking, ProjectionBuilder, ProjectionHandle,
    Retried, SqliteProjection,
};
use crate::app::App;
use crate::envelope::RecordedEvent;
use crate::error::{DecodeError, StoreError};
use crate::failpoint;
use crate::store::{BoxFuture, LogPage};

const CREATE: &str = "CREATE TABLE IF NOT EXISTS eda_projections (
    name TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL
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
}

impl<P: fmt::Debug> fmt::Debug for SqliteProjectionBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteProjectionBuilder")
            .field("projection", &self.projection)
            .field("path", &self.path)
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
        }
    }
}

impl<P: SqliteProjection> SqliteProjectionBuilder<P> {
    /// Opens the database, finds the projection's checkpoint there (creating
    /// the `eda_projections` table on first use), and starts the runner on a
    /// task of its own after it.
    ///
    /// # Errors
    /// The database cannot be opened or read, or it holds the read model of
    /// another version of the projection ([`StoreError::Invalid`]).
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub async fn start(self) -> Result<ProjectionHandle<P>, StoreError> {
        let path = self.path;
        let db = blocking(move || ReadDb::open(&path, P::NAME, P::VERSION)).await?;
        let parked = Arc::new(AtomicU64::new(db.parked_total()));
        let db = Arc::new(Mutex::new(db));
        let state = Arc::new(Mutex::new(self.projection));
        let sink = SqliteSink {
            db: Arc::clone(&db),
            state: Arc::clone(&state),
            parked: Arc::clone(&parked),
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

type Stream = (String, String);

/// The read database as a runner sees it: its connection, its checkpoint, and
/// the aggregates with parked events (whose later events are parked too).
struct ReadDb {
    connection: Connection,
    name: &'static str,
    checkpoint: u64,
    parked: HashMap<Stream, u64>,
}

impl ReadDb {
    /// Opens the read database and reads (or creates) the projection's
    /// checkpoint and its parked aggregates.
    fn open(path: &Path, name: &'static str, version: u32) -> Result<ReadDb, StoreError> {
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
        let (stored, position): (u32, i64) = connection
            .query_row(SELECT, [name], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
            .map_err(backend)?
            .ok_or_else(|| StoreError::Backend("the checkpoint row vanished".into()))?;
        if stored != version {
            return Err(StoreError::Invalid {
                what: "projection version",
                reason: format!(
                    "`{name}` in {} was built by version {stored}, this code is version {version}; \
                     rebuilding a SQLite read model in place is not supported yet: start it on a new database file",
                    path.display()
                ),
            });
        }
        let checkpoint = u64::try_from(position).map_err(|_| StoreError::Corrupt {
            position: 0,
            what: format!("checkpoint of `{name}` is {position}"),
        })?;
        let mut db = ReadDb {
            connection,
            name,
            checkpoint,
            parked: HashMap::new(),
        };
        db.count_parked().map_err(backend)?;
        Ok(db)
    }

    fn count_parked(&mut self) -> rusqlite::Result<()> {
        let mut statement = self.connection.prepare_cached(PARKED_STREAMS)?;
        let rows = statement.query_map([self.name], |row| {
            Ok(((row.get(0)?, row.get(1)?), row.get::<_, i64>(2)? as u64))
        })?;
        self.parked = rows.collect::<rusqlite::Result<_>>()?;
        Ok(())
    }

    fn parked_total(&self) -> u64 {
        self.parked.values().sum()
    }
}

/// Applies pages in transactions of the read database.
struct SqliteSink<P> {
    db: Arc<Mutex<ReadDb>>,
    state: Arc<Mutex<P>>,
    parked: Arc<AtomicU64>,
}

impl<P: SqliteProjection> Sink for SqliteSink<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn events(&self) -> &'static [&'static str] {
        P::EVENTS
    }

    async fn start(&mut self) -> Result<u64, Failure> {
        Ok(lock(&self.db).checkpoint)
    }

    async fn apply(&mut self, page: LogPage, last_attempt: bool) -> Result<(), Failure> {
        let (db, state) = (Arc::clone(&self.db), Arc::clone(&self.state));
        let parked = Arc::clone(&self.parked);
        let applied = tokio::task::spawn_blocking(move || {
            let mut db = lock(&db);
            let result = apply_page(&mut db, &mut *lock(&state), &page, last_attempt);
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
}

/// Applies `page` in one transaction with the checkpoint's move to its
/// `read_to`. An event that cannot be decoded is parked at once, one whose
/// `#[on]` method fails is parked on the `last_attempt` (each with its
/// aggregate's later events); otherwise the transaction is rolled back, and the
/// events before the failed one are applied again in a transaction of their own,
/// so that the runner moves past them while it retries the failed one.
fn apply_page<P: SqliteProjection>(
    db: &mut ReadDb,
    projection: &mut P,
    page: &LogPage,
    last_attempt: bool,
) -> Result<(), Failure> {
    let from = db.checkpoint;
    if page.read_to == from {
        // Nothing new: no transaction (a live runner polls).
        return Ok(());
    }
    let mut park = BTreeMap::new();
    loop {
        let failed = match apply_events(db, projection, &page.events, &park, page.read_to) {
            Ok(()) => return Ok(()),
            Err(Applying::Event(failed)) => failed,
            Err(Applying::Database(failure)) => return Err(failure),
        };
        let (done, mut failure) = failed;
        if !failure.retry || last_attempt {
            park.insert(done, failure.error);
            continue;
        }
        let event = &page.events[done];
        let reached = event.position - 1;
        if reached > from {
            match apply_events(db, projection, &page.events[..done], &park, reached) {
                Ok(()) => {
                    failure.reached = Some(reached);
                    failure.applied = done as u64;
                }
                Err(Applying::Event((_, failure)) | Applying::Database(failure)) => {
                    return Err(failure)
                }
            }
        }
        failure.error = format!("{}: {}", describe(event), failure.error);
        return Err(failure);
    }
}

fn describe(event: &RecordedEvent) -> String {
    format!(
        "event `{}` at position {} ({} `{}` version {})",
        event.name, event.position, event.aggregate_type, event.aggregate_id, event.version
    )
}

/// Why [`apply_events`] rolled back.
enum Applying {
    /// The event at this index failed: retry it, or park it if the failure says
    /// trying again is of no use.
    Event((usize, Failure)),
    /// The database failed (or another runner moved the checkpoint).
    Database(Failure),
}

fn database(error: rusqlite::Error) -> Applying {
    Applying::Database(Failure::retry(StoreError::Backend(error.into()), None))
}

/// Applies `events` in one transaction, parking those at the indexes in `park`
/// (with the error to keep) and those of aggregates with parked events, and
/// moves the checkpoint to `to`; or changes nothing.
fn apply_events<P: SqliteProjection>(
    db: &mut ReadDb,
    projection: &mut P,
    events: &[RecordedEvent],
    park: &BTreeMap<usize, String>,
    to: u64,
) -> Result<(), Applying> {
    let name = db.name;
    let from = db.checkpoint;
    let tx = db
        .connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(database)?;
    let mut parked_now: HashMap<Stream, u64> = HashMap::new();
    for (done, event) in events.iter().enumerate() {
        let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let behind = db.parked.contains_key(&stream) || parked_now.contains_key(&stream);
        let error = match park.get(&done) {
            Some(error) => Some(error.clone()),
            None if behind => {
                Some("parked behind an earlier parked event of its aggregate".to_owned())
            }
            None => None,
        };
        if let Some(error) = error {
            park_event(&tx, name, event, &error).map_err(database)?;
            *parked_now.entry(stream).or_default() += 1;
            continue;
        }
        if let Err(error) = projection.apply(event, &tx) {
            let failure = match error {
                ApplyError::Decode(kind) => {
                    Failure::stop(DecodeError::at(&event.as_event_ref(), kind), None)
                }
                error @ ApplyError::Handler(_) => Failure::retry(error, None),
            };
            return Err(Applying::Event((done, failure)));
        }
    }
    failpoint::hit("projection.before_commit");
    let tx = if failpoint::broken("projection.checkpoint_apart") {
        // The control of the crash tests: the writes and the checkpoint in
        // separate transactions, which a crash between them applies twice.
        tx.commit().map_err(database)?;
        failpoint::hit("projection.between_commits");
        db.connection.transaction().map_err(database)?
    } else {
        tx
    };
    let moved = tx
        .prepare_cached(MOVE)
        .and_then(|mut statement| statement.execute((name, to_i64(from), to_i64(to))))
        .map_err(database)?;
    if moved != 1 {
        let error =
            format!("another runner of `{name}` moved its checkpoint from {from}: this one stops");
        return Err(Applying::Database(Failure::stop(error, None)));
    }
    tx.commit().map_err(database)?;
    failpoint::hit("projection.after_commit");
    db.checkpoint = to;
    for (stream, count) in parked_now {
        *db.parked.entry(stream).or_default() += count;
    }
    Ok(())
}

fn park_event(
    tx: &Connection,
    name: &str,
    event: &RecordedEvent,
    error: &str,
) -> rusqlite::Result<()> {
    tracing::warn!(projection = name, position = event.position, %error, "event parked");
    tx.prepare_cached(PARK)?.execute((
        name,
        to_i64(event.position),
        event.event_id.to_string(),
        &event.aggregate_type,
        &event.aggregate_id,
        &event.name,
        error,
        Utc::now().to_rfc3339(),
    ))?;
    Ok(())
}

fn to_i64(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

/// The dead-letter operations of a SQLite projection's handle.
struct SqliteParking<P> {
    app: App,
    db: Arc<Mutex<ReadDb>>,
    state: Arc<Mutex<P>>,
    parked: Arc<AtomicU64>,
    control: Arc<Control>,
}

impl<P: SqliteProjection> SqliteParking<P> {
    fn counted(&self, db: &ReadDb) {
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
            let rows = self.list().await?;
            let mut events = Vec::with_capacity(rows.len());
            for row in rows {
                let event = self.app.store().read_event(row.event_id).await?;
                let event = event.ok_or_else(|| StoreError::Corrupt {
                    position: row.position,
                    what: format!("parked event {} is not in the event store", row.event_id),
                })?;
                events.push(event);
            }
            let (db, state) = (Arc::clone(&self.db), Arc::clone(&self.state));
            let retried = blocking(move || {
                retry_parked(&mut lock(&db), &mut *lock(&state), &events).map_err(backend)
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
                db.count_parked().map_err(backend)?;
                Ok(deleted.map_err(backend)? > 0)
            })
            .await?;
            self.counted(&lock(&self.db));
            Ok(skipped)
        })
    }
}

fn list_parked(db: &ReadDb) -> rusqlite::Result<Vec<ParkedEvent>> {
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

/// Applies the parked `events` (in position order) aggregate by aggregate, each
/// in a transaction of its own that also removes it from the park; an
/// aggregate's first event that fails again stays parked with its new error,
/// and so do its later ones.
fn retry_parked<P: SqliteProjection>(
    db: &mut ReadDb,
    projection: &mut P,
    events: &[RecordedEvent],
) -> rusqlite::Result<Retried> {
    let name = db.name;
    let mut failed: Vec<Stream> = Vec::new();
    let mut applied = 0;
    for event in events {
        let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
        if failed.contains(&stream) {
            continue;
        }
        let tx = db
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        match projection.apply(event, &tx) {
            Ok(()) => {
                tx.execute(UNPARK, (name, to_i64(event.position)))?;
                tx.commit()?;
                applied += 1;
            }
            Err(error) => {
                drop(tx);
                let error = error.to_string();
                db.connection
                    .execute(STILL_FAILS, (name, to_i64(event.position), error))?;
                failed.push(stream);
            }
        }
    }
    db.count_parked()?;
    Ok(Retried {
        applied,
        parked: db.parked_total(),
    })
}
