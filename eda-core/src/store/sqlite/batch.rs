//! A batch of the writer thread: one `BEGIN IMMEDIATE` transaction, each request
//! in its own savepoint, one commit (group commit), then each request's answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::{read, sql};
use crate::envelope::Snapshot;
use crate::error::StoreError;
use crate::failpoint;
use crate::projection::ParkedEvent;
use crate::store::durable::{backend, to_i64, AppendRequest};
use crate::store::Appended;

/// What the writer thread writes: appends, and snapshots, checkpoints and parked
/// events (which need the one write connection too).
pub(super) enum WriteRequest {
    Append(AppendRequest),
    Snapshot(SnapshotRequest),
    Checkpoint(CheckpointRequest),
    Park(ParkRequest),
    Unpark(UnparkRequest),
}

pub(super) struct SnapshotRequest {
    pub(super) aggregate_type: String,
    pub(super) aggregate_id: String,
    pub(super) snapshot: Snapshot,
    pub(super) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// A compare-and-set of a runner's checkpoint.
pub(super) struct CheckpointRequest {
    pub(super) name: String,
    pub(super) from: Option<u64>,
    pub(super) to: u64,
    pub(super) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// An event to park for a runner (or a new error for the one parked at its position).
pub(super) struct ParkRequest {
    pub(super) runner: String,
    pub(super) event: ParkedEvent,
    pub(super) reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The removal of the event parked for a runner at a position.
pub(super) struct UnparkRequest {
    pub(super) runner: String,
    pub(super) position: u64,
    pub(super) reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// What a request did, for its reply.
pub(super) enum Written {
    /// An append: where it landed.
    Appended(Appended),
    /// A snapshot, a checkpoint or a parked event, written.
    Done,
    /// An unpark: whether an event was parked at its position.
    Unparked(bool),
}

impl Written {
    /// An append's answer (another request's, unused, is [`NOTHING`]).
    fn appended(self) -> Appended {
        match self {
            Written::Appended(appended) => appended,
            Written::Done | Written::Unparked(_) => NOTHING,
        }
    }
}

/// Runs every request of `batch` in one transaction, each in a savepoint, commits,
/// then replies to each. If the commit fails, all of them fail. The position
/// of the last event committed, if an append committed events.
pub(super) fn write_batch(connection: &mut Connection, batch: Vec<WriteRequest>) -> Option<u64> {
    let tx = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let results = batch.iter().map(|_| Err(backend_ref(&e))).collect();
            reply(batch, results);
            return None;
        }
    };
    let recorded_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    // Savepoints keep one request's failure from undoing the others; a lone
    // request needs none: if it fails, the whole transaction is rolled back.
    let isolate = batch.len() > 1;
    let mut results = Vec::with_capacity(batch.len());
    for request in &batch {
        let run = || match request {
            WriteRequest::Append(append) => {
                append_in_savepoint(&tx, append, recorded_at).map(Written::Appended)
            }
            WriteRequest::Snapshot(snapshot) => {
                save_snapshot(&tx, snapshot).map(|()| Written::Done)
            }
            WriteRequest::Checkpoint(checkpoint) => {
                move_checkpoint(&tx, checkpoint, recorded_at).map(|()| Written::Done)
            }
            WriteRequest::Park(park) => park_event(&tx, park).map(|()| Written::Done),
            WriteRequest::Unpark(unpark) => unpark_event(&tx, unpark).map(Written::Unparked),
        };
        results.push(if isolate {
            in_savepoint(&tx, run)
        } else {
            run()
        });
        if tx.is_autocommit() {
            break;
        }
    }
    if tx.is_autocommit() {
        // SQLite rolled the whole transaction back (disk full, I/O error): none of
        // the batch is stored, and going on would run the rest outside a transaction.
        let results = batch.iter().map(|_| Err(StoreError::RolledBack)).collect();
        reply(batch, results);
        return None;
    }
    if !isolate && results.iter().any(Result::is_err) {
        drop(tx); // rolls back whatever the failed request wrote
        reply(batch, results);
        return None;
    }
    if failpoint::armed("sqlite.ack_before_commit") {
        // The bug the fault tests must catch: acknowledging before the commit.
        reply(batch, results);
        // Give the caller time to report the acknowledgement before the crash,
        // however loaded the machine.
        failpoint::hit_after("sqlite.ack_before_commit", Duration::from_secs(3));
        let _ = tx.commit();
        return None;
    }
    failpoint::hit("sqlite.before_commit");
    let results = match tx.commit() {
        Ok(()) => results,
        // A full disk or a lock held elsewhere stops the commit before it is
        // written; after another failure (an fsync that failed, say) the commit
        // may be in the write-ahead log and come back when the file is opened.
        Err(e) if commit_refused(&e) => batch.iter().map(|_| Err(backend_ref(&e))).collect(),
        Err(e) => batch
            .iter()
            .map(|request| match request {
                WriteRequest::Append(_) => Err(StoreError::OutcomeUnknown {
                    source: Some(Box::new(backend_ref(&e))),
                }),
                WriteRequest::Snapshot(_)
                | WriteRequest::Checkpoint(_)
                | WriteRequest::Park(_)
                | WriteRequest::Unpark(_) => Err(backend_ref(&e)),
            })
            .collect(),
    };
    failpoint::hit("sqlite.after_commit");
    let head = results
        .iter()
        .filter_map(|result| match result {
            Ok(Written::Appended(appended)) => Some(appended.position),
            _ => None,
        })
        .max();
    reply(batch, results);
    head
}

/// The place of a request that appends nothing (unused).
const NOTHING: Appended = Appended {
    version: 0,
    position: 0,
};

/// Sends each request its result.
pub(super) fn reply(batch: Vec<WriteRequest>, results: Vec<Result<Written, StoreError>>) {
    for (request, result) in batch.into_iter().zip(results) {
        match request {
            WriteRequest::Append(append) => {
                let _ = append.reply.send(result.map(Written::appended));
            }
            WriteRequest::Snapshot(snapshot) => {
                let _ = snapshot.reply.send(result.map(|_| ()));
            }
            WriteRequest::Checkpoint(checkpoint) => {
                let _ = checkpoint.reply.send(result.map(|_| ()));
            }
            WriteRequest::Park(park) => {
                let _ = park.reply.send(result.map(|_| ()));
            }
            WriteRequest::Unpark(unpark) => {
                let _ = unpark
                    .reply
                    .send(result.map(|written| matches!(written, Written::Unparked(true))));
            }
        }
    }
}

/// Runs `f` in a savepoint, rolled back if `f` fails, so one request's failure
/// leaves the others of its batch intact.
fn in_savepoint<T>(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tx.execute_batch(sql::SAVEPOINT).map_err(backend)?;
    let result = f();
    let end = match result {
        Ok(_) => sql::RELEASE_SAVEPOINT,
        Err(_) => sql::ROLL_BACK_SAVEPOINT,
    };
    tx.execute_batch(end).map_err(backend)?;
    result
}

/// Keeps the newer of the stored and the given snapshot.
fn save_snapshot(
    tx: &rusqlite::Transaction<'_>,
    request: &SnapshotRequest,
) -> Result<(), StoreError> {
    tx.prepare_cached(sql::SAVE_SNAPSHOT)
        .and_then(|mut s| {
            s.execute(params![
                request.aggregate_type,
                request.aggregate_id,
                to_i64(request.snapshot.version),
                request.snapshot.snapshot_version,
                request.snapshot.payload,
                // The bits as they are: SQLite integers are signed.
                request.snapshot.fingerprint as i64,
            ])
        })
        .map(|_| ())
        .map_err(backend)
}

/// Moves the checkpoint from `request.from` to `request.to` if it is there; if
/// not, [`StoreError::CheckpointMoved`] with the one found (read in the same
/// transaction, so it is the one the statement met).
fn move_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    request: &CheckpointRequest,
    updated_at: i64,
) -> Result<(), StoreError> {
    let changed = match request.from {
        None => tx
            .prepare_cached(sql::INSERT_CHECKPOINT)
            .and_then(|mut s| s.execute(params![request.name, to_i64(request.to), updated_at])),
        Some(from) => tx.prepare_cached(sql::MOVE_CHECKPOINT).and_then(|mut s| {
            s.execute(params![
                request.name,
                to_i64(from),
                to_i64(request.to),
                updated_at
            ])
        }),
    }
    .map_err(backend)?;
    if changed == 1 {
        return Ok(());
    }
    Err(StoreError::CheckpointMoved {
        name: request.name.clone(),
        expected: request.from,
        found: read::checkpoint(tx, &request.name)?,
    })
}

/// Parks the request's event, or gives the one parked at its position the new error.
fn park_event(tx: &rusqlite::Transaction<'_>, request: &ParkRequest) -> Result<(), StoreError> {
    let event = &request.event;
    tx.prepare_cached(sql::PARK)
        .and_then(|mut s| {
            s.execute(params![
                request.runner,
                to_i64(event.position),
                event.event_id.as_bytes().as_slice(),
                event.aggregate_type,
                event.aggregate_id,
                event.name,
                event.error,
                event.parked_at.timestamp_micros(),
            ])
        })
        .map(|_| ())
        .map_err(backend)
}

/// Removes the event parked at the request's position; whether there was one.
fn unpark_event(
    tx: &rusqlite::Transaction<'_>,
    request: &UnparkRequest,
) -> Result<bool, StoreError> {
    tx.prepare_cached(sql::UNPARK)
        .and_then(|mut s| s.execute(params![request.runner, to_i64(request.position)]))
        .map(|removed| removed > 0)
        .map_err(backend)
}

fn append_in_savepoint(
    tx: &rusqlite::Transaction<'_>,
    request: &AppendRequest,
    recorded_at: i64,
) -> Result<Appended, StoreError> {
    let actual: u64 = tx
        .prepare_cached(sql::CURRENT_VERSION)
        .and_then(|mut s| {
            s.query_row(
                params![request.aggregate_type, request.aggregate_id],
                |row| row.get::<_, i64>(0),
            )
            .optional()
        })
        .map_err(backend)?
        .map_or(0, |v| u64::try_from(v).unwrap_or_default());
    if actual != request.expected_version {
        let stream = request.stream();
        return Err(StoreError::conflict(
            stream,
            request.expected_version,
            actual,
        ));
    }
    if request.events.is_empty() {
        keep_key(tx, request, None, recorded_at)?;
        let position: Option<i64> = tx
            .query_row(
                sql::LAST_POSITION,
                params![request.aggregate_type, request.aggregate_id],
                |row| row.get(0),
            )
            .map_err(backend)?;
        return Ok(Appended {
            version: actual,
            position: position.map_or(0, |p| u64::try_from(p).unwrap_or(0)),
        });
    }
    let mut insert = tx.prepare_cached(sql::INSERT_EVENT).map_err(backend)?;
    let mut version = actual;
    let mut position = 0;
    for event in &request.events {
        version += 1;
        let inserted = insert.execute(params![
            event.event_id.as_bytes().as_slice(),
            request.aggregate_type,
            request.aggregate_id,
            to_i64(version),
            event.name.as_ref(),
            event.version,
            event.payload,
            request.metadata,
            recorded_at,
        ]);
        match inserted {
            Ok(_) => position = u64::try_from(tx.last_insert_rowid()).unwrap_or_default(),
            Err(e) if is_unique_violation(&e, "eda_events.event_id") => {
                return Err(StoreError::DuplicateEvent {
                    event_id: event.event_id,
                });
            }
            Err(e) => return Err(backend(e)),
        }
    }
    tx.prepare_cached(sql::SET_VERSION)
        .and_then(|mut s| {
            s.execute(params![
                request.aggregate_type,
                request.aggregate_id,
                to_i64(version)
            ])
        })
        .map_err(backend)?;
    keep_key(tx, request, Some(position), recorded_at)?;
    Ok(Appended { version, position })
}

/// Stores the request's idempotency key record, if it has a key; a key stored
/// already is [`StoreError::DuplicateKey`].
fn keep_key(
    tx: &rusqlite::Transaction<'_>,
    request: &AppendRequest,
    position: Option<u64>,
    recorded_at: i64,
) -> Result<(), StoreError> {
    let Some(record) = request.idempotency_record(position) else {
        return Ok(());
    };
    let inserted = tx.prepare_cached(sql::KEEP_KEY).and_then(|mut s| {
        s.execute(params![
            record.key,
            record.aggregate_type,
            record.aggregate_id,
            record.command,
            record.fingerprint.as_ref().map(|f| f.as_bytes().as_slice()),
            to_i64(record.expected_version),
            to_i64(record.version),
            record.position.map(to_i64),
            recorded_at,
        ])
    });
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e, "eda_idempotency.key") => {
            Err(StoreError::DuplicateKey { key: record.key })
        }
        Err(e) => Err(backend(e)),
    }
}

/// Whether a failed COMMIT certainly left nothing stored.
fn commit_refused(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _)
        if matches!(e.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::DatabaseBusy
            | rusqlite::ErrorCode::DatabaseLocked))
}

fn is_unique_violation(error: &rusqlite::Error, column: &str) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, Some(message))
        if e.code == rusqlite::ErrorCode::ConstraintViolation && message.contains(column))
}

fn backend_ref(error: &rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string().into())
}
