//! The PostgreSQL side of consumers: the read model, its inbox and its parked
//! messages in a PostgreSQL schema; each message handled on the consumer's
//! task, through its own connection (opened again if it closes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use super::{Backend, ConsumerBuilder, ConsumerHandle, Failed, Inbox, InboxDb, Outcome, Parked};
use crate::bus::Subscription;
use crate::envelope::{Metadata, RecordedEvent};
use crate::error::StoreError;
use crate::projection::postgres::batch::Prepared;
use crate::projection::{ApplyError, PostgresBatch, PostgresProjection, Retried};
use crate::store::durable::{backend, to_i64};
use crate::store::BoxFuture;

/// The tables, created if missing (one creator at a time: `IF NOT EXISTS`
/// alone races in the catalog).
fn create(schema: &str) -> String {
    format!(
        "SELECT pg_advisory_xact_lock(hashtext('eda.inbox'));
         CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.eda_inbox (
             consumer text NOT NULL,
             event_id uuid NOT NULL,
             PRIMARY KEY (consumer, event_id)
         );
         CREATE TABLE IF NOT EXISTS {schema}.eda_parked_messages (
             seq bigserial PRIMARY KEY,
             consumer text NOT NULL,
             event_id uuid NOT NULL,
             aggregate_type text NOT NULL,
             aggregate_id text NOT NULL,
             version bigint NOT NULL,
             position bigint NOT NULL,
             name text NOT NULL,
             event_version bigint NOT NULL,
             payload text NOT NULL,
             metadata text NOT NULL,
             recorded_at timestamptz NOT NULL,
             error text NOT NULL,
             parked_at timestamptz NOT NULL DEFAULT now(),
             UNIQUE (consumer, event_id)
         );
         CREATE INDEX IF NOT EXISTS eda_parked_messages_stream
             ON {schema}.eda_parked_messages (consumer, aggregate_type, aggregate_id)"
    )
}

const RECORD: &str = "INSERT INTO eda_inbox (consumer, event_id) VALUES ($1, $2)
    ON CONFLICT DO NOTHING";
const PARK: &str = "INSERT INTO eda_parked_messages (consumer, event_id, aggregate_type,
    aggregate_id, version, position, name, event_version, payload, metadata, recorded_at, error)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
const PARKED: &str = "SELECT event_id, aggregate_type, aggregate_id, version, position, name,
    event_version, payload, metadata, recorded_at, error, parked_at
    FROM eda_parked_messages WHERE consumer = $1 ORDER BY seq";
const UNPARK: &str = "DELETE FROM eda_parked_messages WHERE consumer = $1 AND event_id = $2";
const PARKED_BEHIND: &str = "SELECT EXISTS (SELECT 1 FROM eda_parked_messages
    WHERE consumer = $1 AND aggregate_type = $2 AND aggregate_id = $3)";
const STILL_FAILS: &str =
    "UPDATE eda_parked_messages SET error = $3 WHERE consumer = $1 AND event_id = $2";

impl<P: PostgresProjection, S: Subscription> ConsumerBuilder<P, S> {
    /// The PostgreSQL database of the read model, its inbox and its parked
    /// messages, by URL (as [`PostgresStore::connect`](crate::PostgresStore::connect)
    /// takes), in schema `public` unless [`schema`](PostgresConsumerBuilder::schema)
    /// says otherwise.
    pub fn postgres(self, url: impl Into<String>) -> PostgresConsumerBuilder<P, S> {
        PostgresConsumerBuilder {
            builder: self,
            url: url.into(),
            schema: "public".into(),
        }
    }
}

/// A consumer into a PostgreSQL read model, about to be started:
/// [`ConsumerBuilder::postgres`].
#[must_use = "a consumer does nothing until it is started"]
pub struct PostgresConsumerBuilder<P, S> {
    builder: ConsumerBuilder<P, S>,
    url: String,
    schema: String,
}

impl<P: std::fmt::Debug, S> std::fmt::Debug for PostgresConsumerBuilder<P, S> {
    // Not the URL: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConsumerBuilder")
            .field("builder", &self.builder)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl<P: PostgresProjection, S: Subscription> PostgresConsumerBuilder<P, S> {
    /// The schema (created if missing) of the inbox's tables, and the search
    /// path of the `#[on]` methods' transactions. Default: `public`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Connects (creating the inbox's tables) and starts the consumer on a
    /// task of its own.
    ///
    /// # Errors
    /// The URL or the schema name is not valid, or the database cannot be
    /// reached.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub async fn start(self) -> Result<ConsumerHandle<P>, StoreError> {
        let config = crate::store::postgres::config(&self.url, &self.schema)?;
        let db = PgInbox::connect(config, self.schema).await?;
        let (projection, starter) = self.builder.into_parts();
        let inbox = Inbox::new::<P>(db, starter.name).await?;
        let backend = PostgresBackend::spawn(inbox, projection)?;
        Ok(starter.start(Box::new(backend)))
    }
}

