//! A consumer in another service: a SQLite read model fed from a bus
//! subscription, with an inbox beside it.
//!
//! Each message is applied in one transaction that also records its event id
//! in the read database's inbox (`eda_inbox`: consumer, event id); the message
//! is acknowledged only after that commit. A message delivered again (the
//! consumer crashed before its acknowledgement, the bus redelivered it) finds
//! its id in the inbox and changes nothing. A message whose `#[on]` method
//! fails is tried again (5 times, with a backoff), then parked with the whole
//! message (`eda_parked_messages`), and so are its aggregate's later messages,
//! while the others flow on. A message of an event the projection has no
//! `#[on]` method for is recorded and skipped; one it cannot decode (a newer
//! schema version than it knows, a payload that does not fit) is parked at
//! once, to be retried once the consumer's code is upgraded.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::watch;
use uuid::Uuid;

use super::{Acknowledge, Subscription};
use crate::envelope::{Metadata, RecordedEvent};
use crate::error::{DecodeError, StoreError};
use crate::failpoint;
use crate::projection::{lock, ApplyError, ParkedEvent, Retried, SqliteProjection};
use crate::store::durable::backend;

/// How many times a message whose `#[on]` method fails is tried before it is
/// parked.
const MAX_ATTEMPTS: u32 = 5;

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
) STRICT";
const RECORD: &str = "INSERT INTO eda_inbox (consumer, event_id) VALUES (?1, ?2)
    ON CONFLICT DO NOTHING";
const PARK: &str = "INSERT INTO eda_parked_messages (consumer, event_id, aggregate_type,
    aggregate_id, version, position, name, event_version, payload, metadata, recorded_at,
    error, parked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const PARKED: &str = "SELECT event_id, aggregate_type, aggregate_id, version, position, name,
    event_version, payload, metadata, recorded_at, error, parked_at
    FROM eda_parked_messages WHERE consumer = ?1 ORDER BY seq";
const UNPARK: &str = "DELETE FROM eda_parked_messages WHERE consumer = ?1 AND event_id = ?2";
const STILL_FAILS: &str =
    "UPDATE eda_parked_messages SET error = ?3 WHERE consumer = ?1 AND event_id = ?2";

/// A consumer of `subscription`'s messages into `projection`, a SQLite read
/// model: call [`database`](ConsumerBuilder::database), then
/// [`start`](ConsumerBuilder::start). `name` keeps its inbox and its parked
/// messages apart from other consumers' in the same database.
pub fn consume<P, S>(name: &'static str, projection: P, subscription: S) -> ConsumerBuilder<P, S>
where
    P: SqliteProjection,
    S: Subscription,
{
    ConsumerBuilder {
        name,
        projection,
        subscription,
        path: None,
        keep_trying: false,
    }
}

/// A consumer about to be started: [`consume`].
#[must_use = "a consumer does nothing until it is started"]
pub struct ConsumerBuilder<P, S> {
    name: &'static str,
    projection: P,
    subscription: S,
    path: Option<PathBuf>,
    keep_trying: bool,
}

impl<P: fmt::Debug, S> fmt::Debug for ConsumerBuilder<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("name", &self.name)
            .field("projection", &self.projection)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<P: SqliteProjection, S: Subscription> ConsumerBuilder<P, S> {
    /// The SQLite file of the read model, its inbox and its parked messages
    /// (created if missing).
    pub fn database(mut self, path: impl AsRef<Path>) -> Self {
        self.path = Some(path.as_ref().to_owned());
        self
    }

    /// Tries a message whose `#[on]` method fails again until it succeeds
    /// (pausing 10 ms doubling to 5 s between tries), holding back the
    /// messages after it, instead of parking it after 5 tries: for a method
    /// that depends on another service (a query to the producer) that comes
    /// back. A message that cannot be decoded is still parked at once.
    pub fn keep_trying(mut self) -> Self {
        self.keep_trying = true;
        self
    }

    /// Opens the database (creating the inbox's tables) and starts the
    /// consumer on a task of its own.
    ///
    /// # Errors
    /// No database was given, or it cannot be opened.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub async fn start(self) -> Result<ConsumerHandle<P>, StoreError> {
        let path = self.path.ok_or_else(|| StoreError::Invalid {
            what: "consumer",
            reason: format!("`{}` needs a database: call .database(path)", self.name),
        })?;
        let name = self.name;
        let db = tokio::task::spawn_blocking(move || InboxDb::open(&path, name))
            .await
            .map_err(backend)??;
        let shared = Arc::new(Shared {
            name,
            db: Mutex::new(db),
            projection: Mutex::new(self.projection),
            counts: watch::channel(ConsumerStatus::default()).0,
            keep_trying: self.keep_trying,
            stop: AtomicBool::new(false),
            stopped: tokio::sync::Notify::new(),
        });
        shared.count_parked();
        let task = tokio::spawn(run(Arc::clone(&shared), self.subscription));
        Ok(ConsumerHandle {
            shared,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }
}

/// What a consumer did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// Messages applied to the read model.
    pub applied: u64,
    /// Messages delivered again and dropped by the inbox.
    pub duplicates: u64,
    /// Messages of events the projection has no `#[on]` method for.
    pub skipped: u64,
    /// Messages parked now.
    pub parked: u64,
    /// The last error, while the consumer retries.
    pub retrying: Option<String>,
}

impl ConsumerStatus {
    /// Every message the consumer has handled (and acknowledged or is about
    /// to).
    pub fn handled(&self) -> u64 {
        self.applied + self.duplicates + self.skipped + self.parked
    }
}

/// A started consumer: its status, its parked messages, stopping it.
pub struct ConsumerHandle<P> {
    shared: Arc<Shared<P>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl<P> fmt::Debug for ConsumerHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("name", &self.shared.name)
            .field("status", &*self.shared.counts.borrow())
            .finish_non_exhaustive()
    }
}

