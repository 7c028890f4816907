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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, NoTls, Row, Statement};
use uuid::Uuid;

use crate::envelope::{
    IdempotencyRecord, Metadata, NewEvent, RecordedEvent, ReplayEvent, Snapshot, StreamId,
};
use crate::error::StoreError;
use crate::store::durable::{backend, to_i64, AppendRequest};
use crate::store::{check_idempotency_key, check_names, check_stream, Appended, EventStore};

/// The schema version this code creates and reads.
const SCHEMA_VERSION: i32 = 4;

/// Settings of a [`PostgresStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresOptions {
    schema: String,
    pool_size: usize,
    max_batch: usize,
    batch_lock_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "public".into(),
            pool_size: 16,
            max_batch: 64,
            batch_lock_timeout: Duration::from_millis(100),
        }
    }
}

impl PostgresOptions {
    /// Default settings: schema `public`, 16 pooled connections, batches of up to
    /// 64 appends.
    pub fn new() -> Self {
        Self::default()
    }

    /// The PostgreSQL schema that holds eda's tables (created if missing): lowercase
    /// letters, digits and `_`, starting with a letter or `_`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections the pool opens. Default: 16.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// The most appends one statement commits together. Default: 64; 1 sends each
    /// append on its own.
    ///
    /// Appends from concurrent callers queue for a few committing tasks (one per 8
    /// pooled connections, at least one); each takes every append waiting and
    /// commits them in one statement and one transaction, where each append still
    /// succeeds or conflicts on its own. The only append in flight (a sequential
    /// caller's) is sent from its caller's task, without waiting for another.
    /// An append whose event id is stored already fails the shared statement; its
    /// batch is then committed append by append.
    pub fn max_batch(mut self, appends: usize) -> Self {
        self.max_batch = appends.max(1);
        self
    }

    /// How long a batch of appends waits for a row lock held by another
    /// connection (PostgreSQL's `lock_timeout` on the committing connections)
    /// before it gives up and each of its appends is sent on its own. Default:
    /// 100 ms. Without a bound, one aggregate locked by a long transaction
    /// elsewhere (an [`PostgresStore::append_in`] that takes its time) would stall
    /// every append batched with it; this way only the append to that aggregate
    /// waits, as it would have on its own.
    pub fn batch_lock_timeout(mut self, timeout: Duration) -> Self {
        self.batch_lock_timeout = timeout.max(Duration::from_millis(1));
        self
    }
}