/// The consumer's connection.
struct PgInbox {
    config: tokio_postgres::Config,
    schema: String,
    client: Client,
    /// What the `#[on]` methods queued, prepared.
    prepared: Prepared,
}

impl PgInbox {
    async fn connect(config: tokio_postgres::Config, schema: String) -> Result<Self, StoreError> {
        let client = Self::client(&config, &schema).await?;
        Ok(PgInbox {
            config,
            schema,
            client,
            prepared: Prepared::new(),
        })
    }

    async fn client(config: &tokio_postgres::Config, schema: &str) -> Result<Client, StoreError> {
        let (mut client, connection) = config.connect(NoTls).await.map_err(backend)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a consumer's connection closed");
            }
        });
        let tx = client.transaction().await.map_err(backend)?;
        tx.batch_execute(&create(schema)).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(client)
    }

    /// Opens the connection again if it closed.
    async fn connected(&mut self) -> Result<(), StoreError> {
        if self.client.is_closed() {
            self.client = Self::client(&self.config, &self.schema).await?;
            self.prepared.clear();
        }
        Ok(())
    }
}

/// What the consumer's task and its handle ask of the thread that holds the
/// connection.
enum Request {
    Handle {
        event: Arc<RecordedEvent>,
        last_attempt: bool,
        reply: oneshot::Sender<Result<Outcome, Failed>>,
    },
    Parked(oneshot::Sender<Result<Vec<Parked>, StoreError>>),
    Retry(oneshot::Sender<Result<Retried, StoreError>>),
    Skip {
        event_id: Uuid,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
}

const ENDED: &str = "the consumer's thread ended: an #[on] method panicked";

/// The connection and the projection live on a thread of their own, with a
/// single-threaded runtime that drives them (the `#[on]` methods borrow the
/// projection across their awaits, as a PostgreSQL projection's runner does).
struct PostgresBackend {
    requests: mpsc::UnboundedSender<Request>,
    count: Arc<AtomicU64>,
}

impl PostgresBackend {
    /// Starts the thread with `inbox` and `projection`.
    fn spawn<P: PostgresProjection>(
        mut inbox: Inbox<PgInbox>,
        mut projection: P,
    ) -> Result<PostgresBackend, StoreError> {
        let (requests, mut receiver) = mpsc::unbounded_channel::<Request>();
        let count = Arc::new(AtomicU64::new(inbox.count));
        let counted = Arc::clone(&count);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(backend)?;
        std::thread::Builder::new()
            .name(format!("eda-consumer-{}", inbox.name))
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(request) = receiver.recv().await {
                        let connected = inbox.db.connected().await;
                        match request {
                            Request::Handle {
                                event,
                                last_attempt,
                                reply,
                            } => {
                                let handled = match connected {
                                    Ok(()) => {
                                        inbox.handle(&mut projection, &event, last_attempt).await
                                    }
                                    Err(error) => Err(error.into()),
                                };
                                counted.store(inbox.count, Ordering::Relaxed);
                                drop(reply.send(handled));
                            }
                            Request::Parked(reply) => {
                                let parked = match connected {
                                    Ok(()) => inbox.count_parked::<P>().await,
                                    Err(error) => Err(error),
                                };
                                counted.store(inbox.count, Ordering::Relaxed);
                                drop(reply.send(parked));
                            }
                            Request::Retry(reply) => {
                                let retried = match connected {
                                    Ok(()) => inbox.retry_parked(&mut projection).await,
                                    Err(error) => Err(error),
                                };
                                counted.store(inbox.count, Ordering::Relaxed);
                                drop(reply.send(retried));
                            }
                            Request::Skip { event_id, reply } => {
                                let skipped = match connected {
                                    Ok(()) => inbox.skip::<P>(event_id).await,
                                    Err(error) => Err(error),
                                };
                                counted.store(inbox.count, Ordering::Relaxed);
                                drop(reply.send(skipped));
                            }
                        }
                    }
                });
            })
            .map_err(backend)?;
        Ok(PostgresBackend { requests, count })
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ended = || StoreError::Backend(ENDED.into());
        self.requests.send(request(reply)).map_err(|_| ended())?;
        answer.await.map_err(|_| ended())
    }
}