impl<P: SqliteProjection> ConsumerHandle<P> {
    /// What the consumer did so far.
    pub fn status(&self) -> ConsumerStatus {
        self.shared.counts.borrow().clone()
    }

    /// Waits until `done` says yes of the consumer's status, at most
    /// `timeout`; the status then, or `None` if the time ran out.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&ConsumerStatus) -> bool,
    ) -> Option<ConsumerStatus> {
        let mut counts = self.shared.counts.subscribe();
        let waited = tokio::time::timeout(timeout, counts.wait_for(|status| done(status))).await;
        match waited {
            Ok(Ok(status)) => Some(status.clone()),
            _ => None,
        }
    }

    /// Stops the consumer after the message it is handling, and waits until
    /// it has.
    pub async fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.stopped.notify_waiters();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The parked messages, in the order they were parked.
    pub async fn parked(&self) -> Result<Vec<ParkedEvent>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let parked = blocking(move || lock(&shared.db).parked(shared.name)).await?;
        Ok(parked
            .into_iter()
            .map(|(event, error, parked_at)| ParkedEvent {
                error,
                parked_at,
                ..ParkedEvent::from_event(&event, "")
            })
            .collect())
    }

    /// Applies the parked messages again, in order, aggregate by aggregate
    /// (after a fix): an aggregate's first message that fails again stays
    /// parked with its new error, and so do its later ones.
    pub async fn retry_parked(&self) -> Result<Retried, StoreError> {
        let shared = Arc::clone(&self.shared);
        let retried = blocking(move || {
            let (mut db, mut projection) = (lock(&shared.db), lock(&shared.projection));
            db.retry_parked(shared.name, &mut *projection)
        })
        .await;
        self.shared.count_parked();
        retried
    }

    /// Removes the parked message of `event_id` without applying it; `false`
    /// if it was not parked.
    pub async fn skip_parked(&self, event_id: Uuid) -> Result<bool, StoreError> {
        let shared = Arc::clone(&self.shared);
        let skipped = blocking(move || {
            let mut db = lock(&shared.db);
            let deleted = db
                .connection
                .execute(UNPARK, (shared.name, event_id.to_string()));
            let deleted = deleted.map_err(backend)?;
            db.count_parked(shared.name)?;
            Ok(deleted > 0)
        })
        .await;
        self.shared.count_parked();
        skipped
    }
}

/// What the consumer's task and its handle share.
struct Shared<P> {
    name: &'static str,
    db: Mutex<InboxDb>,
    projection: Mutex<P>,
    counts: watch::Sender<ConsumerStatus>,
    keep_trying: bool,
    stop: AtomicBool,
    stopped: tokio::sync::Notify,
}

impl<P> Shared<P> {
    fn count_parked(&self) {
        let parked = lock(&self.db).parked_count;
        self.counts.send_modify(|status| status.parked = parked);
    }
}

