//! A consumer in another service: a read model fed from a bus subscription,
//! with an inbox beside it, in SQLite ([`ConsumerBuilder::database`]) or
//! PostgreSQL ([`ConsumerBuilder::postgres`]).
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
//!
//! The algorithm is written once, async, against [`InboxDb`]: PostgreSQL
//! awaits its driver, SQLite's futures are ready at once (its driver blocks;
//! it runs them on a blocking thread with `pollster`), as the projections'
//! page algorithm does.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use super::{Acknowledge, Subscription};
use crate::envelope::RecordedEvent;
use crate::error::{DecodeError, StoreError};
use crate::failpoint;
use crate::projection::{lock, ApplyError, ParkedEvent, Projection, Retried};
use crate::store::BoxFuture;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PostgresConsumerBuilder;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteConsumerBuilder;

/// How many times a message whose `#[on]` method fails is tried before it is
/// parked.
const MAX_ATTEMPTS: u32 = 5;

/// A consumer of `subscription`'s messages into `projection`, a read model in
/// a database: call [`database`](ConsumerBuilder::database) (SQLite) or
/// [`postgres`](ConsumerBuilder::postgres), then `start`. `name` keeps its
/// inbox and its parked messages apart from other consumers' in the same
/// database.
pub fn consume<P, S>(name: &'static str, projection: P, subscription: S) -> ConsumerBuilder<P, S>
where
    P: Projection,
    S: Subscription,
{
    ConsumerBuilder {
        name,
        projection,
        subscription,
        keep_trying: false,
    }
}

/// A consumer about to be given its database: [`consume`].
#[must_use = "a consumer does nothing until it is started"]
pub struct ConsumerBuilder<P, S> {
    name: &'static str,
    projection: P,
    subscription: S,
    keep_trying: bool,
}

impl<P: fmt::Debug, S> fmt::Debug for ConsumerBuilder<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("name", &self.name)
            .field("projection", &self.projection)
            .field("keep_trying", &self.keep_trying)
            .finish_non_exhaustive()
    }
}

impl<P: Projection, S: Subscription> ConsumerBuilder<P, S> {
    /// Tries a message whose `#[on]` method fails again until it succeeds
    /// (pausing 10 ms doubling to 5 s between tries), holding back the
    /// messages after it, instead of parking it after 5 tries: for a method
    /// that depends on another service (a query to the producer) that comes
    /// back. A message that cannot be decoded is still parked at once.
    pub fn keep_trying(mut self) -> Self {
        self.keep_trying = true;
        self
    }

    /// The projection, and what starts the consumer's task once its backend
    /// holds it.
    fn into_parts(self) -> (P, Starter<S>) {
        let starter = Starter {
            name: self.name,
            subscription: self.subscription,
            keep_trying: self.keep_trying,
        };
        (self.projection, starter)
    }
}

/// Starts a consumer's task on its backend.
struct Starter<S> {
    name: &'static str,
    subscription: S,
    keep_trying: bool,
}

impl<S: Subscription> Starter<S> {
    fn start<P>(self, backend: Box<dyn Backend>) -> ConsumerHandle<P> {
        let shared = Arc::new(Shared {
            name: self.name,
            backend,
            counts: watch::channel(ConsumerStatus::default()).0,
            keep_trying: self.keep_trying,
            stop: AtomicBool::new(false),
            stopped: tokio::sync::Notify::new(),
        });
        shared.count_parked();
        let task = tokio::spawn(run(Arc::clone(&shared), self.subscription));
        ConsumerHandle {
            shared,
            task: Arc::new(Mutex::new(Some(task))),
            projection: PhantomData,
        }
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
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    projection: PhantomData<fn() -> P>,
}

impl<P> fmt::Debug for ConsumerHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("name", &self.shared.name)
            .field("status", &*self.shared.counts.borrow())
            .finish_non_exhaustive()
    }
}

