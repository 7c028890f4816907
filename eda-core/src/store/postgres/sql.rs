//! Every statement the store runs, by name: the schema's migrations, then the
//! appends, then the reads.

// The schema, version by version (see `migrate`).

/// Concurrent openers migrate one at a time.
pub(super) const MIGRATE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('eda.migrate'))";

/// The schema `schema`, and in it the table that keeps the schema version.
pub(super) fn create_schema(schema: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE IF NOT EXISTS {schema}.eda_schema (version integer NOT NULL)"
    )
}

/// The schema version the database has (none before the first migration).
pub(super) const SCHEMA_VERSION_FOUND: &str = "SELECT max(version) FROM eda_schema";

/// Version 1: the events and each aggregate's current version.
pub(super) const MIGRATE_TO_1: &str = "CREATE TABLE eda_events (
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
                 INSERT INTO eda_schema (version) VALUES (1);";

/// Version 2: the latest snapshot per aggregate.
pub(super) const MIGRATE_TO_2: &str = "CREATE TABLE eda_snapshots (
                     aggregate_type text NOT NULL,
                     aggregate_id text NOT NULL,
                     version bigint NOT NULL,
                     snapshot_version bigint NOT NULL,
                     payload jsonb NOT NULL,
                     fingerprint bigint NOT NULL,
                     PRIMARY KEY (aggregate_type, aggregate_id)
                 );
                 UPDATE eda_schema SET version = 2;";

/// Version 3: each aggregate's last position, so that a batch of appends can
/// check that it does not place an aggregate's events before earlier ones.
pub(super) const MIGRATE_TO_3: &str = "ALTER TABLE eda_aggregates ADD COLUMN last_position bigint NOT NULL DEFAULT 0;
                 UPDATE eda_aggregates g SET last_position = coalesce(
                     (SELECT max(position) FROM eda_events e
                      WHERE e.aggregate_type = g.aggregate_type AND e.aggregate_id = g.aggregate_id), 0);
                 UPDATE eda_schema SET version = 3;";

/// Version 4: `json` keeps the text it is given, byte for byte; `jsonb` rewrote
/// payloads (f64::MAX as a 309-digit integer, keys sorted, -0.0 as 0) and refused
/// `\u0000`. Payloads stored as `jsonb` before keep the rewritten text. The key
/// records remember each idempotency key's outcome, no-ops included; the keys of
/// stored events are filled in (those of earlier no-ops were never stored).
pub(super) const MIGRATE_TO_4: &str = "ALTER TABLE eda_events ALTER COLUMN payload TYPE json USING payload::text::json,
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
                 UPDATE eda_schema SET version = 4;";

/// Version 5: runners' checkpoints, by name.
pub(super) const MIGRATE_TO_5: &str = "CREATE TABLE eda_checkpoints (
                     name text PRIMARY KEY,
                     position bigint NOT NULL,
                     updated_at timestamptz NOT NULL DEFAULT now()
                 );
                 UPDATE eda_schema SET version = 5;";

/// Version 6: the events runners parked (dead letters), by runner and position.
/// (`eda_parked_events`, as in SQLite, where a read model kept in the store's
/// file has its own `eda_parked`.)
pub(super) const MIGRATE_TO_6: &str = "CREATE TABLE eda_parked_events (
                     runner text NOT NULL,
                     position bigint NOT NULL,
                     event_id uuid NOT NULL,
                     aggregate_type text NOT NULL,
                     aggregate_id text NOT NULL,
                     name text NOT NULL,
                     error text NOT NULL,
                     parked_at timestamptz NOT NULL,
                     PRIMARY KEY (runner, position)
                 );
                 UPDATE eda_schema SET version = 6;";