/// How handling one message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Duplicate,
    Skipped,
    Parked,
}

/// Why a message was not handled this time.
enum Failed {
    /// Its `#[on]` method failed: try it again, then park it.
    Event(String),
    /// The database failed: try again for as long as it takes.
    Database(StoreError),
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(StoreError::Backend(Box::new(join))))
}

/// The pause before trying a message again: 10 ms doubling to 5 s, half of it
/// random.
fn pause(failures: u32) -> Duration {
    let pause = Duration::from_millis(10)
        .saturating_mul(1 << failures.min(10))
        .min(Duration::from_secs(5));
    pause.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// The consumer's task: each message handled, then acknowledged.
async fn run<P: SqliteProjection, S: Subscription>(shared: Arc<Shared<P>>, mut subscription: S) {
    let mut bus_failures = 0;
    loop {
        let stopped = shared.stopped.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let delivery = tokio::select! {
            delivery = subscription.next() => delivery,
            () = stopped => break,
        };
        let delivery = match delivery {
            Ok(delivery) => {
                bus_failures = 0;
                delivery
            }
            Err(error) => {
                bus_failures += 1;
                tracing::warn!(consumer = shared.name, %error, "the subscription failed; retrying");
                tokio::time::sleep(pause(bus_failures)).await;
                continue;
            }
        };
        let event = delivery.message().event.clone();
        let Some(outcome) = handle(&shared, event).await else {
            break;
        };
        shared.counts.send_modify(|status| {
            status.retrying = None;
            match outcome {
                Outcome::Applied => status.applied += 1,
                Outcome::Duplicate => status.duplicates += 1,
                Outcome::Skipped => status.skipped += 1,
                Outcome::Parked => {}
            }
        });
        if outcome == Outcome::Parked {
            shared.count_parked();
        }
        failpoint::hit("consumer.before_ack");
        if let Err(error) = delivery.ack().await {
            // Delivered again later: the inbox drops it then.
            tracing::warn!(consumer = shared.name, %error, "a message could not be acknowledged");
        }
    }
}

/// Handles one message until it is applied, dropped or parked; `None` if the
/// consumer was stopped meanwhile.
async fn handle<P: SqliteProjection>(
    shared: &Arc<Shared<P>>,
    event: RecordedEvent,
) -> Option<Outcome> {
    let event = Arc::new(event);
    let (mut failures, mut db_failures) = (0, 0);
    loop {
        let last_attempt = !shared.keep_trying && failures + 1 >= MAX_ATTEMPTS;
        let (work, message) = (Arc::clone(shared), Arc::clone(&event));
        let handled = tokio::task::spawn_blocking(move || {
            let (mut db, mut projection) = (lock(&work.db), lock(&work.projection));
            db.handle(work.name, &mut *projection, &message, last_attempt)
        })
        .await
        .unwrap_or_else(|join| Err(Failed::Database(StoreError::Backend(Box::new(join)))));
        let (error, pause) = match handled {
            Ok(outcome) => return Some(outcome),
            Err(Failed::Event(error)) => {
                failures += 1;
                (error, pause(failures))
            }
            Err(Failed::Database(error)) => {
                db_failures += 1;
                (error.to_string(), pause(db_failures))
            }
        };
        tracing::warn!(consumer = shared.name, event = %event.event_id, %error, "a message failed; retrying");
        shared
            .counts
            .send_modify(|status| status.retrying = Some(error.clone()));
        let stopped = shared.stopped.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopped => return None,
        }
    }
}

type Stream = (String, String);

/// The read database: its connection, and the aggregates with parked
/// messages (whose later messages are parked too).
struct InboxDb {
    connection: Connection,
    parked: HashMap<Stream, u64>,
    parked_count: u64,
}

impl InboxDb {
    fn open(path: &Path, name: &str) -> Result<InboxDb, StoreError> {
        let connection = Connection::open(path).map_err(backend)?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(backend)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        connection.execute_batch(CREATE).map_err(backend)?;
        let mut db = InboxDb {
            connection,
            parked: HashMap::new(),
            parked_count: 0,
        };
        db.count_parked(name)?;
        Ok(db)
    }

    fn count_parked(&mut self, name: &str) -> Result<(), StoreError> {
        let parked = self.parked(name)?;
        self.parked.clear();
        for (event, _, _) in &parked {
            let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
            *self.parked.entry(stream).or_default() += 1;
        }
        self.parked_count = parked.len() as u64;
        Ok(())
    }