/// An [`EventStore`] in PostgreSQL (feature `postgres`).
///
/// Tables, created and migrated on connect: `eda_events` (position, event id,
/// aggregate type and id, version, event name and schema version, payload and
/// metadata as `json`, which keeps the text byte for byte, recorded-at),
/// `eda_aggregates` (current version and last event's position per aggregate, the
/// row an append locks), `eda_snapshots`, `eda_idempotency` (each idempotency key
/// and what its command stored) and `eda_schema`. An append is one statement, so one round trip: it compare-and-sets
/// the aggregate's version and inserts the events, or does nothing. Concurrent
/// appends share statements (see [`PostgresOptions::max_batch`]).
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
        let given = config.get_options().unwrap_or_default().trim().to_owned();
        let with_given = |ours: String| match given.as_str() {
            "" => ours,
            given => format!("{given} {ours}"),
        };
        config.options(with_given(format!("-c search_path={schema}")));
        let mut batch_config = config.clone();
        batch_config.options(with_given(format!(
            "-c search_path={schema} -c lock_timeout={}ms",
            options.batch_lock_timeout.as_millis()
        )));
        let max_committers = (options.pool_size / 8).max(1);
        let pool = pool_of(config, options.pool_size)?;
        let batch_pool = pool_of(batch_config, max_committers)?;
        let batcher = Arc::new(Batcher {
            state: Mutex::new(BatchState::default()),
            max_committers,
            max_batch: options.max_batch,
        });
        let store = PostgresStore {
            pool,
            batch_pool,
            schema,
            batcher,
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
            .query_one(
                "SELECT count(*) FROM eda_events \
                 WHERE position >= (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)",
                &[],
            )
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
            .query_one("SELECT pg_current_xact_id_if_assigned() IS NOT NULL", &[])
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

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Concurrent openers migrate one at a time.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('eda.migrate'))", &[])
            .await
            .map_err(backend)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE IF NOT EXISTS {schema}.eda_schema (version integer NOT NULL)",
            schema = self.schema
        ))
        .await
        .map_err(backend)?;
        let found: Option<i32> = tx
            .query_one("SELECT max(version) FROM eda_schema", &[])
            .await
            .map_err(backend)?
            .get(0);
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::IncompatibleSchema {
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION.unsigned_abs(),
            });
        }
        if found < 1 {
            tx.batch_execute(
                "CREATE TABLE eda_events (
                     position bigint PRIMARY KEY,
                     event_id uuid NOT NULL UNIQUE,
                     aggregate_type text NOT NULL,
                     aggregate_id text NOT NULL,
                     version bigint NOT NULL,
                     name text NOT NULL,
                     event_version integer NOT NULL,
                     payload jsonb NOT NULL,
                     metadata jsonb NOT NULL,
                     recorded_at timestamptz NOT NULL DEFAULT now(),
                     UNIQUE (aggregate_type, aggregate_id, version)
                 );
                 CREATE TABLE eda_aggregates (
                     aggregate_type text NOT NULL,
                     aggregate_id text NOT NULL,
                     version bigint NOT NULL,
                     PRIMARY KEY (aggregate_type, aggregate_id)
                 );
                 DELETE FROM eda_schema;
                 INSERT INTO eda_schema (version) VALUES (1);",
            )
            .await
            .map_err(backend)?;
        }
        if found < 2 {
            tx.batch_execute(
                "CREATE TABLE eda_snapshots (
                     aggregate_type text NOT NULL,
                     aggregate_id text NOT NULL,
                     version bigint NOT NULL,
                     snapshot_version bigint NOT NULL,
                     payload jsonb NOT NULL,
                     fingerprint bigint NOT NULL,
                     PRIMARY KEY (aggregate_type, aggregate_id)
                 );
                 UPDATE eda_schema SET version = 2;",
            )
            .await
            .map_err(backend)?;
        }
        if found < 3 {
            // Each aggregate's last position, so that a batch of appends can check
            // that it does not place an aggregate's events before earlier ones.
            tx.batch_execute(
                "ALTER TABLE eda_aggregates ADD COLUMN last_position bigint NOT NULL DEFAULT 0;
                 UPDATE eda_aggregates g SET last_position = coalesce(
                     (SELECT max(position) FROM eda_events e
                      WHERE e.aggregate_type = g.aggregate_type AND e.aggregate_id = g.aggregate_id), 0);
                 UPDATE eda_schema SET version = 3;",
            )
            .await
            .map_err(backend)?;
        }
        if found < 4 {
            // `json` keeps the text it is given, byte for byte; `jsonb` rewrote
            // payloads (f64::MAX as a 309-digit integer, keys sorted, -0.0 as 0)
            // and refused `\u0000`. Payloads stored as `jsonb` before keep the
            // rewritten text. The key records remember each idempotency key's
            // outcome, no-ops included; the keys of stored events are filled in
            // (those of earlier no-ops were never stored).
            tx.batch_execute(
                "ALTER TABLE eda_events ALTER COLUMN payload TYPE json USING payload::text::json,
                                        ALTER COLUMN metadata TYPE json USING metadata::text::json;
                 ALTER TABLE eda_snapshots ALTER COLUMN payload TYPE json USING payload::text::json;
                 CREATE TABLE eda_idempotency (
                     key text PRIMARY KEY,
                     aggregate_type text NOT NULL,
                     aggregate_id text NOT NULL,
                     command text NOT NULL,
                     fingerprint uuid,
                     expected_version bigint NOT NULL,
                     version bigint NOT NULL,
                     position bigint,
                     recorded_at timestamptz NOT NULL DEFAULT now()
                 );
                 INSERT INTO eda_idempotency
                     (key, aggregate_type, aggregate_id, command, expected_version, version, position)
                 SELECT metadata->>'idempotency_key', min(aggregate_type), min(aggregate_id),
                        coalesce(min(metadata->>'command'), ''), min(version) - 1, max(version), max(position)
                 FROM eda_events WHERE metadata->>'idempotency_key' IS NOT NULL GROUP BY 1;
                 UPDATE eda_schema SET version = 4;",
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
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

/// A full [`RecordedEvent`]'s columns, in the order [`recorded`] reads them.
macro_rules! columns {
    () => {
        "position, event_id, aggregate_type, aggregate_id, version, name, event_version, \
         payload::text, metadata::text, recorded_at"
    };
}

/// Compare-and-set of the aggregate's version, then the events, in one statement;
/// the CAS is the statement's first write. `$3` is the expected version, `$4` the
/// new one.
/// The aggregate's row also keeps its last event's position.
macro_rules! cas_new {
    () => {
        "WITH cas AS (
            INSERT INTO eda_aggregates (aggregate_type, aggregate_id, version, last_position)
            VALUES ($1, $2, $4, (pg_current_xact_id()::text::bigint << 20) | ($4::bigint - $3::bigint))
            ON CONFLICT DO NOTHING
            RETURNING version
        )"
    };
}
macro_rules! cas_existing {
    () => {
        "WITH cas AS (
            UPDATE eda_aggregates
            SET version = $4, last_position = (pg_current_xact_id()::text::bigint << 20) | ($4::bigint - $3::bigint)
            WHERE aggregate_type = $1 AND aggregate_id = $2 AND version = $3
            RETURNING version
        )"
    };
}
/// Any number of events, as arrays (`$5` ids, `$6` names, `$7` schema versions,
/// `$8` payloads); `$9` is the metadata.
macro_rules! insert_many {
    () => {
        ", ins AS (
            INSERT INTO eda_events
                (position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata)
            SELECT (pg_current_xact_id()::text::bigint << 20) | e.ord, e.id, $1, $2, $3 + e.ord,
                   e.name, e.event_version, e.payload::json, $9::text::json
            FROM unnest($5::uuid[], $6::text[], $7::int4[], $8::text[])
                 WITH ORDINALITY AS e(id, name, event_version, payload, ord)
            WHERE EXISTS (SELECT 1 FROM cas)
            RETURNING position
        )"
    };
}
/// The idempotency key's record (`$10` key, `$11` command, `$12` fingerprint),
/// kept if the compare-and-set succeeded.
macro_rules! keep_key {
    () => {
        ", rec AS (
            INSERT INTO eda_idempotency
                (key, aggregate_type, aggregate_id, command, fingerprint, expected_version, version, position)
            SELECT $10, $1, $2, $11, $12, $3, $4, (SELECT max(position) FROM ins) FROM cas
        )"
    };
}
/// One row: how many CAS rows (0 is a conflict) and the last position.
macro_rules! many_result {
    () => {
        "
        SELECT (SELECT count(*) FROM cas), (SELECT max(position) FROM ins)"
    };
}
/// The common case, one event, without arrays (less work for the server and the
/// client): the same parameters as scalars. Its position, or no row on a conflict.
macro_rules! insert_one {
    () => {
        "
        INSERT INTO eda_events
            (position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata)
        SELECT (pg_current_xact_id()::text::bigint << 20) | 1, $5, $1, $2, $3::bigint + 1,
               $6, $7, $8::text::json, $9::text::json
        FROM cas
        RETURNING position"
    };
}