// The appends.

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
/// Tells the store's channel (the connection's setting `eda.channel`, see
/// `super::listen`) the last position of `ins`'s events, if it inserted any:
/// delivered when the transaction commits, and not if it rolls back. A column
/// that the statement's reader skips.
macro_rules! notify_ins {
    () => {
        "(SELECT pg_notify(current_setting('eda.channel'), max(position)::text) FROM ins HAVING count(*) > 0)"
    };
}
/// One row: how many CAS rows (0 is a conflict) and the last position (and
/// the notification).
macro_rules! many_result {
    () => {
        concat!(
            "
        SELECT (SELECT count(*) FROM cas), (SELECT max(position) FROM ins), ",
            notify_ins!()
        )
    };
}
/// The common case, one event, without arrays (less work for the server and the
/// client): the same parameters as scalars. Its position (and the notification
/// of it, see `notify_ins!`), or no row on a conflict.
macro_rules! insert_one {
    () => {
        "
        INSERT INTO eda_events
            (position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata)
        SELECT (pg_current_xact_id()::text::bigint << 20) | 1, $5, $1, $2, $3::bigint + 1,
               $6, $7, $8::text::json, $9::text::json
        FROM cas
        RETURNING position, pg_notify(current_setting('eda.channel'), position::text)"
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
pub(super) fn append(expected_version: u64, events: usize, keyed: bool) -> &'static str {
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

/// An append with no event and no key: one row, the aggregate's version (0 for
/// none) and last position.
pub(super) const VERSION_AND_POSITION: &str =
    "SELECT coalesce(max(version), 0), max(last_position) FROM eda_aggregates
     WHERE aggregate_type = $1 AND aggregate_id = $2";

/// The aggregate's current version, if it has events.
pub(super) const CURRENT_VERSION: &str =
    "SELECT version FROM eda_aggregates WHERE aggregate_type = $1 AND aggregate_id = $2";

/// Whether the transaction has written already (it has a transaction id); and,
/// for the rest of the transaction, the channel its appends notify (`$1`).
pub(super) const XACT_ID_ASSIGNED: &str =
    "SELECT pg_current_xact_id_if_assigned() IS NOT NULL, set_config('eda.channel', $1, true)";

/// The last position of the log, committed (the horizon may be below it).
pub(super) const HEAD: &str = "SELECT coalesce(max(position), 0) FROM eda_events";

/// Several appends in one statement, and so one transaction. Each is a
/// compare-and-set of its aggregate's version: those that match insert their
/// events, the others insert nothing. Positions are the transaction id shifted left
/// by 20 bits plus each event's index in the whole batch. The transaction id is
/// taken at the batch's first write, before some of the version checks; so each
/// check also requires the aggregate's last position to be below this
/// transaction's, or a transaction that began later but committed first could hold
/// the aggregate's earlier events at later positions. (Appends whose expected
/// version was read from the store pass anyway; an append that fails only this
/// check is retried on its own.) One notification for the whole batch.
pub(super) const APPEND_BATCH: &str = concat!(
    "WITH a AS (
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
        RETURNING position
    )
    SELECT pg_current_xact_id()::text::bigint, ARRAY(SELECT idx FROM won), ",
    notify_ins!()
);

// The checkpoints.

/// A first checkpoint (`$1` name, `$2` position): a row if it was stored, none if
/// the name has one already.
pub(super) const INSERT_CHECKPOINT: &str =
    "INSERT INTO eda_checkpoints (name, position) VALUES ($1, $2)
     ON CONFLICT DO NOTHING RETURNING position";

/// Compare-and-set of a checkpoint: moves it to `$3` only if it is at `$2`; a row
/// if it was moved. (A concurrent move makes the statement check the row it
/// committed.)
pub(super) const MOVE_CHECKPOINT: &str =
    "UPDATE eda_checkpoints SET position = $3, updated_at = now()
     WHERE name = $1 AND position = $2 RETURNING position";

/// A checkpoint's position.
pub(super) const READ_CHECKPOINT: &str = "SELECT position FROM eda_checkpoints WHERE name = $1";

// The parked events.

/// Parks an event for the runner `$1` at its position `$2`; one parked there
/// already keeps everything but its error.
pub(super) const PARK: &str =
    "INSERT INTO eda_parked_events (runner, position, event_id, aggregate_type, aggregate_id, name, error, parked_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (runner, position) DO UPDATE SET error = EXCLUDED.error";

/// The events parked for a runner, in position order, as `row::parked` reads them.
pub(super) const PARKED: &str =
    "SELECT position, event_id, aggregate_type, aggregate_id, name, error, parked_at
     FROM eda_parked_events WHERE runner = $1 ORDER BY position";

/// Removes the event parked for the runner `$1` at the position `$2`: a row if
/// there was one.
pub(super) const UNPARK: &str =
    "DELETE FROM eda_parked_events WHERE runner = $1 AND position = $2 RETURNING position";

// The reads.

/// A full [`RecordedEvent`](crate::RecordedEvent)'s columns, in the order
/// `row::recorded` reads them.
macro_rules! columns {
    () => {
        "position, event_id, aggregate_type, aggregate_id, version, name, event_version, \
         payload::text, metadata::text, recorded_at"
    };
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

/// An aggregate's events after a version (`$3`), in order.
pub(super) const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE ",
    after_version!("$3"),
    " ORDER BY version"
);

/// What an idempotency key stored.
pub(super) const READ_KEY: &str =
    "SELECT aggregate_type, aggregate_id, command, fingerprint, expected_version,
            version, position FROM eda_idempotency WHERE key = $1";

/// The event with an id.
pub(super) const READ_EVENT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE event_id = $1"
);

