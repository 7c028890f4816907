use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use chrono::{DateTime, SubsecRound, Utc};
use std::collections::hash_map::Entry;

use foldhash::HashMap;
use uuid::Uuid;

use crate::envelope::{
    EventRef, IdempotencyRecord, Metadata, NewEvent, RecordedEvent, ReplayEvent, Snapshot, StreamId,
};
use crate::error::{LoadError, StoreError};
use crate::projection::ParkedEvent;
use crate::store::internal::Internal;
use crate::store::signal::LogSignal;
use crate::store::{
    check_checkpoint_name, check_names, check_parked, Appended, EventStore, ImmediateStore,
    LogCount, LogPage, SCAN_PAGES,
};

/// An in-process event store for tests, examples and benchmarks.
///
/// Behaves like the durable stores (payloads are serialized, appends are
/// compare-and-set on the stream version, positions are global) but keeps
/// everything in memory. Cloning gives another handle to the same events.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
    /// Every append signals its position, for the runners of every `App` on
    /// this store (or a clone of it).
    signal: Arc<LogSignal>,
}

#[derive(Default)]
struct Inner {
    /// The global log; the event at index `i` has position `i + 1`.
    log: Log,
    /// Per aggregate type, per aggregate id: the stream.
    streams: HashMap<String, HashMap<String, Stream>>,
    /// Event id -> index into `log`.
    ids: HashMap<Uuid, usize>,
    /// Metadata and time of each append, shared by the events of its batch.
    batches: Vec<Batch>,
    /// The latest snapshot of each stream that has one, by aggregate type and id.
    snapshots: HashMap<(String, String), Snapshot>,
    /// Idempotency keys and what their appends stored.
    keys: HashMap<String, IdempotencyRecord>,
    /// Runners' checkpoints, by name.
    checkpoints: HashMap<String, u64>,
    /// Runners' parked events, by name, then position.
    parked: HashMap<String, BTreeMap<u64, ParkedEvent>>,
}

struct Batch {
    metadata: Metadata,
    /// Converted to `DateTime` on read: the conversion costs more than the append.
    recorded_at: SystemTime,
}

/// An append-only list in fixed-size chunks: growing it never copies what is
/// stored, and freed chunks are reused by the allocator.
#[derive(Default)]
struct Log {
    chunks: Vec<Vec<Stored>>,
    len: usize,
}

const CHUNK: usize = 4096;

impl Log {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, event: Stored) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(event);
            self.len += 1;
        }
    }

    fn get(&self, index: usize) -> &Stored {
        &self.chunks[index / CHUNK][index % CHUNK]
    }

    fn iter_from(&self, start: usize) -> impl Iterator<Item = (usize, &Stored)> {
        (start..self.len).map(move |i| (i, self.get(i)))
    }
}

struct Stream {
    key: Arc<StreamKey>,
    /// Indexes into `log`, in version order.
    events: Vec<usize>,
}

struct StreamKey {
    aggregate_type: String,
    aggregate_id: String,
}

/// An event as kept in memory: the stream's key is shared, not copied.
struct Stored {
    event_id: Uuid,
    stream: Arc<StreamKey>,
    version: u64,
    name: std::borrow::Cow<'static, str>,
    event_version: u32,
    payload: String,
    /// Index into `Inner::batches`.
    batch: usize,
}

impl Stored {
    fn to_recorded(&self, position: usize, batches: &[Batch]) -> RecordedEvent {
        let batch = &batches[self.batch];
        RecordedEvent {
            event_id: self.event_id,
            aggregate_type: self.stream.aggregate_type.clone(),
            aggregate_id: self.stream.aggregate_id.clone(),
            version: self.version,
            position: position as u64 + 1,
            name: self.name.clone().into_owned(),
            event_version: self.event_version,
            payload: self.payload.clone(),
            metadata: batch.metadata.clone(),
            recorded_at: DateTime::<Utc>::from(batch.recorded_at),
        }
    }
}