/// A keyed command that appends nothing: its key's record, kept only if the
/// aggregate is still at the expected version (`$3`; `$4` key, `$5` command, `$6`
/// fingerprint). One row: the aggregate's version and last position.
const KEEP_KEY_ALONE: &str = "WITH cur AS (
        SELECT coalesce(max(version), 0) AS version, max(last_position) AS position
        FROM eda_aggregates WHERE aggregate_type = $1 AND aggregate_id = $2
    ),
    rec AS (
        INSERT INTO eda_idempotency
            (key, aggregate_type, aggregate_id, command, fingerprint, expected_version, version, position)
        SELECT $4, $1, $2, $5, $6, $3, $3, NULL FROM cur WHERE cur.version = $3
    )
    SELECT version, position FROM cur";

/// The append statement for a new aggregate (`expected_version` 0) or an existing
/// one, carrying one event or several, with an idempotency key or without.
fn append_sql(expected_version: u64, events: usize, keyed: bool) -> &'static str {
    match (expected_version == 0, events == 1 && !keyed, keyed) {
        (_, _, true) if events == 0 => KEEP_KEY_ALONE,
        (true, true, _) => concat!(cas_new!(), insert_one!()),
        (true, false, false) => concat!(cas_new!(), insert_many!(), many_result!()),
        (true, false, true) => concat!(cas_new!(), insert_many!(), keep_key!(), many_result!()),
        (false, true, _) => concat!(cas_existing!(), insert_one!()),
        (false, false, false) => concat!(cas_existing!(), insert_many!(), many_result!()),
        (false, false, true) => {
            concat!(cas_existing!(), insert_many!(), keep_key!(), many_result!())
        }
    }
}

/// The most events one append may carry: the low bits of a position.
const MAX_EVENTS_PER_APPEND: usize = 1 << 20;

/// One append, as the statements take it.
#[derive(Clone, Copy)]
struct Append<'a> {
    stream: StreamId<'a>,
    expected_version: u64,
    events: &'a [NewEvent],
    /// JSON text.
    metadata: &'a str,
    key: Option<&'a IdempotencyRecord>,
}

impl<'a> Append<'a> {
    fn of_request<R>(request: &'a AppendRequest<R>) -> Self {
        Append {
            stream: request.stream(),
            expected_version: request.expected_version,
            events: &request.events,
            metadata: &request.metadata,
            key: request.idempotency.as_deref(),
        }
    }

    fn sql(&self) -> &'static str {
        append_sql(self.expected_version, self.events.len(), self.key.is_some())
    }
}

/// Runs a prepared append statement, the one [`Append::sql`] chose.
async fn append(
    client: &impl GenericClient,
    statement: &Statement,
    request: Append<'_>,
) -> Result<Appended, StoreError> {
    let Append {
        stream,
        expected_version,
        events,
        metadata,
        key,
    } = request;
    if events.len() >= MAX_EVENTS_PER_APPEND {
        return Err(StoreError::TooManyEvents {
            events: events.len(),
            max: MAX_EVENTS_PER_APPEND - 1,
        });
    }
    let expected = to_i64(expected_version);
    let new_version = to_i64(expected_version + events.len() as u64);
    let fingerprint = key.and_then(|k| k.fingerprint);
    let key_params = key.map(|k| (k.key.as_str(), k.command.as_str()));
    let row = if events.is_empty() {
        let row =
            match key_params {
                Some((key, command)) => {
                    let params: [&(dyn ToSql + Sync); 6] = [
                        &stream.aggregate_type,
                        &stream.aggregate_id,
                        &expected,
                        &key,
                        &command,
                        &fingerprint,
                    ];
                    client.query_one(statement, &params).await
                }
                None => client
                    .query_one(
                        "SELECT coalesce(max(version), 0), max(last_position) FROM eda_aggregates
                     WHERE aggregate_type = $1 AND aggregate_id = $2",
                        &[&stream.aggregate_type, &stream.aggregate_id],
                    )
                    .await,
            };
        let row = row.map_err(|e| append_error(e, request))?;
        let actual = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        if actual != expected_version {
            return Err(StoreError::conflict(stream, expected_version, actual));
        }
        let position: Option<i64> = row.get(1);
        return Ok(Appended {
            version: actual,
            position: position.map_or(0, |p| u64::try_from(p).unwrap_or(0)),
        });
    } else if let ([event], None) = (events, key_params) {
        let params: [&(dyn ToSql + Sync); 9] = [
            &stream.aggregate_type,
            &stream.aggregate_id,
            &expected,
            &new_version,
            &event.event_id,
            &event.name.as_ref(),
            &i32::try_from(event.version).unwrap_or(i32::MAX),
            &event.payload.as_str(),
            &metadata,
        ];
        client.query_opt(statement, &params).await
    } else {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let names: Vec<&str> = events.iter().map(|e| e.name.as_ref()).collect();
        let versions: Vec<i32> = events
            .iter()
            .map(|e| i32::try_from(e.version).unwrap_or(i32::MAX))
            .collect();
        let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &stream.aggregate_type,
            &stream.aggregate_id,
            &expected,
            &new_version,
            &ids,
            &names,
            &versions,
            &payloads,
            &metadata,
        ];
        let (key, command) = key_params.unzip();
        if key.is_some() {
            params.extend([&key as &(dyn ToSql + Sync), &command, &fingerprint]);
        }
        // One row: (CAS rows, last position); no CAS row is a conflict.
        client
            .query_one(statement, &params)
            .await
            .map(|row| (row.get::<_, i64>(0) > 0).then_some(row))
    };
    let row = match row {
        Ok(row) => row,
        Err(e) => {
            return Err(match append_error(e, request) {
                // Another first append to the same new aggregate won: report the
                // version it left (if this connection can still ask).
                StoreError::Conflict { .. } => {
                    let actual = current_version(client, stream)
                        .await
                        .unwrap_or(expected_version + 1);
                    StoreError::conflict(stream, expected_version, actual)
                }
                other => other,
            });
        }
    };
    let Some(row) = row else {
        let actual = current_version(client, stream).await?;
        return Err(StoreError::conflict(stream, expected_version, actual));
    };
    let position: i64 = row.get(if statement.columns().len() == 1 { 0 } else { 1 });
    Ok(Appended {
        version: expected_version + events.len() as u64,
        position: u64::try_from(position).unwrap_or(0),
    })
}

