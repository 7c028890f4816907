//! The reads, as jobs for a reader thread (or the writer, when it is idle): each
//! runs its statement on the connection it is given.

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::row::{collect, parked as parked_row, replay_event};
use super::sql;
use crate::envelope::{IdempotencyRecord, RecordedEvent, ReplayEvent, Snapshot};
use crate::error::StoreError;
use crate::projection::ParkedEvent;
use crate::store::durable::{backend, to_i64};
use crate::store::{LogCount, LogPage};

/// The stream's events after `after_version`, in order.
pub(super) fn stream(
    connection: &Connection,
    aggregate_type: &str,
    aggregate_id: &str,
    after_version: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let after = to_i64(after_version);
    events(
        connection,
        sql::READ_STREAM,
        params![aggregate_type, aggregate_id, after],
    )
}

/// At most `limit` events of the global log after `after_position`, in order.
pub(super) fn all(
    connection: &Connection,
    after_position: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    events(
        connection,
        sql::READ_ALL,
        params![to_i64(after_position), limit],
    )
}

/// At most `limit` events after `after_position` named in `names`, and how far
/// the log was read.
pub(super) fn all_of(
    connection: &Connection,
    after_position: u64,
    limit: usize,
    names: &[String],
) -> Result<LogPage, StoreError> {
    let head: i64 = connection
        .prepare_cached(sql::HEAD)
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
        .map_err(backend)?;
    let names = serde_json::to_string(names).map_err(backend)?;
    let limit = limit.max(1);
    let found = events(
        connection,
        sql::READ_ALL_OF,
        params![
            to_i64(after_position),
            i64::try_from(limit).unwrap_or(i64::MAX),
            names,
            head
        ],
    )?;
    let head = u64::try_from(head).unwrap_or_default();
    Ok(LogPage::scanned(found, limit, after_position, head))
}

/// How many events after `after_position` are named in `names`, up to the
/// head read in the same statement.
pub(super) fn count_all_of(
    connection: &Connection,
    after_position: u64,
    names: &[String],
) -> Result<LogCount, StoreError> {
    let names = serde_json::to_string(names).map_err(backend)?;
    let (events, head): (i64, i64) = connection
        .prepare_cached(sql::COUNT_ALL_OF)
        .and_then(|mut statement| {
            statement.query_row(params![to_i64(after_position), names], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
        })
        .map_err(backend)?;
    let head = u64::try_from(head).unwrap_or_default();
    Ok(LogCount::new(
        u64::try_from(events).unwrap_or_default(),
        head.max(after_position),
    ))
}

/// The event with this id, if it is stored.
pub(super) fn event(
    connection: &Connection,
    event_id: Uuid,
) -> Result<Option<RecordedEvent>, StoreError> {
    let id = event_id.as_bytes().as_slice();
    Ok(events(connection, sql::READ_EVENT, params![id])?.pop())
}

/// The events `query` (one of the statements that select a full event's
/// columns) finds with `params`.
fn events(
    connection: &Connection,
    query: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut statement = connection.prepare_cached(query).map_err(backend)?;
    let rows = statement.query(params).map_err(backend)?;
    collect(rows)
}

/// What an append with idempotency key `key` stored, if one did.
pub(super) fn idempotency_key(
    connection: &Connection,
    key: String,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let mut statement = connection.prepare_cached(sql::READ_KEY).map_err(backend)?;
    let row = statement
        .query_row(params![key], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<Vec<u8>>>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<i64>>(6)?,
            ))
        })
        .optional()
        .map_err(backend)?;
    let Some((aggregate_type, aggregate_id, command, fingerprint, expected, version, position)) =
        row
    else {
        return Ok(None);
    };
    let corrupt = |what: &str| StoreError::Corrupt {
        position: 0,
        what: format!("idempotency key `{key}`: {what}"),
    };
    Ok(Some(IdempotencyRecord {
        aggregate_type,
        aggregate_id,
        command,
        fingerprint: fingerprint
            .map(|bytes| {
                Uuid::from_slice(&bytes).map_err(|_| corrupt("fingerprint is not 16 bytes"))
            })
            .transpose()?,
        expected_version: u64::try_from(expected).map_err(|_| corrupt("negative version"))?,
        version: u64::try_from(version).map_err(|_| corrupt("negative version"))?,
        position: position.and_then(|p| u64::try_from(p).ok()),
        key,
    }))
}

/// The checkpoint stored under `name`, if there is one.
pub(super) fn checkpoint(connection: &Connection, name: &str) -> Result<Option<u64>, StoreError> {
    let position: Option<i64> = connection
        .prepare_cached(sql::READ_CHECKPOINT)
        .and_then(|mut statement| {
            statement
                .query_row(params![name], |row| row.get(0))
                .optional()
        })
        .map_err(backend)?;
    position
        .map(|p| {
            u64::try_from(p).map_err(|_| StoreError::Corrupt {
                position: 0,
                what: format!("checkpoint `{name}`: negative position {p}"),
            })
        })
        .transpose()
}

/// The events parked for the runner `name`, in position order.
pub(super) fn parked(connection: &Connection, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
    let mut statement = connection.prepare_cached(sql::PARKED).map_err(backend)?;
    let mut rows = statement.query(params![name]).map_err(backend)?;
    let mut parked = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        parked.push(parked_row(row)?);
    }
    Ok(parked)
}

/// The stream's snapshot; a row out of range counts as none (the aggregate is
/// then replayed).
pub(super) fn snapshot(
    connection: &Connection,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<Snapshot>, StoreError> {
    let mut statement = connection
        .prepare_cached(sql::LOAD_SNAPSHOT)
        .map_err(backend)?;
    let snapshot = statement
        .query_row(params![aggregate_type, aggregate_id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .optional()
        .map_err(backend)?;
    Ok(
        snapshot.and_then(|(version, snapshot_version, payload, fingerprint)| {
            Some(Snapshot {
                version: u64::try_from(version).ok()?,
                snapshot_version: u32::try_from(snapshot_version).ok()?,
                payload,
                fingerprint: fingerprint as u64,
            })
        }),
    )
}

/// At most `limit` of the stream's events after `after_version`, with replay's
/// columns only: no metadata to parse, no stream name per row. A row that does not
/// have the stored shape is a [`StoreError::Corrupt`] naming its position.
pub(super) fn replay(
    connection: &Connection,
    aggregate_type: &str,
    aggregate_id: &str,
    after_version: u64,
    limit: usize,
) -> Result<Vec<ReplayEvent>, StoreError> {
    let mut statement = connection
        .prepare_cached(sql::READ_FOR_REPLAY)
        .map_err(backend)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = statement
        .query(params![
            aggregate_type,
            aggregate_id,
            to_i64(after_version),
            limit
        ])
        .map_err(backend)?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        events.push(replay_event(row)?);
    }
    Ok(events)
}