impl<P> ConsumerHandle<P> {
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
        let parked = self.shared.backend.parked().await?;
        Ok(parked
            .into_iter()
            .map(|parked| ParkedEvent {
                error: parked.error,
                parked_at: parked.parked_at,
                ..ParkedEvent::from_event(&parked.event, "")
            })
            .collect())
    }

    /// Applies the parked messages again, in order, aggregate by aggregate
    /// (after a fix): an aggregate's first message that fails again stays
    /// parked with its new error, and so do its later ones.
    pub async fn retry_parked(&self) -> Result<Retried, StoreError> {
        let retried = self.shared.backend.retry_parked().await;
        self.shared.count_parked();
        retried
    }

    /// Removes the parked message of `event_id` without applying it; `false`
    /// if it was not parked.
    pub async fn skip_parked(&self, event_id: Uuid) -> Result<bool, StoreError> {
        let skipped = self.shared.backend.skip(event_id).await;
        self.shared.count_parked();
        skipped
    }
}

/// A parked message: its event, why, and when.
pub(super) struct Parked {
    event: RecordedEvent,
    error: String,
    parked_at: DateTime<Utc>,
}

/// A consumer's database with its projection, as its task and its handle use
/// it.
trait Backend: Send + Sync + 'static {
    /// Handles one message: [`Inbox::handle`].
    fn handle(
        &self,
        event: Arc<RecordedEvent>,
        last_attempt: bool,
    ) -> BoxFuture<'_, Result<Outcome, Failed>>;

    fn parked(&self) -> BoxFuture<'_, Result<Vec<Parked>, StoreError>>;

    fn retry_parked(&self) -> BoxFuture<'_, Result<Retried, StoreError>>;

    fn skip(&self, event_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// How many messages are parked, as last counted.
    fn parked_count(&self) -> u64;
}

/// What the consumer's task and its handle share.
struct Shared {
    name: &'static str,
    backend: Box<dyn Backend>,
    counts: watch::Sender<ConsumerStatus>,
    keep_trying: bool,
    stop: AtomicBool,
    stopped: tokio::sync::Notify,
}

