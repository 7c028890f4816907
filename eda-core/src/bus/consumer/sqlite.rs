//! The SQLite side of consumers: the read model, its inbox and its parked
//! messages in a SQLite file; each message handled on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use uuid::Uuid;

use super::{Backend, ConsumerBuilder, ConsumerHandle, Failed, Inbox, InboxDb, Outcome, Parked};
use crate::bus::Subscription;
use crate::envelope::{Metadata, RecordedEvent};
use crate::error::StoreError;
use crate::projection::{lock, ApplyError, Retried, SqliteProjection};
use crate::store::durable::backend;
use crate::store::BoxFuture;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS eda_inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS eda_parked_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    event_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    error TEXT NOT NULL,
    parked_at TEXT NOT NULL,
    UNIQUE (consumer, event_id)
) STRICT;
CREATE INDEX IF NOT EXISTS eda_parked_messages_stream
    ON eda_parked_messages (consumer, aggregate_type, aggregate_id)";
const RECORD: &str = "INSERT INTO eda_inbox (consumer, event_id) VALUES (?1, ?2)
    ON CONFLICT DO NOTHING";
const PARK: &str = "INSERT INTO eda_parked_messages (consumer, event_id, aggregate_type,
    aggregate_id, version, position, name, event_version, payload, metadata, recorded_at,
    error, parked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const PARKED: &str = "SELECT event_id, aggregate_type, aggregate_id, version, position, name,
    event_version, payload, metadata, recorded_at, error, parked_at
    FROM eda_parked_messages WHERE consumer = ?1 ORDER BY seq";
const UNPARK: &str = "DELETE FROM eda_parked_messages WHERE consumer = ?1 AND event_id = ?2";
const PARKED_BEHIND: &str = "SELECT EXISTS (SELECT 1 FROM eda_parked_messages
    WHERE consumer = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3)";
const STILL_FAILS: &str =
    "UPDATE eda_parked_messages SET error = ?3 WHERE consumer = ?1 AND event_id = ?2";

impl<P: SqliteProjection, S: Subscription> ConsumerBuilder<P, S> {
    /// The SQLite file of the read model, its inbox and its parked messages
    /// (created if missing).
    pub fn database(self, path: impl AsRef<Path>) -> SqliteConsumerBuilder<P, S> {
        SqliteConsumerBuilder {
            builder: self,
            path: path.as_ref().to_owned(),
        }
    }
}

/// A consumer into a SQLite read model, about to be started:
/// [`ConsumerBuilder::database`].
#[must_use = "a consumer does nothing until it is started"]
#[derive(Debug)]
pub struct SqliteConsumerBuilder<P, S> {
    builder: ConsumerBuilder<P, S>,
    path: PathBuf,
}

impl<P: SqliteProjection, S: Subscription> SqliteConsumerBuilder<P, S> {
    /// Opens the database (creating the inbox's tables) and starts the
    /// consumer on a task of its own.
    ///
    /// # Errors
    /// The database cannot be opened.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub async fn start(self) -> Result<ConsumerHandle<P>, StoreError> {
        let (path, name) = (self.path, self.builder.name);
        let inbox = tokio::task::spawn_blocking(move || {
            let connection = open(&path)?;
            pollster::block_on(Inbox::new::<P>(connection, name))
        })
        .await
        .map_err(backend)??;
        let count = AtomicU64::new(inbox.count);
        let (projection, starter) = self.builder.into_parts();
        let state = Arc::new(State {
            inbox: Mutex::new(inbox),
            projection: Mutex::new(projection),
            count,
        });
        Ok(starter.start(Box::new(SqliteBackend { state })))
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open(path).map_err(backend)?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(backend)?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    connection.execute_batch(CREATE).map_err(backend)?;
    Ok(connection)
}

struct State<P> {
    inbox: Mutex<Inbox<Connection>>,
    projection: Mutex<P>,
    count: AtomicU64,
}

/// Runs the algorithm on a blocking thread (rusqlite blocks).
struct SqliteBackend<P> {
    state: Arc<State<P>>,
}

impl<P: SqliteProjection> SqliteBackend<P> {
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inbox<Connection>, &mut P) -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static {
        let state = Arc::clone(&self.state);
        async move {
            tokio::task::spawn_blocking(move || {
                let (mut inbox, mut projection) = (lock(&state.inbox), lock(&state.projection));
                let done = work(&mut inbox, &mut projection);
                state.count.store(inbox.count, Ordering::Relaxed);
                done
            })
            .await
            .map_err(|join| StoreError::Backend(Box::new(join)))
        }
    }
}