/// A unique violation on the event id is a duplicate, on the idempotency key a
/// duplicate key, on the version a conflict (a concurrent first append to a new
/// aggregate).
fn append_error(error: tokio_postgres::Error, request: Append<'_>) -> StoreError {
    if cut_off(&error) {
        return StoreError::OutcomeUnknown {
            source: Some(Box::new(error)),
        };
    }
    let Some(db) = error.as_db_error() else {
        return backend(error);
    };
    if db.code() != &SqlState::UNIQUE_VIOLATION {
        return backend(error);
    }
    let constraint = db.constraint().unwrap_or_default();
    if constraint.contains("event_id") {
        let event_id = db
            .detail()
            .and_then(|d| d.split(")=(").nth(1))
            .and_then(|rest| rest.split(')').next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_default();
        return StoreError::DuplicateEvent { event_id };
    }
    if let (true, Some(key)) = (constraint.contains("eda_idempotency"), request.key) {
        return StoreError::DuplicateKey {
            key: key.key.clone(),
        };
    }
    let expected = request.expected_version;
    StoreError::conflict(request.stream, expected, expected + 1)
}

async fn current_version(
    client: &impl GenericClient,
    stream: StreamId<'_>,
) -> Result<u64, StoreError> {
    let row = client
        .query_opt(
            "SELECT version FROM eda_aggregates WHERE aggregate_type = $1 AND aggregate_id = $2",
            &[&stream.aggregate_type, &stream.aggregate_id],
        )
        .await
        .map_err(backend)?;
    Ok(row.map_or(0, |row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
}

/// Runs one append on its own (the statement [`Append::sql`] picks).
async fn append_alone(
    client: &deadpool_postgres::Client,
    request: Append<'_>,
) -> Result<Appended, StoreError> {
    let statement = client
        .prepare_cached(request.sql())
        .await
        .map_err(backend)?;
    let connection: &tokio_postgres::Client = client;
    append(connection, &statement, request).await
}

/// The appends waiting to be committed and the tasks committing them.
struct Batcher {
    state: Mutex<BatchState>,
    max_committers: usize,
    max_batch: usize,
}

/// An append queued for a committing task.
type Queued = AppendRequest<Answer>;

/// What a committing task answers a queued append.
enum Answer {
    /// Committed, or refused on its own (a conflict).
    Done(Result<Appended, StoreError>),
    /// Not sent, or sent in a statement that failed and was rolled back whole
    /// (another append's bad data, a stored event id, a lock held elsewhere):
    /// the caller sends it on its own, and gets its own answer.
    Alone {
        events: Vec<NewEvent>,
        metadata: String,
    },
}

impl Queued {
    fn answer(self, result: Result<Appended, StoreError>) {
        // A caller that stopped waiting no longer wants the answer.
        let _ = self.reply.send(Answer::Done(result));
    }

    fn send_back(self) {
        let AppendRequest {
            events,
            metadata,
            reply,
            ..
        } = self;
        let _ = reply.send(Answer::Alone { events, metadata });
    }
}

#[derive(Default)]
struct BatchState {
    waiting: Vec<Queued>,
    /// Tasks running [`commit_waiting`].
    committers: usize,
    /// Appends sent by their caller's own task: at most one, when nothing else
    /// is in flight.
    alone: usize,
}

/// Marks the append its caller sends itself until it ends (or is cancelled).
struct Alone<'a>(&'a Batcher);

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        self.0.lock().alone -= 1;
    }
}

/// A committing task's place in [`BatchState::committers`], given back however the
/// task ends: a task dropped mid-commit (its runtime shut down) must not leave
/// the count taken, or no task would ever commit again and every later append
/// would wait forever. Appends still waiting then go back to their callers when
/// no other committing task is left to take them.
struct Committer {
    batcher: Arc<Batcher>,
    /// Cleared when the task gave its place back itself, with the queue empty.
    holds_place: bool,
}

impl Drop for Committer {
    fn drop(&mut self) {
        if !self.holds_place {
            return;
        }
        let mut state = self.batcher.lock();
        state.committers -= 1;
        if state.committers == 0 {
            for waiting in std::mem::take(&mut state.waiting) {
                waiting.send_back();
            }
        }
    }
}

impl Batcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        // The lock guards plain pushes and takes: a panic elsewhere leaves it sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A committing task: takes every append waiting (up to the batch limits),
/// commits them, answers each, and ends when none is left.
async fn commit_waiting(store: PostgresStore, mut place: Committer) {
    loop {
        let batch = {
            let mut state = store.batcher.lock();
            if state.waiting.is_empty() {
                // Under the same lock as the check, so that an append queued
                // right after it starts a new task.
                state.committers -= 1;
                place.holds_place = false;
                return;
            }
            let (mut appends, mut events) = (0, 0);
            let take = state
                .waiting
                .iter()
                .take_while(|pending| {
                    appends += 1;
                    events += pending.events.len();
                    appends == 1
                        || (appends <= store.batcher.max_batch && events < MAX_EVENTS_PER_APPEND)
                })
                .count();
            state.waiting.drain(..take).collect::<Vec<_>>()
        };
        commit_batch(&store, batch).await;
    }
}