/// The global log after a position, up to the oldest transaction still running
/// (see the module documentation).
pub(super) const READ_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE position > $1 \
       AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20) \
     ORDER BY position LIMIT $2"
);

/// At most `$2` events of the global log after a position (`$1`) whose name is in
/// `$3`, below the oldest transaction still running, with that horizon as the last
/// column (each column `NULL` but the horizon when no event is found).
pub(super) const READ_ALL_OF: &str = concat!(
    "SELECT e.*, h.horizon FROM \
       (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20 AS horizon) h \
     LEFT JOIN LATERAL (SELECT ",
    columns!(),
    " FROM eda_events WHERE position > $1 AND position < h.horizon AND name = ANY($3) \
       ORDER BY position LIMIT $2) e ON true ORDER BY e.position"
);

/// How many events after a position (`$1`) have a name in `$2`, below the
/// oldest transaction still running, and the last position below it (the
/// position itself if there is none).
pub(super) const COUNT_ALL_OF: &str = "SELECT count(*) FILTER (WHERE name = ANY($2)), \
       coalesce(max(position), $1) FROM eda_events \
     WHERE position > $1 \
       AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)";

/// Replay's columns only (no metadata to convert and parse, no stream name per
/// row), at most `$4` events.
pub(super) const READ_FOR_REPLAY: &str = concat!(
    "SELECT position, version, payload::text, name, event_version FROM eda_events WHERE ",
    after_version!("$3"),
    " ORDER BY version LIMIT $4"
);

/// The snapshot's row (no position;
/// [`SNAPSHOT_IN_REPLAY_ROW`](super::row::SNAPSHOT_IN_REPLAY_ROW)), then at most
/// `$3` events from the snapshot's version on in [`READ_FOR_REPLAY`]'s columns.
/// The snapshot comes first: its version is its first event's, and its position
/// null.
pub(super) const READ_FROM_SNAPSHOT: &str = concat!(
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
pub(super) const SAVE_SNAPSHOT: &str =
    "INSERT INTO eda_snapshots (aggregate_type, aggregate_id, version, snapshot_version, payload, fingerprint)
     VALUES ($1, $2, $3, $4, $5::text::json, $6)
     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
     SET version = excluded.version, snapshot_version = excluded.snapshot_version,
         payload = excluded.payload, fingerprint = excluded.fingerprint
     WHERE excluded.version >= eda_snapshots.version";

/// The stream's snapshot.
pub(super) const LOAD_SNAPSHOT: &str =
    "SELECT version, snapshot_version, payload::text, fingerprint FROM eda_snapshots \
     WHERE aggregate_type = $1 AND aggregate_id = $2";

/// How many committed events [`READ_ALL`] holds back.
pub(super) const HELD_BACK: &str = "SELECT count(*) FROM eda_events \
     WHERE position >= (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::{PostgresOptions, PostgresStore};

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
