//! Concurrent appends share statements: they queue for a few committing tasks,
//! each of which commits every append waiting in one statement.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::append::{append_alone, current_version, cut_off, Append, MAX_EVENTS_PER_APPEND};
use super::{sql, PostgresStore};
use crate::envelope::{Metadata, NewEvent, StreamId};
use crate::error::StoreError;
use crate::store::durable::{backend, to_i64, AppendRequest};
use crate::store::Appended;

impl PostgresStore {
    /// An append that may share a statement with concurrent ones: the only append
    /// in flight is sent from its caller's task; the others queue for a
    /// committing task, and start one while fewer than the most are running.
    pub(super) async fn append_batched(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
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
}

/// The appends waiting to be committed and the tasks committing them.
pub(super) struct Batcher {
    state: Mutex<BatchState>,
    max_committers: usize,
    /// [`PostgresOptions::max_batch`](super::PostgresOptions::max_batch).
    pub(super) max_batch: usize,
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
    /// No append waiting, no committing task yet.
    pub(super) fn new(max_committers: usize, max_batch: usize) -> Self {
        Batcher {
            state: Mutex::new(BatchState::default()),
            max_committers,
            max_batch,
        }
    }

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

/// Runs [`APPEND_BATCH`](sql::APPEND_BATCH); a losing append gets the conflict
/// with its aggregate's current version, or `None` if only the order check failed
/// (it is sent again on its own, where it is the transaction's first write and
/// needs no such check).
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
        .prepare_cached(sql::APPEND_BATCH)
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