/// Commits `batch` on a committing connection (whose lock waits are bounded) and
/// answers each append.
async fn commit_batch(store: &PostgresStore, batch: Vec<Queued>) {
    let Ok(client) = store.batch_pool.get().await else {
        // Nothing was sent: each caller tries on its own, and gets its own error.
        return batch.into_iter().for_each(Queued::send_back);
    };
    if let ([_], Some(request)) = (batch.as_slice(), batch.first()) {
        let result = append_alone(&client, Append::of_request(request)).await;
        let Some(request) = batch.into_iter().next() else {
            return;
        };
        return match result {
            Err(error) if is_lock_timeout(&error) => request.send_back(),
            result => request.answer(result),
        };
    }
    match append_together(&client, &batch).await {
        Ok(answers) => {
            for (request, answer) in batch.into_iter().zip(answers) {
                match answer {
                    Some(result) => request.answer(result),
                    None => request.send_back(),
                }
            }
        }
        Err(BatchFailure::RolledBack) => batch.into_iter().for_each(Queued::send_back),
        Err(BatchFailure::Unknown(error)) => {
            let error = Arc::new(error);
            for request in batch {
                let source = SharedError(Arc::clone(&error));
                request.answer(Err(StoreError::OutcomeUnknown {
                    source: Some(Box::new(source)),
                }));
            }
        }
    }
}

/// Why a batch statement did not give each append its answer.
enum BatchFailure {
    /// Nothing of it is stored (not sent, or failed and rolled back).
    RolledBack,
    /// The connection went down after it was sent: it may have committed.
    Unknown(tokio_postgres::Error),
}

impl BatchFailure {
    fn of(error: tokio_postgres::Error) -> Self {
        if cut_off(&error) {
            BatchFailure::Unknown(error)
        } else {
            BatchFailure::RolledBack
        }
    }
}

/// Whether a statement that was sent failed in a way that leaves its outcome
/// unknown: the connection broke, or the server ended the session (`FATAL`),
/// rather than the statement failing and its transaction rolling back.
fn cut_off(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => matches!(
            db.parsed_severity(),
            Some(tokio_postgres::error::Severity::Fatal | tokio_postgres::error::Severity::Panic)
        ),
        None => true,
    }
}

/// Whether the append waited longer for a row lock than a committing connection
/// may (`lock_timeout`): another connection holds its aggregate.
fn is_lock_timeout(error: &StoreError) -> bool {
    matches!(error, StoreError::Backend(source)
        if source.downcast_ref::<tokio_postgres::Error>().and_then(|e| e.code())
            == Some(&SqlState::LOCK_NOT_AVAILABLE))
}

/// One driver error handed to every append of a batch.
#[derive(Debug)]
struct SharedError(Arc<tokio_postgres::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Several appends in one statement, and so one transaction. Each is a
/// compare-and-set of its aggregate's version: those that match insert their
/// events, the others insert nothing. Positions are the transaction id shifted left
/// by 20 bits plus each event's index in the whole batch. The transaction id is
/// taken at the batch's first write, before some of the version checks; so each
/// check also requires the aggregate's last position to be below this
/// transaction's, or a transaction that began later but committed first could hold
/// the aggregate's earlier events at later positions. (Appends whose expected
/// version was read from the store pass anyway; an append that fails only this
/// check is retried on its own.)
const APPEND_BATCH: &str = "WITH a AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $12::int8[])
            WITH ORDINALITY AS a(aggregate_type, aggregate_id, expected, new_version, metadata, last_index, idx)
    ),
    existing AS (
        UPDATE eda_aggregates g
        SET version = a.new_version,
            last_position = (pg_current_xact_id()::text::bigint << 20) | a.last_index
        FROM a
        WHERE a.expected > 0 AND g.aggregate_type = a.aggregate_type
          AND g.aggregate_id = a.aggregate_id AND g.version = a.expected
          AND g.last_position < (pg_current_xact_id()::text::bigint << 20)
        RETURNING a.idx
    ),
    created AS (
        INSERT INTO eda_aggregates (aggregate_type, aggregate_id, version, last_position)
        SELECT DISTINCT ON (aggregate_type, aggregate_id) aggregate_type, aggregate_id, new_version,
               (pg_current_xact_id()::text::bigint << 20) | last_index
        FROM a WHERE expected = 0
        ORDER BY aggregate_type, aggregate_id, idx
        ON CONFLICT DO NOTHING
        RETURNING aggregate_type, aggregate_id
    ),
    won AS (
        SELECT idx FROM existing
        UNION ALL
        SELECT min(a.idx) FROM a JOIN created USING (aggregate_type, aggregate_id)
        WHERE a.expected = 0
        GROUP BY a.aggregate_type, a.aggregate_id
    ),
    ins AS (
        INSERT INTO eda_events
            (position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata)
        SELECT (pg_current_xact_id()::text::bigint << 20) | e.ord, e.id, a.aggregate_type, a.aggregate_id,
               a.expected + e.n, e.name, e.event_version, e.payload::json, a.metadata::json
        FROM unnest($6::int8[], $7::int8[], $8::uuid[], $9::text[], $10::int4[], $11::text[])
             WITH ORDINALITY AS e(append, n, id, name, event_version, payload, ord)
        JOIN a ON a.idx = e.append
        WHERE e.append IN (SELECT idx FROM won)
    )
    SELECT pg_current_xact_id()::text::bigint, ARRAY(SELECT idx FROM won)";