impl<P: SqliteProjection> Backend for SqliteBackend<P> {
    fn handle(
        &self,
        event: Arc<RecordedEvent>,
        last_attempt: bool,
    ) -> BoxFuture<'_, Result<Outcome, Failed>> {
        let handled = self.blocking(move |inbox, projection| {
            pollster::block_on(inbox.handle(projection, &event, last_attempt))
        });
        Box::pin(async move { handled.await? })
    }

    fn parked(&self) -> BoxFuture<'_, Result<Vec<Parked>, StoreError>> {
        let parked = self.blocking(|inbox, _| pollster::block_on(inbox.count_parked::<P>()));
        Box::pin(async move { parked.await? })
    }

    fn retry_parked(&self) -> BoxFuture<'_, Result<Retried, StoreError>> {
        let retried =
            self.blocking(|inbox, projection| pollster::block_on(inbox.retry_parked(projection)));
        Box::pin(async move { retried.await? })
    }

    fn skip(&self, event_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        let skipped = self.blocking(move |inbox, _| pollster::block_on(inbox.skip::<P>(event_id)));
        Box::pin(async move { skipped.await? })
    }

    fn parked_count(&self) -> u64 {
        self.state.count.load(Ordering::Relaxed)
    }
}

/// The read database's side of the algorithm; every future is ready at once.
impl<P: SqliteProjection> InboxDb<P> for Connection {
    type Tx<'c> = Transaction<'c>;

    async fn begin(&mut self) -> Result<Self::Tx<'_>, StoreError> {
        self.transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)
    }

    async fn commit(tx: Self::Tx<'_>) -> Result<(), StoreError> {
        tx.commit().map_err(backend)
    }

    async fn record(tx: &Self::Tx<'_>, name: &str, event_id: Uuid) -> Result<bool, StoreError> {
        let recorded = tx.execute(RECORD, (name, event_id.to_string()));
        Ok(recorded.map_err(backend)? == 1)
    }

    async fn apply(
        tx: &Self::Tx<'_>,
        projection: &mut P,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        projection.apply(event, tx)
    }

    async fn park(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), StoreError> {
        park_in(tx, name, event, error)
    }

    async fn parked_behind(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
    ) -> Result<bool, StoreError> {
        let stream = (name, &event.aggregate_type, &event.aggregate_id);
        let parked = tx.query_row(PARKED_BEHIND, stream, |row| row.get(0));
        parked.map_err(backend)
    }

    async fn unpark(tx: &Self::Tx<'_>, name: &str, event_id: Uuid) -> Result<bool, StoreError> {
        let deleted = tx.execute(UNPARK, (name, event_id.to_string()));
        Ok(deleted.map_err(backend)? > 0)
    }

    async fn still_fails(
        &mut self,
        name: &str,
        event_id: Uuid,
        error: &str,
    ) -> Result<(), StoreError> {
        let updated = self.execute(STILL_FAILS, (name, event_id.to_string(), error));
        updated.map(drop).map_err(backend)
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<Parked>, StoreError> {
        let mut statement = self.prepare(PARKED).map_err(backend)?;
        let mut rows = statement.query([name]).map_err(backend)?;
        let mut parked = Vec::new();
        while let Some(row) = rows.next().map_err(backend)? {
            parked.push(parked_message(name, row)?);
        }
        Ok(parked)
    }
}

fn park_in(
    tx: &Transaction<'_>,
    name: &str,
    event: &RecordedEvent,
    error: &str,
) -> Result<(), StoreError> {
    let metadata = serde_json::to_string(&event.metadata).map_err(backend)?;
    tx.execute(
        PARK,
        rusqlite::params![
            name,
            event.event_id.to_string(),
            event.aggregate_type,
            event.aggregate_id,
            i64::try_from(event.version).unwrap_or(i64::MAX),
            i64::try_from(event.position).unwrap_or(i64::MAX),
            event.name,
            event.event_version,
            event.payload,
            metadata,
            event.recorded_at.to_rfc3339(),
            error.replace('\0', "\u{fffd}"),
            Utc::now().to_rfc3339(),
        ],
    )
    .map(drop)
    .map_err(backend)
}

/// A row of `eda_parked_messages` (as [`PARKED`] selects it): the message's
/// event, its error, when it was parked.
fn parked_message(name: &str, row: &rusqlite::Row<'_>) -> Result<Parked, StoreError> {
    let position: i64 = row.get(4).map_err(backend)?;
    let corrupt = |what: &str| StoreError::Corrupt {
        position: u64::try_from(position).unwrap_or_default(),
        what: format!("a parked message of `{name}`: {what}"),
    };
    let text = |index: usize| row.get::<_, String>(index).map_err(backend);
    let number = |index: usize| row.get::<_, i64>(index).map_err(backend);
    let event = RecordedEvent {
        event_id: text(0)?.parse().map_err(|_| corrupt("event id"))?,
        aggregate_type: text(1)?,
        aggregate_id: text(2)?,
        version: u64::try_from(number(3)?).map_err(|_| corrupt("version"))?,
        position: u64::try_from(position).map_err(|_| corrupt("position"))?,
        name: text(5)?,
        event_version: u32::try_from(number(6)?).map_err(|_| corrupt("schema version"))?,
        payload: text(7)?,
        metadata: serde_json::from_str::<Metadata>(&text(8)?).map_err(|_| corrupt("metadata"))?,
        recorded_at: text(9)?.parse().map_err(|_| corrupt("recorded at"))?,
    };
    let parked_at: DateTime<Utc> = text(11)?.parse().map_err(|_| corrupt("parked at"))?;
    Ok(Parked {
        event,
        error: text(10)?,
        parked_at,
    })
}