impl Shared {
    fn count_parked(&self) {
        let parked = self.backend.parked_count();
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

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Self {
        Failed::Database(error)
    }
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
async fn run<S: Subscription>(shared: Arc<Shared>, mut subscription: S) {
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
async fn handle(shared: &Arc<Shared>, event: RecordedEvent) -> Option<Outcome> {
    let event = Arc::new(event);
    let (mut failures, mut db_failures) = (0, 0);
    loop {
        let last_attempt = !shared.keep_trying && failures + 1 >= MAX_ATTEMPTS;
        let handled = shared
            .backend
            .handle(Arc::clone(&event), last_attempt)
            .await;
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

/// A consumer's database, as the algorithm uses it: transactions in which `P`
/// applies messages, and the `eda_inbox` and `eda_parked_messages` tables.
trait InboxDb<P> {
    /// An open transaction, rolled back when dropped uncommitted.
    type Tx<'c>
    where
        Self: 'c;

    async fn begin(&mut self) -> Result<Self::Tx<'_>, StoreError>;

    async fn commit(tx: Self::Tx<'_>) -> Result<(), StoreError>;

    /// Records `event_id` in consumer `name`'s inbox; `false` (and no change)
    /// if it was there.
    async fn record(tx: &Self::Tx<'_>, name: &str, event_id: Uuid) -> Result<bool, StoreError>;

    /// Runs `projection`'s `#[on]` method for `event` in `tx`, its writes done
    /// when it returns.
    async fn apply(
        tx: &Self::Tx<'_>,
        projection: &mut P,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError>;

    /// Parks `event`, with `error`.
    async fn park(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Whether consumer `name` has parked messages of `event`'s aggregate (its
    /// own, or another instance's on the same database).
    async fn parked_behind(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
    ) -> Result<bool, StoreError>;

    /// Removes the parked message of `event_id`; `false` if it was not there.
    async fn unpark(tx: &Self::Tx<'_>, name: &str, event_id: Uuid) -> Result<bool, StoreError>;

    /// Keeps the parked message of `event_id`, with a new `error`.
    async fn still_fails(
        &mut self,
        name: &str,
        event_id: Uuid,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Consumer `name`'s parked messages, in the order they were parked.
    async fn parked(&mut self, name: &str) -> Result<Vec<Parked>, StoreError>;
}

type Stream = (String, String);

fn stream_of(event: &RecordedEvent) -> Stream {
    (event.aggregate_type.clone(), event.aggregate_id.clone())
}

/// A consumer's database, and how many of its messages are parked, as last
/// counted.
struct Inbox<D> {
    db: D,
    name: &'static str,
    count: u64,
}

impl<D> Inbox<D> {
    async fn new<P>(db: D, name: &'static str) -> Result<Inbox<D>, StoreError>
    where
        D: InboxDb<P>,
    {
        let mut inbox = Inbox { db, name, count: 0 };
        inbox.count_parked::<P>().await?;
        Ok(inbox)
    }

    async fn count_parked<P>(&mut self) -> Result<Vec<Parked>, StoreError>
    where
        D: InboxDb<P>,
    {
        let parked = self.db.parked(self.name).await?;
        self.count = parked.len() as u64;
        Ok(parked)
    }

    /// Applies `event` in one transaction with its inbox record, or parks it.
    async fn handle<P: Projection>(
        &mut self,
        projection: &mut P,
        event: &RecordedEvent,
        last_attempt: bool,
    ) -> Result<Outcome, Failed>
    where
        D: InboxDb<P>,
    {
        let name = self.name;
        let without_inbox = failpoint::broken("consumer.without_inbox");
        let tx = self.db.begin().await?;
        // Both at once (pipelined, on PostgreSQL). The parks are looked up in
        // the database: instances that share it (and the partitions of a
        // stream) see each other's.
        let (recorded, parked_behind) = tokio::join!(
            async {
                if without_inbox {
                    Ok(true)
                } else {
                    D::record(&tx, name, event.event_id).await
                }
            },
            D::parked_behind(&tx, name, event),
        );
        if !recorded? {
            return Ok(Outcome::Duplicate);
        }
        // The control of the shared-consumers test does not see the parks.
        let parked_behind = parked_behind? && !failpoint::broken("consumer.parks_unseen");
        let park = if parked_behind {
            "parked behind an earlier parked message of its aggregate".to_owned()
        } else if !P::EVENTS.contains(&event.name.as_str()) {
            tracing::debug!(
                consumer = name,
                event = event.name,
                "no #[on] method: skipped"
            );
            D::commit(tx).await?;
            return Ok(Outcome::Skipped);
        } else {
            match D::apply(&tx, projection, event).await {
                Ok(()) => {
                    D::commit(tx).await?;
                    return Ok(Outcome::Applied);
                }
                Err(ApplyError::Decode(kind)) => {
                    with_causes(&DecodeError::at(&event.as_event_ref(), kind))
                }
                Err(error) if last_attempt => with_causes(&error),
                Err(error) => return Err(Failed::Event(with_causes(&error))),
            }
        };
        // What the method wrote goes with the rolled-back transaction: a new
        // one holds the inbox record and the park.
        drop(tx);
        let tx = self.db.begin().await?;
        if !without_inbox {
            D::record(&tx, name, event.event_id).await?;
        }
        D::park(&tx, name, event, &park).await?;
        D::commit(tx).await?;
        tracing::warn!(consumer = name, event = %event.event_id, error = park, "message parked");
        self.count += 1;
        Ok(Outcome::Parked)
    }

    /// The parked messages applied again, in order, aggregate by aggregate.
    async fn retry_parked<P>(&mut self, projection: &mut P) -> Result<Retried, StoreError>
    where
        D: InboxDb<P>,
    {
        let name = self.name;
        let parked = self.db.parked(name).await?;
        let mut failed: Vec<Stream> = Vec::new();
        let mut applied = 0;
        for message in parked {
            let event = &message.event;
            if failed.contains(&stream_of(event)) {
                continue;
            }
            let tx = self.db.begin().await?;
            match D::apply(&tx, projection, event).await {
                Ok(()) => {
                    if D::unpark(&tx, name, event.event_id).await? {
                        D::commit(tx).await?;
                        applied += 1;
                    }
                }
                Err(error) => {
                    drop(tx);
                    let error = with_causes(&error);
                    self.db.still_fails(name, event.event_id, &error).await?;
                    failed.push(stream_of(event));
                }
            }
        }
        self.count_parked::<P>().await?;
        Ok(Retried {
            applied,
            parked: self.count,
        })
    }

    /// Removes the parked message of `event_id`.
    async fn skip<P>(&mut self, event_id: Uuid) -> Result<bool, StoreError>
    where
        D: InboxDb<P>,
    {
        let tx = self.db.begin().await?;
        let removed = D::unpark(&tx, self.name, event_id).await?;
        D::commit(tx).await?;
        self.count_parked::<P>().await?;
        Ok(removed)
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
