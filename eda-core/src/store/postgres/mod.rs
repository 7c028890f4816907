//! The production store: PostgreSQL through a connection pool.
//!
//! # The global log never skips an event
//!
//! With concurrent writers a transaction can commit after another one that took a
//! later position, and a reader that already moved past that position would never
//! see it. Here a position is the appending transaction's id (`xid8`) shifted left
//! by 20 bits, plus the event's index in its append, so positions grow in the order
//! transaction ids were assigned. [`EventStore::read_all`] returns only events whose
//! transaction id is below the oldest transaction still running
//! (`pg_snapshot_xmin(pg_current_snapshot())`): those transactions have all ended,
//! and every transaction that commits later has a larger id, so it cannot land
//! behind a reader's position.
//!
//! The cost: a long-running writing transaction anywhere on the server holds back
//! every event committed after it started until it ends ([`PostgresStore::held_back`]
//! says how many). Positions fit a `bigint` while the server has run fewer than
//! 2^43 (about 8.8 trillion) transactions.
//! The trap: an append must be its transaction's first write, so that the
//! transaction id is taken when the aggregate's version is checked; otherwise two
//! appends to one aggregate could get positions in the opposite order of their
//! versions. [`PostgresStore::append_in`] refuses to append in a transaction that
//! has already written. Batched appends (see [`PostgresOptions::max_batch`]) are
//! safe although they share a transaction: the transaction that wrote the version
//! an append expects committed before that version was read, so before the
//! batch's statement began, and has a smaller id; a later writer of that aggregate
//! makes the append's version check fail.
//!
//! # Runners hear of other writers' appends
//!
//! Each append's statement notifies the channel of the store's schema
//! (`eda.<schema>`) of its last position, delivered when its transaction
//! commits; while runners listen, a connection of the store `LISTEN`s there
//! (see `listen`). A notification can arrive before the horizon passes the
//! event: the runner reads again until it gets there.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use crate::envelope::{
    IdempotencyRecord, Metadata, NewEvent, RecordedEvent, ReplayEvent, Snapshot, StreamId,
};
use crate::error::StoreError;
use crate::projection::ParkedEvent;
use crate::store::durable::{backend, to_i64};
use crate::store::internal::Internal;
use crate::store::{
    check_checkpoint_name, check_idempotency_key, check_names, check_parked, check_stream,
    Appended, EventStore, LogCount, LogPage,
};

mod append;
mod batch;
mod listen;
mod migrate;
mod options;
mod row;
mod sql;

pub use options::PostgresOptions;

use append::{append, append_alone, Append, MAX_EVENTS_PER_APPEND};
use batch::Batcher;
use listen::Listen;
use row::{parked, recorded, replay_event, snapshot_row, SNAPSHOT_IN_REPLAY_ROW, SNAPSHOT_ROW};