impl Inner {
    fn stream(&self, stream: StreamId<'_>) -> Option<&Stream> {
        self.streams
            .get(stream.aggregate_type)?
            .get(stream.aggregate_id)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored events.
    pub fn len(&self) -> usize {
        self.read().log.len()
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `f` of at most `limit` of the stream's events after `after_version` (given
    /// by their index in the log).
    fn map_stream<T>(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        limit: usize,
        f: impl Fn(&Inner, usize) -> T,
    ) -> Vec<T> {
        let inner = self.read();
        let skip = usize::try_from(after_version).unwrap_or(usize::MAX);
        inner
            .stream(stream)
            .map(|s| {
                s.events
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(|&index| f(&inner, index))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic cannot leave `Inner` half-updated: appends validate before mutating.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`ImmediateStore::append_now`] under the lock, without the signal.
    fn append_locked(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: &mut Vec<NewEvent>,
        metadata: &Metadata,
        recorded_at: SystemTime,
    ) -> Result<Appended, StoreError> {
        check_names(stream, events, metadata)?;
        let mut guard = self.write();
        let Inner {
            log,
            streams,
            ids,
            batches,
            keys,
            ..
        } = &mut *guard;
        let mut target = streams
            .get_mut(stream.aggregate_type)
            .and_then(|s| s.get_mut(stream.aggregate_id));
        let actual = target.as_ref().map_or(0, |s| s.events.len() as u64);
        if actual != expected_version {
            return Err(StoreError::conflict(stream, expected_version, actual));
        }
        if let Some(key) = &metadata.idempotency_key {
            if keys.contains_key(key) {
                return Err(StoreError::DuplicateKey { key: key.clone() });
            }
        }
        if events.is_empty() {
            if let Some(record) = IdempotencyRecord::of_append(stream, actual, 0, metadata, None) {
                keys.insert(record.key.clone(), record);
            }
            let position = target.and_then(|s| s.events.last()).map_or(0, |i| i + 1) as u64;
            return Ok(Appended {
                version: actual,
                position,
            });
        }
        // Claim the ids (one hash lookup each); a duplicate releases the batch's claims.
        let first_index = log.len();
        for (i, event) in events.iter().enumerate() {
            match ids.entry(event.event_id) {
                Entry::Vacant(slot) => {
                    slot.insert(first_index + i);
                }
                Entry::Occupied(_) => {
                    for claimed in &events[..i] {
                        ids.remove(&claimed.event_id);
                    }
                    return Err(StoreError::DuplicateEvent {
                        event_id: event.event_id,
                    });
                }
            }
        }

        let target = match target.take() {
            Some(target) => target,
            None => streams
                .entry(stream.aggregate_type.to_owned())
                .or_default()
                .entry(stream.aggregate_id.to_owned())
                .or_insert_with(|| Stream {
                    key: Arc::new(StreamKey {
                        aggregate_type: stream.aggregate_type.to_owned(),
                        aggregate_id: stream.aggregate_id.to_owned(),
                    }),
                    events: Vec::new(),
                }),
        };
        let position = (log.len() + events.len()) as u64;
        if let Some(record) =
            IdempotencyRecord::of_append(stream, actual, events.len(), metadata, Some(position))
        {
            keys.insert(record.key.clone(), record);
        }
        let batch = batches.len();
        batches.push(Batch {
            metadata: metadata.clone(),
            recorded_at,
        });
        let mut version = actual;
        for event in events.drain(..) {
            version += 1;
            let index = log.len();
            target.events.push(index);
            log.push(Stored {
                event_id: event.event_id,
                stream: Arc::clone(&target.key),
                version,
                name: event.name,
                event_version: event.version,
                payload: event.payload,
                batch,
            });
        }
        Ok(Appended {
            version,
            position: log.len() as u64,
        })
    }
}

impl ImmediateStore for MemoryStore {
    fn append_now(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: &mut Vec<NewEvent>,
        metadata: &Metadata,
        recorded_at: SystemTime,
    ) -> Result<Appended, StoreError> {
        let appended =
            self.append_locked(stream, expected_version, events, metadata, recorded_at)?;
        self.signal.committed(appended.position);
        Ok(appended)
    }

    /// Releases the lock every few hundred events, so that a long replay does not
    /// hold up writers.
    fn replay_now(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        apply: &mut dyn FnMut(EventRef<'_>) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        const CHUNK_EVENTS: usize = 512;
        let mut next = usize::try_from(after_version).unwrap_or(usize::MAX);
        loop {
            let inner = self.read();
            let Some(indexes) = inner.stream(stream).map(|s| &s.events) else {
                return Ok(());
            };
            let Some(chunk) = indexes.get(next..) else {
                return Ok(());
            };
            if chunk.is_empty() {
                return Ok(());
            }
            for &index in chunk.iter().take(CHUNK_EVENTS) {
                let stored = inner.log.get(index);
                apply(EventRef {
                    position: index as u64 + 1,
                    stream,
                    version: stored.version,
                    name: &stored.name,
                    event_version: stored.event_version,
                    payload: &stored.payload,
                })?;
            }
            next += chunk.len().min(CHUNK_EVENTS);
        }
    }

    fn save_snapshot_now(
        &self,
        stream: StreamId<'_>,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let key = (
            stream.aggregate_type.to_owned(),
            stream.aggregate_id.to_owned(),
        );
        let mut inner = self.write();
        match inner.snapshots.get_mut(&key) {
            Some(kept) if kept.version > snapshot.version => {}
            Some(kept) => *kept = snapshot,
            None => {
                inner.snapshots.insert(key, snapshot);
            }
        }
        Ok(())
    }
}

impl EventStore for MemoryStore {
    fn watch_log(&self, _: Internal) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.signal.subscribe())
    }

    async fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        self.append_now(
            stream,
            expected_version,
            &mut { events },
            metadata,
            SystemTime::now(),
        )
    }

    async fn read_stream(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(
            self.map_stream(stream, after_version, usize::MAX, |inner, index| {
                inner.log.get(index).to_recorded(index, &inner.batches)
            }),
        )
    }

    async fn read_for_replay(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        Ok(
            self.map_stream(stream, after_version, limit, |inner, index| {
                let stored = inner.log.get(index);
                ReplayEvent {
                    position: index as u64 + 1,
                    version: stored.version,
                    name: stored.name.clone().into_owned(),
                    event_version: stored.event_version,
                    payload: stored.payload.clone(),
                }
            }),
        )
    }

    async fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read();
        let start = usize::try_from(after_position)
            .unwrap_or(usize::MAX)
            .min(inner.log.len());
        Ok(inner
            .log
            .iter_from(start)
            .take(limit)
            .map(|(i, e)| e.to_recorded(i, &inner.batches))
            .collect())
    }

