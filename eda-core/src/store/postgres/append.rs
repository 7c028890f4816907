//! One append in one statement: the aggregate's version compare-and-set and the
//! events (and the idempotency key's record), or nothing.

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Statement};
use uuid::Uuid;

use super::sql;
use crate::envelope::{IdempotencyRecord, NewEvent, StreamId};
use crate::error::StoreError;
use crate::store::durable::{backend, to_i64, AppendRequest};
use crate::store::Appended;

/// The most events one append may carry: the low bits of a position.
pub(super) const MAX_EVENTS_PER_APPEND: usize = 1 << 20;

/// One append, as the statements take it.
#[derive(Clone, Copy)]
pub(super) struct Append<'a> {
    pub(super) stream: StreamId<'a>,
    pub(super) expected_version: u64,
    pub(super) events: &'a [NewEvent],
    /// JSON text.
    pub(super) metadata: &'a str,
    pub(super) key: Option<&'a IdempotencyRecord>,
}

impl<'a> Append<'a> {
    pub(super) fn of_request<R>(request: &'a AppendRequest<R>) -> Self {
        Append {
            stream: request.stream(),
            expected_version: request.expected_version,
            events: &request.events,
            metadata: &request.metadata,
            key: request.idempotency.as_deref(),
        }
    }

    pub(super) fn sql(&self) -> &'static str {
        sql::append(self.expected_version, self.events.len(), self.key.is_some())
    }
}

/// Runs a prepared append statement, the one [`Append::sql`] chose.
pub(super) async fn append(
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
    // The one-event statement returns the position first, the others second.
    let one_event = matches!((events, key_params), ([_], None));
    let row = if events.is_empty() {
        let row = match key_params {
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
            None => {
                client
                    .query_one(
                        sql::VERSION_AND_POSITION,
                        &[&stream.aggregate_type, &stream.aggregate_id],
                    )
                    .await
            }
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
    let position: i64 = row.get(if one_event { 0 } else { 1 });
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

pub(super) async fn current_version(
    client: &impl GenericClient,
    stream: StreamId<'_>,
) -> Result<u64, StoreError> {
    let row = client
        .query_opt(
            sql::CURRENT_VERSION,
            &[&stream.aggregate_type, &stream.aggregate_id],
        )
        .await
        .map_err(backend)?;
    Ok(row.map_or(0, |row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
}

/// Runs one append on its own (the statement [`Append::sql`] picks).
pub(super) async fn append_alone(
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

/// Whether a statement that was sent failed in a way that leaves its outcome
/// unknown: the connection broke, or the server ended the session (`FATAL`),
/// rather than the statement failing and its transaction rolling back.
pub(super) fn cut_off(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => matches!(
            db.parsed_severity(),
            Some(tokio_postgres::error::Severity::Fatal | tokio_postgres::error::Severity::Panic)
        ),
        None => true,
    }
}