/// Runs [`APPEND_BATCH`]; a losing append gets the conflict with its aggregate's
/// current version, or `None` if only the order check failed (it is sent again on
/// its own, where it is the transaction's first write and needs no such check).
async fn append_together(
    client: &deadpool_postgres::Client,
    batch: &[Queued],
) -> Result<Vec<Option<Result<Appended, StoreError>>>, BatchFailure> {
    let types: Vec<&str> = batch.iter().map(|p| p.aggregate_type.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|p| p.aggregate_id.as_str()).collect();
    let expected: Vec<i64> = batch.iter().map(|p| to_i64(p.expected_version)).collect();
    let new_versions: Vec<i64> = batch
        .iter()
        .map(|p| to_i64(p.expected_version + p.events.len() as u64))
        .collect();
    let metadata: Vec<&str> = batch.iter().map(|p| p.metadata.as_str()).collect();
    // Each append's last event's index in the batch.
    let last_indexes: Vec<i64> = batch
        .iter()
        .scan(0, |last, p| {
            *last += p.events.len() as i64;
            Some(*last)
        })
        .collect();
    let events = batch.iter().enumerate().flat_map(|(i, p)| {
        p.events
            .iter()
            .enumerate()
            .map(move |(n, event)| (i, n, event))
    });
    let (mut append_of, mut index_in_append, mut event_ids, mut names, mut versions, mut payloads) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (i, n, event) in events {
        append_of.push(i as i64 + 1);
        index_in_append.push(n as i64 + 1);
        event_ids.push(event.event_id);
        names.push(event.name.as_ref());
        versions.push(i32::try_from(event.version).unwrap_or(i32::MAX));
        payloads.push(event.payload.as_str());
    }
    let params: [&(dyn ToSql + Sync); 12] = [
        &types,
        &ids,
        &expected,
        &new_versions,
        &metadata,
        &append_of,
        &index_in_append,
        &event_ids,
        &names,
        &versions,
        &payloads,
        &last_indexes,
    ];
    let statement = client
        .prepare_cached(APPEND_BATCH)
        .await
        .map_err(|_| BatchFailure::RolledBack)?;
    let row = client
        .query_one(&statement, &params)
        .await
        .map_err(BatchFailure::of)?;
    // Committed: a reply that cannot be read leaves each append's outcome unknown.
    let transaction: i64 = row.try_get(0).map_err(BatchFailure::Unknown)?;
    let won: Vec<i64> = row.try_get(1).map_err(BatchFailure::Unknown)?;
    let mut results = Vec::with_capacity(batch.len());
    for ((i, pending), last_index) in batch.iter().enumerate().zip(last_indexes) {
        let stream = pending.stream();
        let connection: &tokio_postgres::Client = client;
        if won.contains(&(i as i64 + 1)) {
            results.push(Some(Ok(Appended {
                version: pending.expected_version + pending.events.len() as u64,
                position: u64::try_from((transaction << 20) | last_index).unwrap_or(0),
            })));
            continue;
        }
        results.push(match current_version(connection, stream).await {
            Ok(actual) if actual == pending.expected_version && actual > 0 => None,
            Ok(actual) => Some(Err(StoreError::conflict(
                stream,
                pending.expected_version,
                actual,
            ))),
            Err(_) => None,
        });
    }
    Ok(results)
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
        let go_alone = {
            let mut state = self.batcher.lock();
            let alone = state.alone == 0 && state.committers == 0 && state.waiting.is_empty();
            state.alone += usize::from(alone);
            alone
        };
        if go_alone {
            // The only append: sent from this task, without a hop to another.
            let _alone = Alone(&self.batcher);
            let metadata = serde_json::to_string(metadata).map_err(backend)?;
            return self
                .append_alone(stream, expected_version, &events, &metadata, None)
                .await;
        }
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest::new(stream, expected_version, events, metadata, reply)?;
        let start_committer = {
            let mut state = self.batcher.lock();
            state.waiting.push(request);
            let start = state.committers < self.batcher.max_committers;
            state.committers += usize::from(start);
            start
        };
        if start_committer {
            // The place is owned before the task exists: a task dropped before
            // it first runs (its runtime shutting down) still gives it back.
            let place = Committer {
                batcher: Arc::clone(&self.batcher),
                holds_place: true,
            };
            tokio::spawn(commit_waiting(self.clone(), place));
        }
        match answer.await {
            Ok(Answer::Done(result)) => result,
            Ok(Answer::Alone { events, metadata }) => {
                self.append_alone(stream, expected_version, &events, &metadata, None)
                    .await
            }
            // The committing task was dropped (its runtime shut down) while this
            // append was in its statement.
            Err(_) => Err(StoreError::OutcomeUnknown { source: None }),
        }
    }

    /// Closes both pools: connections in use close when given back.
    async fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        self.batch_pool.close();
        Ok(())
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
            .query(READ_STREAM, &[&aggregate_type, &aggregate_id, &after])
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
                READ_FOR_REPLAY,
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
        let rows = self.query(READ_ALL, &[&after, &limit]).await?;
        rows.iter().map(recorded).collect()
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
            SAVE_SNAPSHOT,
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
                READ_FROM_SNAPSHOT,
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
            .query(LOAD_SNAPSHOT, &[&aggregate_type, &aggregate_id])
            .await?;
        Ok(rows.first().and_then(|row| snapshot_row(row, SNAPSHOT_ROW)))
    }

    async fn read_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        check_idempotency_key(key)?;
        let rows = self.query(READ_KEY, &[&key]).await?;
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

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let rows = self.query(READ_EVENT, &[&event_id]).await?;
        rows.first().map(recorded).transpose()
    }
}

