//! The SQLite kind: the read model is in a SQLite database of its own (or the
//! event store's file), and each page of events is applied in one transaction
//! that also moves the projection's checkpoint, kept in that database's
//! `eda_projections` table. A crash before the commit loses the page's writes and
//! its checkpoint together; after it, keeps both: each event's writes happen
//! exactly once in effect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::runner::{self, Failure, Sink};
use super::{lock, read_model, ApplyError, ProjectionBuilder, ProjectionHandle, SqliteProjection};
use crate::app::App;
use crate::error::{DecodeError, StoreError};
use crate::failpoint;
use crate::store::LogPage;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS eda_projections (
    name TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL
) STRICT";
const INSERT: &str = "INSERT INTO eda_projections (name, version, position) VALUES (?1, ?2, 0)
    ON CONFLICT (name) DO NOTHING";
const SELECT: &str = "SELECT version, position FROM eda_projections WHERE name = ?1";
/// The compare-and-set that moves a checkpoint: no row changes if another
/// runner of the same projection moved it first.
const MOVE: &str = "UPDATE eda_projections SET position = ?3 WHERE name = ?1 AND position = ?2";

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
        let (connection, checkpoint) =
            tokio::task::spawn_blocking(move || open(&path, P::NAME, P::VERSION))
                .await
                .map_err(|join| StoreError::Backend(join.into()))??;
        let state = Arc::new(Mutex::new(self.projection));
        let sink = SqliteSink {
            state: Arc::clone(&state),
            connection: Some(connection),
            checkpoint,
        };
        let control = runner::spawn(self.app, sink);
        Ok(ProjectionHandle { control, state })
    }
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.into())
}

/// Opens the read database and reads (or creates) the projection's checkpoint.
fn open(path: &Path, name: &str, version: u32) -> Result<(Connection, u64), StoreError> {
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
    connection.execute(CREATE, ()).map_err(backend)?;
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
    let position = u64::try_from(position).map_err(|_| StoreError::Corrupt {
        position: 0,
        what: format!("checkpoint of `{name}` is {position}"),
    })?;
    Ok((connection, position))
}

/// Applies pages in transactions of the read database.
struct SqliteSink<P> {
    state: Arc<Mutex<P>>,
    /// Lent to the blocking task that applies a page; `None` only meanwhile.
    connection: Option<Connection>,
    checkpoint: u64,
}

impl<P: SqliteProjection> Sink for SqliteSink<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn events(&self) -> &'static [&'static str] {
        P::EVENTS
    }

    async fn start(&mut self) -> Result<u64, Failure> {
        Ok(self.checkpoint)
    }

    async fn apply(&mut self, page: LogPage) -> Result<(), Failure> {
        let Some(mut connection) = self.connection.take() else {
            return Err(Failure::stop("the read database connection was lost", None));
        };
        let state = Arc::clone(&self.state);
        let from = self.checkpoint;
        let applied = tokio::task::spawn_blocking(move || {
            let result = apply_page::<P>(&mut connection, &mut lock(&state), &page, from);
            (connection, result)
        })
        .await;
        let (connection, result) = match applied {
            Ok(applied) => applied,
            // A panicking #[on] method: the transaction was rolled back.
            Err(join) => return Err(Failure::stop(join, None)),
        };
        self.connection = Some(connection);
        match result {
            Ok(read_to) => {
                self.checkpoint = read_to;
                Ok(())
            }
            Err(failure) => {
                self.checkpoint = failure.reached.unwrap_or(from);
                Err(failure)
            }
        }
    }
}

/// Applies `page` in one transaction with the checkpoint's move from `from` to
/// its `read_to`. If an event fails, the transaction is rolled back and the
/// events before it are applied again in a transaction of their own, so the
/// runner moves past them while it retries the failed one.
fn apply_page<P: SqliteProjection>(
    connection: &mut Connection,
    projection: &mut P,
    page: &LogPage,
    from: u64,
) -> Result<u64, Failure> {
    if page.read_to == from {
        // Nothing new: no transaction (a live runner polls).
        return Ok(from);
    }
    match apply_events(connection, projection, &page.events, from, page.read_to) {
        Ok(()) => Ok(page.read_to),
        Err(Applying::Event(done, error)) => {
            let failed = &page.events[done];
            let reached = failed.position - 1;
            let prefix = &page.events[..done];
            let moved = if prefix.is_empty() || reached == from {
                None
            } else {
                match apply_events(connection, projection, prefix, from, reached) {
                    Ok(()) => Some(reached),
                    // Applied before; it failing now is the failure to report.
                    Err(Applying::Event(_, error)) | Err(Applying::Database(error)) => {
                        return Err(error)
                    }
                }
            };
            let mut error = error;
            error.reached = moved;
            error.applied = if moved.is_some() { done as u64 } else { 0 };
            error.error = format!(
                "event `{}` at position {} ({} `{}` version {}): {}",
                failed.name,
                failed.position,
                failed.aggregate_type,
                failed.aggregate_id,
                failed.version,
                error.error
            );
            Err(error)
        }
        Err(Applying::Database(error)) => Err(error),
    }
}

/// Why [`apply_events`] rolled back.
enum Applying {
    /// The event at this index of the page failed.
    Event(usize, Failure),
    /// The database failed (or another runner moved the checkpoint).
    Database(Failure),
}

fn database(error: rusqlite::Error) -> Applying {
    Applying::Database(Failure::retry(StoreError::Backend(error.into()), None))
}

/// Applies `events` and moves the checkpoint from `from` to `to` in one
/// transaction, or changes nothing.
fn apply_events<P: SqliteProjection>(
    connection: &mut Connection,
    projection: &mut P,
    events: &[crate::envelope::RecordedEvent],
    from: u64,
    to: u64,
) -> Result<(), Applying> {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(database)?;
    for (done, event) in events.iter().enumerate() {
        if let Err(error) = projection.apply(event, &tx) {
            let failure = match error {
                ApplyError::Decode(kind) => {
                    Failure::stop(DecodeError::at(&event.as_event_ref(), kind), None)
                }
                error @ ApplyError::Handler(_) => Failure::retry(error, None),
            };
            return Err(Applying::Event(done, failure));
        }
    }
    failpoint::hit("projection.before_commit");
    let tx = if failpoint::broken("projection.checkpoint_apart") {
        // The control of the crash tests: the writes and the checkpoint in
        // separate transactions, which a crash between them applies twice.
        tx.commit().map_err(database)?;
        failpoint::hit("projection.between_commits");
        connection.transaction().map_err(database)?
    } else {
        tx
    };
    let moved = tx
        .prepare_cached(MOVE)
        .and_then(|mut statement| statement.execute((P::NAME, to_i64(from), to_i64(to))))
        .map_err(database)?;
    if moved != 1 {
        let error = format!(
            "another runner of `{}` moved its checkpoint from {from}: this one stops",
            P::NAME
        );
        return Err(Applying::Database(Failure::stop(error, None)));
    }
    tx.commit().map_err(database)?;
    failpoint::hit("projection.after_commit");
    Ok(())
}

fn to_i64(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}
