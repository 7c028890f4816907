//! Every statement the store runs, by name: the schema's migrations, then the
//! writer's statements, then the reads.

// The schema, version by version (see `migrate`).

/// Where the schema version is kept.
pub(super) const CREATE_SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS eda_schema (version INTEGER NOT NULL)";

/// The schema version the database has (none before the first migration).
pub(super) const SCHEMA_VERSION_FOUND: &str = "SELECT MAX(version) FROM eda_schema";

/// Version 1: the events and each aggregate's current version.
pub(super) const MIGRATE_TO_1: &str = "CREATE TABLE eda_events (
                 position INTEGER PRIMARY KEY AUTOINCREMENT,
                 event_id BLOB NOT NULL UNIQUE,
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 name TEXT NOT NULL,
                 event_version INTEGER NOT NULL,
                 payload TEXT NOT NULL,
                 metadata TEXT NOT NULL,
                 recorded_at INTEGER NOT NULL,
                 UNIQUE (aggregate_type, aggregate_id, version)
             );
             CREATE TABLE eda_aggregates (
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 PRIMARY KEY (aggregate_type, aggregate_id)
             ) WITHOUT ROWID;
             DELETE FROM eda_schema;
             INSERT INTO eda_schema (version) VALUES (1);";

/// Version 2: the latest snapshot per aggregate.
pub(super) const MIGRATE_TO_2: &str = "CREATE TABLE eda_snapshots (
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 snapshot_version INTEGER NOT NULL,
                 payload TEXT NOT NULL,
                 fingerprint INTEGER NOT NULL,
                 PRIMARY KEY (aggregate_type, aggregate_id)
             ) WITHOUT ROWID;
             UPDATE eda_schema SET version = 2;";

/// Version 3: each idempotency key's outcome, no-ops included; the keys of stored
/// events are filled in (those of earlier no-ops were never stored).
pub(super) const MIGRATE_TO_3: &str = "CREATE TABLE eda_idempotency (
                 key TEXT PRIMARY KEY,
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 command TEXT NOT NULL,
                 fingerprint BLOB,
                 expected_version INTEGER NOT NULL,
                 version INTEGER NOT NULL,
                 position INTEGER,
                 recorded_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             INSERT INTO eda_idempotency
                 (key, aggregate_type, aggregate_id, command, expected_version, version, position, recorded_at)
             SELECT json_extract(metadata, '$.idempotency_key'), min(aggregate_type), min(aggregate_id),
                    coalesce(min(json_extract(metadata, '$.command')), ''), min(version) - 1,
                    max(version), max(position), min(recorded_at)
             FROM eda_events WHERE json_extract(metadata, '$.idempotency_key') IS NOT NULL GROUP BY 1;
             UPDATE eda_schema SET version = 3;";

/// Version 4: runners' checkpoints, by name (`updated_at` in microseconds).
pub(super) const MIGRATE_TO_4: &str = "CREATE TABLE eda_checkpoints (
                 name TEXT PRIMARY KEY,
                 position INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL
             ) WITHOUT ROWID;
             UPDATE eda_schema SET version = 4;";

/// Version 5: the events runners parked (dead letters), by runner and position
/// (`event_id` as its 16 bytes, `parked_at` in microseconds). Not `eda_parked`:
/// a SQLite read model kept in the store's file has its own table of that name.
pub(super) const MIGRATE_TO_5: &str = "CREATE TABLE eda_parked_events (
                 runner TEXT NOT NULL,
                 position INTEGER NOT NULL,
                 event_id BLOB NOT NULL,
                 aggregate_type TEXT NOT NULL,
                 aggregate_id TEXT NOT NULL,
                 name TEXT NOT NULL,
                 error TEXT NOT NULL,
                 parked_at INTEGER NOT NULL,
                 PRIMARY KEY (runner, position)
             );
             UPDATE eda_schema SET version = 5;";

// Each connection, and the end of the writer's.

/// A new connection's settings, with `synchronous = FULL`.
pub(super) const WAL_SYNCHRONOUS_FULL: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;";

/// A new connection's settings, with `synchronous = NORMAL`.
pub(super) const WAL_SYNCHRONOUS_NORMAL: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;";

/// Moves the write-ahead log into the database file; its first column is 0 unless
/// a reader blocked it.
pub(super) const CHECKPOINT: &str = "PRAGMA wal_checkpoint(TRUNCATE)";

/// A consistent copy of the database into the file `?1`.
pub(super) const BACKUP: &str = "VACUUM INTO ?1";

// The writer's statements.

/// Isolates one request of a batch.
pub(super) const SAVEPOINT: &str = "SAVEPOINT eda_request";

/// Keeps what the request wrote.
pub(super) const RELEASE_SAVEPOINT: &str = "RELEASE eda_request";

/// Undoes what the failed request wrote.
pub(super) const ROLL_BACK_SAVEPOINT: &str = "ROLLBACK TO eda_request; RELEASE eda_request";

/// The aggregate's current version, if it has events.
pub(super) const CURRENT_VERSION: &str =
    "SELECT version FROM eda_aggregates WHERE aggregate_type = ?1 AND aggregate_id = ?2";