    /// Applies `event` in one transaction with its inbox record, or parks it.
    fn handle<P: SqliteProjection>(
        &mut self,
        name: &str,
        projection: &mut P,
        event: &RecordedEvent,
        last_attempt: bool,
    ) -> Result<Outcome, Failed> {
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|error| Failed::Database(backend(error)))?;
        let without_inbox = failpoint::broken("consumer.without_inbox");
        if !without_inbox {
            let recorded = tx.execute(RECORD, (name, event.event_id.to_string()));
            if recorded.map_err(|error| Failed::Database(backend(error)))? == 0 {
                return Ok(Outcome::Duplicate);
            }
        }
        let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let park = if self.parked.contains_key(&stream) {
            Some("parked behind an earlier parked message of its aggregate".to_owned())
        } else if !P::EVENTS.contains(&event.name.as_str()) {
            tracing::debug!(
                consumer = name,
                event = event.name,
                "no #[on] method: skipped"
            );
            commit(tx)?;
            return Ok(Outcome::Skipped);
        } else {
            match projection.apply(event, &tx) {
                Ok(()) => None,
                Err(ApplyError::Decode(kind)) => {
                    Some(with_causes(&DecodeError::at(&event.as_event_ref(), kind)))
                }
                Err(error) if last_attempt => Some(with_causes(&error)),
                Err(error) => return Err(Failed::Event(with_causes(&error))),
            }
        };
        let Some(error) = park else {
            commit(tx)?;
            return Ok(Outcome::Applied);
        };
        // What the method wrote goes with the rolled-back transaction: a new
        // one holds the inbox record and the park.
        drop(tx);
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|error| Failed::Database(backend(error)))?;
        if !without_inbox {
            tx.execute(RECORD, (name, event.event_id.to_string()))
                .map_err(|error| Failed::Database(backend(error)))?;
        }
        park_in(&tx, name, event, &error).map_err(Failed::Database)?;
        commit(tx)?;
        tracing::warn!(consumer = name, event = %event.event_id, %error, "message parked");
        *self.parked.entry(stream).or_default() += 1;
        self.parked_count += 1;
        Ok(Outcome::Parked)
    }

    /// The parked messages of consumer `name`, in the order they were
    /// parked: each with its error and when it was parked.
    fn parked(
        &self,
        name: &str,
    ) -> Result<Vec<(RecordedEvent, String, DateTime<Utc>)>, StoreError> {
        let mut statement = self.connection.prepare(PARKED).map_err(backend)?;
        let mut rows = statement.query([name]).map_err(backend)?;
        let mut parked = Vec::new();
        while let Some(row) = rows.next().map_err(backend)? {
            parked.push(parked_message(name, row)?);
        }
        Ok(parked)
    }

    fn retry_parked<P: SqliteProjection>(
        &mut self,
        name: &str,
        projection: &mut P,
    ) -> Result<Retried, StoreError> {
        let parked = self.parked(name)?;
        let mut failed: Vec<Stream> = Vec::new();
        let mut applied = 0;
        for (event, _, _) in parked {
            let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
            if failed.contains(&stream) {
                continue;
            }
            let tx = self
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            match projection.apply(&event, &tx) {
                Ok(()) => {
                    tx.execute(UNPARK, (name, event.event_id.to_string()))
                        .map_err(backend)?;
                    tx.commit().map_err(backend)?;
                    applied += 1;
                }
                Err(error) => {
                    drop(tx);
                    self.connection
                        .execute(
                            STILL_FAILS,
                            (name, event.event_id.to_string(), error.to_string()),
                        )
                        .map_err(backend)?;
                    failed.push(stream);
                }
            }
        }
        self.count_parked(name)?;
        Ok(Retried {
            applied,
            parked: self.parked_count,
        })
    }
}

/// `error` and its causes, as one line.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        line = format!("{line}: {error}");
        cause = error.source();
    }
    line
}

fn commit(tx: Transaction<'_>) -> Result<(), Failed> {
    tx.commit()
        .map_err(|error| Failed::Database(backend(error)))
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
fn parked_message(
    name: &str,
    row: &rusqlite::Row<'_>,
) -> Result<(RecordedEvent, String, DateTime<Utc>), StoreError> {
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
    let parked_at = text(11)?.parse().map_err(|_| corrupt("parked at"))?;
    Ok((event, text(10)?, parked_at))
}