/// An [`EventStore`] in PostgreSQL (feature `postgres`).
///
/// Tables, created and migrated on connect: `eda_events` (position, event id,
/// aggregate type and id, version, event name and schema version, payload and
/// metadata as `json`, which keeps the text byte for byte, recorded-at),
/// `eda_aggregates` (current version and last event's position per aggregate, the
/// row an append locks), `eda_snapshots`, `eda_idempotency` (each idempotency key
/// and what its command stored), `eda_checkpoints` (runners' checkpoints, by
/// name), `eda_parked_events` (the events runners parked, by name and position)
/// and `eda_schema`. An append is one statement, so one round trip: it compare-and-sets
/// the aggregate's version and inserts the events, or does nothing. Concurrent
/// appends share statements (see [`PostgresOptions::max_batch`]). Each append
/// notifies the channel `eda.<schema>` (for a schema name longer than 59
/// bytes, its start and a hash of it) of its last position when it commits, and
/// while projections or policies run, the store keeps one more connection
/// listening there, so that they hear of other processes' appends at once.
///
/// ```no_run
/// use eda::prelude::*;
/// # async fn demo() -> Result<(), eda::StoreError> {
/// let store = eda::PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let app = App::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// The committing tasks' connections, with `lock_timeout` set.
    batch_pool: Pool,
    schema: String,
    batcher: Arc<Batcher>,
    /// The channel appends notify, and the connection listening on it.
    listen: Arc<Listen>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`) with the default options.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to `url`, creating or migrating eda's tables in `options`' schema.
    pub async fn connect_with(
        url: &str,
        options: PostgresOptions,
    ) -> Result<PostgresStore, StoreError> {
        let schema = options.schema;
        let listen = Arc::new(Listen::new(&schema, config(url, &schema)?));
        // The channel the appends notify (see `listen`).
        let notify = format!("-c eda.channel={}", listen.channel);
        let config = config_with(url, &schema, &notify)?;
        let batch_config = config_with(
            url,
            &schema,
            &format!(
                "-c lock_timeout={}ms {notify}",
                options.batch_lock_timeout.as_millis()
            ),
        )?;
        let max_committers = (options.pool_size / 8).max(1);
        let pool = pool_of(config, options.pool_size)?;
        let batch_pool = pool_of(batch_config, max_committers)?;
        let batcher = Arc::new(Batcher::new(max_committers, options.max_batch));
        let store = PostgresStore {
            pool,
            batch_pool,
            schema,
            batcher,
            listen,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The schema holding eda's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// How many committed events [`EventStore::read_all`] does not return yet,
    /// because a transaction that started before they committed is still running.
    pub async fn held_back(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(sql::HELD_BACK, &[])
            .await
            .map_err(backend)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or_default())
    }

    /// Appends inside the caller's transaction, so that the events commit together
    /// with the caller's own writes (a read model, an outbox). The append must be
    /// the transaction's first write (see the module documentation); a transaction
    /// that already wrote gets [`StoreError::NotFirstWrite`] and nothing is appended.
    pub async fn append_in(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        check_names(stream, &events, metadata)?;
        let assigned = transaction
            .query_one(sql::XACT_ID_ASSIGNED, &[&self.listen.channel])
            .await
            .map_err(backend)?;
        if assigned.get::<_, bool>(0) {
            return Err(StoreError::NotFirstWrite);
        }
        let key =
            IdempotencyRecord::of_append(stream, expected_version, events.len(), metadata, None);
        let request = Append {
            stream,
            expected_version,
            events: &events,
            metadata: &serde_json::to_string(metadata).map_err(backend)?,
            key: key.as_ref(),
        };
        let statement = transaction.prepare(request.sql()).await.map_err(backend)?;
        append(transaction, &statement, request).await
    }

    /// One append on its own, on a connection of the main pool (lock waits as the
    /// server's settings say).
    async fn append_alone(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: &[NewEvent],
        metadata: &str,
        key: Option<&IdempotencyRecord>,
    ) -> Result<Appended, StoreError> {
        let client = self.client().await?;
        let request = Append {
            stream,
            expected_version,
            events,
            metadata,
            key,
        };
        append_alone(&client, request).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool::managed::PoolError::Closed => StoreError::Closed,
            e => backend(e),
        })
    }

    /// Runs one of the store's statements (prepared once per connection) on a
    /// pooled connection.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(backend)?;
        client.query(&statement, params).await.map_err(backend)
    }
}

/// The settings of a connection to `url` whose `search_path` is `schema`
/// (checked: it is written into statements).
pub(crate) fn config(url: &str, schema: &str) -> Result<tokio_postgres::Config, StoreError> {
    config_with(url, schema, "")
}

/// [`config`], with `more` server settings (`-c name=value ...`) after the
/// URL's own `options` and the search path.
fn config_with(url: &str, schema: &str, more: &str) -> Result<tokio_postgres::Config, StoreError> {
    let valid = schema
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(StoreError::Invalid {
            what: "schema name",
            reason: format!(
                "`{schema}` is not a lowercase letter or `_` followed by lowercase letters, digits and `_`"
            ),
        });
    }
    let mut config: tokio_postgres::Config = url.parse().map_err(backend)?;
    // The URL's own `options` (a statement_timeout, say) stay; eda's follow.
    let options = [
        config.get_options().unwrap_or_default().trim(),
        &format!("-c search_path={schema}"),
        more,
    ];
    let options: Vec<&str> = options.into_iter().filter(|o| !o.is_empty()).collect();
    config.options(options.join(" "));
    Ok(config)
}

/// A pool of up to `size` connections made with `config`; the most recently used
/// connection is handed out first.
fn pool_of(config: tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .build()
        .map_err(backend)
}

impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        check_names(stream, &events, metadata)?;
        let keyed = metadata.idempotency_key.is_some();
        if events.is_empty()
            || events.len() >= MAX_EVENTS_PER_APPEND
            || self.batcher.max_batch == 1
            || keyed
        {
            // Nothing to batch (the batch statement keeps no key records):
            // answered, or refused, on its own.
            let key = IdempotencyRecord::of_append(
                stream,
                expected_version,
                events.len(),
                metadata,
                None,
            );
            let metadata = serde_json::to_string(metadata).map_err(backend)?;
            return self
                .append_alone(stream, expected_version, &events, &metadata, key.as_ref())
                .await;
        }
        self.append_batched(stream, expected_version, events, metadata)
            .await
    }

    /// Closes both pools (connections in use close when given back) and the
    /// connection listening for appends.
    async fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        self.batch_pool.close();
        self.listen.signal.close().await;
        Ok(())
    }

    fn watch_log(&self, _: Internal) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.listen.subscribe()
    }

    async fn read_stream(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // PostgreSQL refuses such a name outright: the same typed error as appends.
        check_stream(stream)?;
        let (aggregate_type, aggregate_id) = (stream.aggregate_type, stream.aggregate_id);
        let after = to_i64(after_version);
        let rows = self
            .query(sql::READ_STREAM, &[&aggregate_type, &aggregate_id, &after])
            .await?;
        rows.iter().map(recorded).collect()
    }

    async fn read_for_replay(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        // PostgreSQL refuses such a name outright: the same typed error as appends.
        check_stream(stream)?;
        let (aggregate_type, aggregate_id) = (stream.aggregate_type, stream.aggregate_id);
        let (after, limit) = (to_i64(after_version), to_i64(limit as u64));
        let rows = self
            .query(
                sql::READ_FOR_REPLAY,
                &[&aggregate_type, &aggregate_id, &after, &limit],
            )
            .await?;
        rows.iter().map(replay_event).collect()
    }

    async fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (after, limit) = (to_i64(after_position), to_i64(limit as u64));
        let rows = self.query(sql::READ_ALL, &[&after, &limit]).await?;
        rows.iter().map(recorded).collect()
    }

    async fn read_all_of(
        &self,
        after_position: u64,
        limit: usize,
        names: &[&str],
    ) -> Result<LogPage, StoreError> {
        let limit = limit.max(1);
        let (after, max) = (to_i64(after_position), to_i64(limit as u64));
        let rows = self
            .query(sql::READ_ALL_OF, &[&after, &max, &names])
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut horizon = 0_i64;
        for row in &rows {
            horizon = row.try_get(row.len() - 1).map_err(backend)?;
            if row.try_get::<_, Option<i64>>(0).map_err(backend)?.is_some() {
                events.push(recorded(row)?);
            }
        }
        // Everything below the horizon was read.
        let below_horizon = u64::try_from(horizon - 1).unwrap_or_default();
        Ok(LogPage::scanned(
            events,
            limit,
            after_position,
            below_horizon,
        ))
    }

    async fn count_all_of(
        &self,
        after_position: u64,
        names: &[&str],
    ) -> Result<Option<LogCount>, StoreError> {
        let after = to_i64(after_position);
        let rows = self.query(sql::COUNT_ALL_OF, &[&after, &names]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Backend("a count returned no row".into()))?;
        let events: i64 = row.try_get(0).map_err(backend)?;
        let read_to: i64 = row.try_get(1).map_err(backend)?;
        Ok(Some(LogCount::new(
            u64::try_from(events).unwrap_or_default(),
            u64::try_from(read_to)
                .unwrap_or_default()
                .max(after_position),
        )))
    }

    async fn save_snapshot(
        &self,
        stream: StreamId<'_>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        // PostgreSQL refuses such a name outright: the same typed error as appends.
        check_stream(stream)?;
        let (aggregate_type, aggregate_id) = (stream.aggregate_type, stream.aggregate_id);
        let (version, snapshot_version) = (
            to_i64(snapshot.version),
            i64::from(snapshot.snapshot_version),
        );
        // The bits as they are: bigint is signed.
        let fingerprint = snapshot.fingerprint as i64;
        self.query(
            sql::SAVE_SNAPSHOT,
            &[
                &aggregate_type,
                &aggregate_id,
                &version,
                &snapshot_version,
                &snapshot.payload,
                &fingerprint,
            ],
        )
        .await?;
        Ok(())
    }

    /// The snapshot and its tail in one statement: one reply to wait for, and one
    /// view of the data (the tail starts right after the snapshot it comes with).
    async fn read_from_snapshot(
        &self,
        stream: StreamId<'_>,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<ReplayEvent>), StoreError> {
        // PostgreSQL refuses such a name outright: the same typed error as appends.
        check_stream(stream)?;
        let (aggregate_type, aggregate_id) = (stream.aggregate_type, stream.aggregate_id);
        let limit = to_i64(limit as u64);
        let rows = self
            .query(
                sql::READ_FROM_SNAPSHOT,
                &[&aggregate_type, &aggregate_id, &limit],
            )
            .await?;
        let (snapshot, tail) = match rows.split_first() {
            Some((first, tail)) if first.try_get::<_, Option<i64>>(0).ok().flatten().is_none() => {
                (snapshot_row(first, SNAPSHOT_IN_REPLAY_ROW), tail)
            }
            _ => (None, rows.as_slice()),
        };
        let events = tail.iter().map(replay_event).collect::<Result<_, _>>()?;
        Ok((snapshot, events))
    }

    async fn load_snapshot(&self, stream: StreamId<'_>) -> Result<Option<Snapshot>, StoreError> {
        // PostgreSQL refuses such a name outright: the same typed error as appends.
        check_stream(stream)?;
        let (aggregate_type, aggregate_id) = (stream.aggregate_type, stream.aggregate_id);
        let rows = self
            .query(sql::LOAD_SNAPSHOT, &[&aggregate_type, &aggregate_id])
            .await?;
        Ok(rows.first().and_then(|row| snapshot_row(row, SNAPSHOT_ROW)))
    }

    async fn read_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        check_idempotency_key(key)?;
        let rows = self.query(sql::READ_KEY, &[&key]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let corrupt = |what: String| StoreError::Corrupt {
            position: 0,
            what: format!("idempotency key `{key}`: {what}"),
        };
        let version = |i| {
            row.try_get::<_, i64>(i)
                .ok()
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| corrupt("version out of range".into()))
        };
        Ok(Some(IdempotencyRecord {
            key: key.to_owned(),
            aggregate_type: row.try_get(0).map_err(|e| corrupt(e.to_string()))?,
            aggregate_id: row.try_get(1).map_err(|e| corrupt(e.to_string()))?,
            command: row.try_get(2).map_err(|e| corrupt(e.to_string()))?,
            fingerprint: row.try_get(3).map_err(|e| corrupt(e.to_string()))?,
            expected_version: version(4)?,
            version: version(5)?,
            position: row
                .try_get::<_, Option<i64>>(6)
                .map_err(|e| corrupt(e.to_string()))?
                .and_then(|p| u64::try_from(p).ok()),
        }))
    }

    async fn read_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        check_checkpoint_name(name)?;
        let rows = self.query(sql::READ_CHECKPOINT, &[&name]).await?;
        rows.first()
            .map(|row| {
                let position: i64 = row.try_get(0).map_err(backend)?;
                u64::try_from(position).map_err(|_| StoreError::Corrupt {
                    position: 0,
                    what: format!("checkpoint `{name}`: negative position {position}"),
                })
            })
            .transpose()
    }

    /// One statement: an insert that does nothing if the name has a checkpoint,
    /// or an update of the row only at `from`. When it changed nothing, the
    /// checkpoint found is read after it, by another statement.
    async fn write_checkpoint(
        &self,
        name: &str,
        from: Option<u64>,
        to: u64,
    ) -> Result<(), StoreError> {
        check_checkpoint_name(name)?;
        let to = to_i64(to);
        let moved = match from {
            None => self.query(sql::INSERT_CHECKPOINT, &[&name, &to]).await?,
            Some(from) => {
                let from = to_i64(from);
                self.query(sql::MOVE_CHECKPOINT, &[&name, &from, &to])
                    .await?
            }
        };
        if !moved.is_empty() {
            return Ok(());
        }
        Err(StoreError::CheckpointMoved {
            name: name.to_owned(),
            expected: from,
            found: self.read_checkpoint(name).await?,
        })
    }

    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
        check_parked(name, event)?;
        let position = to_i64(event.position);
        self.query(
            sql::PARK,
            &[
                &name,
                &position,
                &event.event_id,
                &event.aggregate_type,
                &event.aggregate_id,
                &event.name,
                &event.error,
                &event.parked_at,
            ],
        )
        .await
        .map(drop)
    }

    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        check_checkpoint_name(name)?;
        let rows = self.query(sql::PARKED, &[&name]).await?;
        rows.iter().map(parked).collect()
    }

    async fn unpark(&self, name: &str, position: u64) -> Result<bool, StoreError> {
        check_checkpoint_name(name)?;
        let position = to_i64(position);
        let removed = self.query(sql::UNPARK, &[&name, &position]).await?;
        Ok(!removed.is_empty())
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let rows = self.query(sql::READ_EVENT, &[&event_id]).await?;
        rows.first().map(recorded).transpose()
    }
}