impl Backend for PostgresBackend {
    fn handle(
        &self,
        event: Arc<RecordedEvent>,
        last_attempt: bool,
    ) -> BoxFuture<'_, Result<Outcome, Failed>> {
        Box::pin(async move {
            let request = |reply| Request::Handle {
                event,
                last_attempt,
                reply,
            };
            self.ask(request).await?
        })
    }

    fn parked(&self) -> BoxFuture<'_, Result<Vec<Parked>, StoreError>> {
        Box::pin(async move { self.ask(Request::Parked).await? })
    }

    fn retry_parked(&self) -> BoxFuture<'_, Result<Retried, StoreError>> {
        Box::pin(async move { self.ask(Request::Retry).await? })
    }

    fn skip(&self, event_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { self.ask(|reply| Request::Skip { event_id, reply }).await? })
    }

    fn parked_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl<P: PostgresProjection> InboxDb<P> for PgInbox {
    type Tx<'c> = PostgresBatch<'c>;

    async fn begin(&mut self) -> Result<Self::Tx<'_>, StoreError> {
        let PgInbox {
            client, prepared, ..
        } = self;
        let tx = client.transaction().await.map_err(backend)?;
        Ok(PostgresBatch::new(tx, prepared))
    }

    async fn commit(tx: Self::Tx<'_>) -> Result<(), StoreError> {
        if let Err((_, error)) = tx.finish().await {
            return Err(StoreError::Backend(Box::new(error)));
        }
        tx.into_transaction().commit().await.map_err(backend)
    }

    async fn record(tx: &Self::Tx<'_>, name: &str, event_id: Uuid) -> Result<bool, StoreError> {
        let record = tx.prepare(RECORD).await.map_err(backend)?;
        let recorded = tx.raw().execute(&record, &[&name, &event_id]).await;
        Ok(recorded.map_err(backend)? == 1)
    }

    async fn apply(
        tx: &Self::Tx<'_>,
        projection: &mut P,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        projection.apply(event, tx).await?;
        tx.finish().await.map_err(|(_, error)| error)
    }

    async fn parked_behind(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
    ) -> Result<bool, StoreError> {
        let parked_behind = tx.prepare(PARKED_BEHIND).await.map_err(backend)?;
        let stream: [&(dyn ToSql + Sync); 3] = [&name, &event.aggregate_type, &event.aggregate_id];
        let row = tx.raw().query_one(&parked_behind, &stream).await;
        Ok(row.map_err(backend)?.get(0))
    }

    async fn park(
        tx: &Self::Tx<'_>,
        name: &str,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), StoreError> {
        let metadata = serde_json::to_string(&event.metadata).map_err(backend)?;
        let error = error.replace('\0', "\u{fffd}");
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
            &name,
            &event.event_id,
            &event.aggregate_type,
            &event.aggregate_id,
            &to_i64(event.version),
            &to_i64(event.position),
            &event.name,
            &i64::from(event.event_version),
            &event.payload,
            &metadata,
            &event.recorded_at,
            &error,
        ];
        let parked = tx.raw().execute(PARK, &params).await;
        parked.map(drop).map_err(backend)
    }

    async fn unpark(tx: &Self::Tx<'_>, name: &str, event_id: Uuid) -> Result<bool, StoreError> {
        let deleted = tx.raw().execute(UNPARK, &[&name, &event_id]).await;
        Ok(deleted.map_err(backend)? > 0)
    }

    async fn still_fails(
        &mut self,
        name: &str,
        event_id: Uuid,
        error: &str,
    ) -> Result<(), StoreError> {
        let updated = self
            .client
            .execute(STILL_FAILS, &[&name, &event_id, &error])
            .await;
        updated.map(drop).map_err(backend)
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<Parked>, StoreError> {
        let rows = self.client.query(PARKED, &[&name]).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let position: i64 = row.get(4);
                let corrupt = |what: &str| StoreError::Corrupt {
                    position: u64::try_from(position).unwrap_or_default(),
                    what: format!("a parked message of `{name}`: {what}"),
                };
                let metadata: String = row.get(8);
                let event = RecordedEvent {
                    event_id: row.get(0),
                    aggregate_type: row.get(1),
                    aggregate_id: row.get(2),
                    version: u64::try_from(row.get::<_, i64>(3)).map_err(|_| corrupt("version"))?,
                    position: u64::try_from(position).map_err(|_| corrupt("position"))?,
                    name: row.get(5),
                    event_version: u32::try_from(row.get::<_, i64>(6))
                        .map_err(|_| corrupt("schema version"))?,
                    payload: row.get(7),
                    metadata: serde_json::from_str::<Metadata>(&metadata)
                        .map_err(|_| corrupt("metadata"))?,
                    recorded_at: row.get(9),
                };
                Ok(Parked {
                    event,
                    error: row.get(10),
                    parked_at: row.get(11),
                })
            })
            .collect()
    }
}