    async fn read_all_of(
        &self,
        after_position: u64,
        limit: usize,
        names: &[&str],
    ) -> Result<LogPage, StoreError> {
        let inner = self.read();
        let start = usize::try_from(after_position)
            .unwrap_or(usize::MAX)
            .min(inner.log.len());
        let limit = limit.max(1);
        // At most as many events looked at as the trait's default reads, so that a
        // reader of rare events holds the lock a bounded while.
        let end = start
            .saturating_add(limit.saturating_mul(SCAN_PAGES))
            .min(inner.log.len());
        let events = inner
            .log
            .iter_from(start)
            .take(end - start)
            .filter(|(_, stored)| names.contains(&&*stored.name))
            .take(limit)
            .map(|(i, stored)| stored.to_recorded(i, &inner.batches))
            .collect();
        Ok(LogPage::scanned(events, limit, after_position, end as u64))
    }

    /// One pass under the read lock (appends wait for it): a runner counts
    /// once when it starts to catch up, then only the events after.
    async fn count_all_of(
        &self,
        after_position: u64,
        names: &[&str],
    ) -> Result<Option<LogCount>, StoreError> {
        let inner = self.read();
        let start = usize::try_from(after_position)
            .unwrap_or(usize::MAX)
            .min(inner.log.len());
        let events = inner
            .log
            .iter_from(start)
            .filter(|(_, stored)| names.contains(&&*stored.name))
            .count();
        let read_to = (inner.log.len() as u64).max(after_position);
        Ok(Some(LogCount::new(events as u64, read_to)))
    }