/// An aggregate's events after a version, in order. `version <= i64::MAX` is
/// always true and is there for the planner: given a lower bound it does not know
/// (a parameter in a generic plan, a version read by the same statement), it
/// expects a third of the aggregate's rows, and once the table's statistics show
/// one aggregate holding most events it may scan the whole table and sort
/// (measured: 1.7 ms instead of 0.04 ms for a 50-event tail of a 10,000-event
/// aggregate, and growing with the table). A range bounded on both sides gets a
/// small estimate, so the index on (aggregate_type, aggregate_id, version) is
/// used. Replay's reads, which stop at a page's `LIMIT`, favour the index anyway.
macro_rules! after_version {
    ($after:literal) => {
        concat!(
            "aggregate_type = $1 AND aggregate_id = $2 AND version > ",
            $after,
            " AND version <= 9223372036854775807"
        )
    };
}

const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE ",
    after_version!("$3"),
    " ORDER BY version"
);

const READ_KEY: &str =
    "SELECT aggregate_type, aggregate_id, command, fingerprint, expected_version,
            version, position FROM eda_idempotency WHERE key = $1";

const READ_EVENT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE event_id = $1"
);

/// The global log after a position, up to the oldest transaction still running
/// (see the module documentation).
const READ_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE position > $1 \
       AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20) \
     ORDER BY position LIMIT $2"
);

/// Replay's columns only (no metadata to convert and parse, no stream name per
/// row), at most `$4` events.
const READ_FOR_REPLAY: &str = concat!(
    "SELECT position, version, payload::text, name, event_version FROM eda_events WHERE ",
    after_version!("$3"),
    " ORDER BY version LIMIT $4"
);