/// The position of the aggregate's last event (null if it has none).
pub(super) const LAST_POSITION: &str =
    "SELECT MAX(position) FROM eda_events WHERE aggregate_type = ?1 AND aggregate_id = ?2";

/// One event; its position is the new row id.
pub(super) const INSERT_EVENT: &str =
    "INSERT INTO eda_events (event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata, recorded_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// The aggregate's new current version.
pub(super) const SET_VERSION: &str =
    "INSERT INTO eda_aggregates (aggregate_type, aggregate_id, version) VALUES (?1, ?2, ?3)
     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version";

/// An idempotency key's record; a key stored already violates the primary key.
pub(super) const KEEP_KEY: &str =
    "INSERT INTO eda_idempotency (key, aggregate_type, aggregate_id, command, fingerprint,
                                  expected_version, version, position, recorded_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// A snapshot replaces the stream's one unless that one is newer.
pub(super) const SAVE_SNAPSHOT: &str =
    "INSERT INTO eda_snapshots (aggregate_type, aggregate_id, version, snapshot_version, payload, fingerprint)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
     SET version = excluded.version, snapshot_version = excluded.snapshot_version,
         payload = excluded.payload, fingerprint = excluded.fingerprint
     WHERE excluded.version >= eda_snapshots.version";

/// A first checkpoint (`?1` name, `?2` position, `?3` time): changes no row if
/// the name has one already.
pub(super) const INSERT_CHECKPOINT: &str =
    "INSERT INTO eda_checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3)
     ON CONFLICT (name) DO NOTHING";

/// Compare-and-set of a checkpoint: moves it to `?3` (at time `?4`) only if it
/// is at `?2`, else changes no row.
pub(super) const MOVE_CHECKPOINT: &str =
    "UPDATE eda_checkpoints SET position = ?3, updated_at = ?4 WHERE name = ?1 AND position = ?2";

/// Parks an event for the runner `?1` at its position `?2`; one parked there
/// already keeps everything but its error.
pub(super) const PARK: &str =
    "INSERT INTO eda_parked_events (runner, position, event_id, aggregate_type, aggregate_id, name, error, parked_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (runner, position) DO UPDATE SET error = excluded.error";

/// Removes the event parked for the runner `?1` at the position `?2`, if there is one.
pub(super) const UNPARK: &str = "DELETE FROM eda_parked_events WHERE runner = ?1 AND position = ?2";

// The reads.

/// A full [`RecordedEvent`](crate::RecordedEvent)'s columns, in the order
/// `row::recorded` reads them.
macro_rules! columns {
    () => {
        "position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata, recorded_at"
    };
}

/// An aggregate's events after a version (`?3`), in order.
pub(super) const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version > ?3 ORDER BY version"
);

/// At most `?2` events of the global log after a position, in order.
pub(super) const READ_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE position > ?1 ORDER BY position LIMIT ?2"
);

/// The last position of the global log (0 when empty). Positions are given in
/// commit order (one writer), so every event at or below it is committed.
pub(super) const HEAD: &str = "SELECT coalesce(max(position), 0) FROM eda_events";

/// A number that changes on a connection when another connection committed.
pub(super) const DATA_VERSION: &str = "PRAGMA data_version";

/// At most `?2` events of the global log after a position and at most `?4` (the
/// head read before), whose name is in the JSON array `?3`, in order.
pub(super) const READ_ALL_OF: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE position > ?1 AND position <= ?4 \
       AND name IN (SELECT value FROM json_each(?3)) ORDER BY position LIMIT ?2"
);

/// How many events after a position (`?1`) have a name in the JSON array `?2`,
/// and the head: one read, so the two agree.
pub(super) const COUNT_ALL_OF: &str = "SELECT
       (SELECT count(*) FROM eda_events
        WHERE position > ?1 AND name IN (SELECT value FROM json_each(?2))),
       (SELECT coalesce(max(position), 0) FROM eda_events)";

/// The event with an id.
pub(super) const READ_EVENT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM eda_events WHERE event_id = ?1"
);

/// What an idempotency key stored.
pub(super) const READ_KEY: &str =
    "SELECT aggregate_type, aggregate_id, command, fingerprint, expected_version,
            version, position FROM eda_idempotency WHERE key = ?1";

/// A checkpoint's position.
pub(super) const READ_CHECKPOINT: &str = "SELECT position FROM eda_checkpoints WHERE name = ?1";

/// The events parked for a runner, in position order, as `row::parked` reads them.
pub(super) const PARKED: &str =
    "SELECT position, event_id, aggregate_type, aggregate_id, name, error, parked_at
     FROM eda_parked_events WHERE runner = ?1 ORDER BY position";

/// The stream's snapshot.
pub(super) const LOAD_SNAPSHOT: &str =
    "SELECT version, snapshot_version, payload, fingerprint FROM eda_snapshots \
     WHERE aggregate_type = ?1 AND aggregate_id = ?2";

/// Replay's columns only (no metadata to parse, no stream name per row), at most
/// `?4` events after a version (`?3`).
pub(super) const READ_FOR_REPLAY: &str =
    "SELECT position, version, name, event_version, payload FROM eda_events \
     WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND version > ?3 \
     ORDER BY version LIMIT ?4";