    async fn save_snapshot(
        &self,
        stream: StreamId<'_>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        self.save_snapshot_now(stream, snapshot.clone())
    }

    async fn load_snapshot(&self, stream: StreamId<'_>) -> Result<Option<Snapshot>, StoreError> {
        let inner = self.read();
        let key = (
            stream.aggregate_type.to_owned(),
            stream.aggregate_id.to_owned(),
        );
        Ok(inner.snapshots.get(&key).cloned())
    }

    async fn read_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.read().keys.get(key).cloned())
    }

    async fn read_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        check_checkpoint_name(name)?;
        Ok(self.read().checkpoints.get(name).copied())
    }

    async fn write_checkpoint(
        &self,
        name: &str,
        from: Option<u64>,
        to: u64,
    ) -> Result<(), StoreError> {
        check_checkpoint_name(name)?;
        let mut inner = self.write();
        let found = inner.checkpoints.get(name).copied();
        if found != from {
            return Err(StoreError::CheckpointMoved {
                name: name.to_owned(),
                expected: from,
                found,
            });
        }
        inner.checkpoints.insert(name.to_owned(), to);
        Ok(())
    }

    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
        check_parked(name, event)?;
        let mut inner = self.write();
        let parked = inner.parked.entry(name.to_owned()).or_default();
        match parked.get_mut(&event.position) {
            Some(already) => already.error.clone_from(&event.error),
            None => {
                let mut event = event.clone();
                // As the durable stores keep it.
                event.parked_at = event.parked_at.trunc_subsecs(6);
                parked.insert(event.position, event);
            }
        }
        Ok(())
    }

    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        check_checkpoint_name(name)?;
        let inner = self.read();
        Ok(inner
            .parked
            .get(name)
            .map(|parked| parked.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn unpark(&self, name: &str, position: u64) -> Result<bool, StoreError> {
        check_checkpoint_name(name)?;
        let mut inner = self.write();
        let Some(parked) = inner.parked.get_mut(name) else {
            return Ok(false);
        };
        let removed = parked.remove(&position).is_some();
        if parked.is_empty() {
            inner.parked.remove(name);
        }
        Ok(removed)
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let inner = self.read();
        Ok(inner
            .ids
            .get(&event_id)
            .map(|&i| inner.log.get(i).to_recorded(i, &inner.batches)))
    }

    fn as_immediate(&self) -> Option<&dyn ImmediateStore> {
        Some(self)
    }
}

impl fmt::Debug for MemoryStore {
    /// A summary: the events themselves can be millions.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.read();
        f.debug_struct("MemoryStore")
            .field("events", &inner.log.len())
            .field(
                "streams",
                &inner.streams.values().map(|s| s.len()).sum::<usize>(),
            )
            .field("snapshots", &inner.snapshots.len())
            .field("idempotency_keys", &inner.keys.len())
            .field("checkpoints", &inner.checkpoints.len())
            .field(
                "parked",
                &inner.parked.values().map(BTreeMap::len).sum::<usize>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_a_summary_not_the_events() {
        let store = MemoryStore::new();
        let stream = StreamId {
            aggregate_type: "Account",
            aggregate_id: "a",
        };
        let event = NewEvent {
            event_id: crate::new_event_id(),
            name: "Opened".into(),
            version: 1,
            payload: r#"{"secret":"do not print"}"#.into(),
        };
        let appended = store.append_now(
            stream,
            0,
            &mut vec![event],
            &Metadata::default(),
            SystemTime::now(),
        );
        assert!(appended.is_ok());
        let shown = format!("{store:?}");
        assert_eq!(
            shown,
            "MemoryStore { events: 1, streams: 1, snapshots: 0, idempotency_keys: 0, checkpoints: 0, parked: 0 }"
        );
    }
}