/// The snapshot's row (no position; [`SNAPSHOT_IN_REPLAY_ROW`]), then at most `$3`
/// events from the snapshot's version on in [`READ_FOR_REPLAY`]'s columns. The
/// snapshot comes first: its version is its first event's, and its position null.
const READ_FROM_SNAPSHOT: &str = concat!(
    "SELECT NULL::bigint AS position, version, payload::text, NULL::text AS name,
            NULL::int4 AS event_version, snapshot_version, fingerprint
     FROM eda_snapshots WHERE aggregate_type = $1 AND aggregate_id = $2
     UNION ALL
     (SELECT position, version, payload::text, name, event_version, NULL::bigint, NULL::bigint
      FROM eda_events WHERE ",
    after_version!(
        "coalesce((SELECT version FROM eda_snapshots WHERE aggregate_type = $1 AND aggregate_id = $2), 1) - 1"
    ),
    " ORDER BY version LIMIT $3)
     ORDER BY version, position NULLS FIRST"
);

/// A snapshot replaces the stream's one unless that one is newer.
const SAVE_SNAPSHOT: &str =
    "INSERT INTO eda_snapshots (aggregate_type, aggregate_id, version, snapshot_version, payload, fingerprint)
     VALUES ($1, $2, $3, $4, $5::text::json, $6)
     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
     SET version = excluded.version, snapshot_version = excluded.snapshot_version,
         payload = excluded.payload, fingerprint = excluded.fingerprint
     WHERE excluded.version >= eda_snapshots.version";

const LOAD_SNAPSHOT: &str =
    "SELECT version, snapshot_version, payload::text, fingerprint FROM eda_snapshots \
                             WHERE aggregate_type = $1 AND aggregate_id = $2";

/// Where a snapshot's version, snapshot version, payload and fingerprint are in a
/// [`LOAD_SNAPSHOT`] row.
const SNAPSHOT_ROW: [usize; 4] = [0, 1, 2, 3];
/// The same in [`READ_FROM_SNAPSHOT`]'s first row, laid out as the events after it.
const SNAPSHOT_IN_REPLAY_ROW: [usize; 4] = [1, 5, 2, 6];

/// The snapshot in `row`'s `columns`; one that does not have the stored shape
/// counts as none (the aggregate is then replayed).
fn snapshot_row(
    row: &Row,
    [version, snapshot_version, payload, fingerprint]: [usize; 4],
) -> Option<Snapshot> {
    Some(Snapshot {
        version: u64::try_from(row.try_get::<_, i64>(version).ok()?).ok()?,
        snapshot_version: u32::try_from(row.try_get::<_, i64>(snapshot_version).ok()?).ok()?,
        payload: row.try_get(payload).ok()?,
        fingerprint: row.try_get::<_, i64>(fingerprint).ok()? as u64,
    })
}

/// A [`READ_FOR_REPLAY`] row; one that does not have the stored shape is a
/// [`StoreError::Corrupt`] naming its position.
fn replay_event(row: &Row) -> Result<ReplayEvent, StoreError> {
    let position = u64::try_from(row.try_get::<_, i64>(0).map_err(backend)?).unwrap_or_default();
    let corrupt = |what: String| StoreError::Corrupt { position, what };
    Ok(ReplayEvent {
        position,
        version: u64::try_from(
            row.try_get::<_, i64>(1)
                .map_err(|e| corrupt(format!("version: {e}")))?,
        )
        .map_err(|_| corrupt("negative version".into()))?,
        payload: row
            .try_get(2)
            .map_err(|e| corrupt(format!("payload: {e}")))?,
        name: row.try_get(3).map_err(|e| corrupt(format!("name: {e}")))?,
        event_version: u32::try_from(
            row.try_get::<_, i32>(4)
                .map_err(|e| corrupt(format!("event_version: {e}")))?,
        )
        .map_err(|_| corrupt("negative event_version".into()))?,
    })
}

fn recorded(row: &Row) -> Result<RecordedEvent, StoreError> {
    let position = u64::try_from(row.try_get::<_, i64>(0).map_err(backend)?).unwrap_or_default();
    let corrupt = |what: String| StoreError::Corrupt { position, what };
    let metadata: String = row
        .try_get(8)
        .map_err(|e| corrupt(format!("metadata: {e}")))?;
    let metadata = serde_json::from_str(&metadata)
        .map_err(|e| corrupt(format!("metadata is not valid: {e}")))?;
    Ok(RecordedEvent {
        event_id: row
            .try_get(1)
            .map_err(|e| corrupt(format!("event_id: {e}")))?,
        aggregate_type: row
            .try_get(2)
            .map_err(|e| corrupt(format!("aggregate_type: {e}")))?,
        aggregate_id: row
            .try_get(3)
            .map_err(|e| corrupt(format!("aggregate_id: {e}")))?,
        version: u64::try_from(
            row.try_get::<_, i64>(4)
                .map_err(|e| corrupt(format!("version: {e}")))?,
        )
        .map_err(|_| corrupt("negative version".into()))?,
        position,
        name: row.try_get(5).map_err(|e| corrupt(format!("name: {e}")))?,
        event_version: u32::try_from(
            row.try_get::<_, i32>(6)
                .map_err(|e| corrupt(format!("event_version: {e}")))?,
        )
        .map_err(|_| corrupt("negative event_version".into()))?,
        payload: row
            .try_get(7)
            .map_err(|e| corrupt(format!("payload: {e}")))?,
        metadata,
        recorded_at: row
            .try_get(9)
            .map_err(|e| corrupt(format!("recorded_at: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plans PostgreSQL picks for `statement` (with `arguments`, SQL literals),
    /// generic and custom, as `EXPLAIN` prints them.
    async fn plans(
        client: &tokio_postgres::Client,
        statement: &str,
        types: &str,
        arguments: &str,
    ) -> String {
        // PostgreSQL's own cost settings, whatever the server is tuned for.
        client
            .batch_execute(&format!(
                "SET seq_page_cost = 1; SET random_page_cost = 4; SET cpu_tuple_cost = 0.01;
                 SET cpu_index_tuple_cost = 0.005; SET cpu_operator_cost = 0.0025;
                 SET effective_cache_size = '4GB';
                 PREPARE replay({types}) AS {statement}"
            ))
            .await
            .unwrap();
        let mut plans = String::new();
        for mode in ["force_generic_plan", "force_custom_plan"] {
            client
                .batch_execute(&format!("SET plan_cache_mode = {mode}"))
                .await
                .unwrap();
            for row in client
                .query(&format!("EXPLAIN EXECUTE replay({arguments})"), &[])
                .await
                .unwrap()
            {
                plans.push_str(row.get::<_, &str>(0));
                plans.push('\n');
            }
        }
        client
            .batch_execute("DEALLOCATE replay; RESET ALL")
            .await
            .unwrap();
        plans
    }

    /// Once the statistics show one aggregate holding most of the table, reads of
    /// its events still go through the index, in generic and custom plans.
    #[tokio::test]
    async fn a_long_stream_is_read_through_the_index() {
        let Ok(url) = std::env::var("EDA_TEST_POSTGRES_URL") else {
            eprintln!("skipped: EDA_TEST_POSTGRES_URL is not set");
            return;
        };
        let schema = format!("eda_plan_{}", std::process::id());
        let store = PostgresStore::connect_with(&url, PostgresOptions::new().schema(&schema))
            .await
            .unwrap();
        let client = store.client().await.unwrap();
        client
            .batch_execute(
                r#"INSERT INTO eda_events
                     (position, event_id, aggregate_type, aggregate_id, version, name,
                      event_version, payload, metadata)
                 SELECT v, gen_random_uuid(), 'Long', 'long', v, 'Deposited', 1, '{"amount": 10}',
                        '{"correlation_id": "0190a0a0-0000-7000-8000-000000000000",
                          "causation_id": "0190a0a0-0000-7000-8000-000000000001",
                          "command": "Deposit", "user": {"tenant": "t-1"}}'
                 FROM generate_series(1, 10000) AS v;
                 INSERT INTO eda_aggregates VALUES ('Long', 'long', 10000, 10000);
                 INSERT INTO eda_snapshots VALUES ('Long', 'long', 9950, 1, '{}', 0);
                 ANALYZE eda_events; ANALYZE eda_aggregates; ANALYZE eda_snapshots;"#,
            )
            .await
            .unwrap();
        let mut bounded = Vec::new();
        for (statement, types, arguments) in [
            (
                READ_FROM_SNAPSHOT,
                "text, text, bigint",
                "'Long', 'long', 1000",
            ),
            (
                READ_FOR_REPLAY,
                "text, text, bigint, bigint",
                "'Long', 'long', 9950, 1000",
            ),
            (READ_STREAM, "text, text, bigint", "'Long', 'long', 9950"),
        ] {
            bounded.push(plans(&client, statement, types, arguments).await);
        }
        // The control: without the upper bound, the generic plan of
        // `read_stream`'s statement scans the table.
        let unbounded = READ_STREAM.replace(" AND version <= 9223372036854775807", "");
        let control = plans(
            &client,
            &unbounded,
            "text, text, bigint",
            "'Long', 'long', 9950",
        )
        .await;
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
        for plans in bounded {
            // Both plans (generic and custom) scan the index on the version.
            let index = "Index Scan using eda_events_aggregate_type_aggregate_id_version_key";
            assert_eq!(plans.matches(index).count(), 2, "{plans}");
            assert!(!plans.contains("Seq Scan on eda_events"), "{plans}");
        }
        assert!(control.contains("Seq Scan on eda_events"), "{control}");
    }
}
