use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::Utc;
use uuid::Uuid;

use crate::envelope::{Metadata, NewEvent, RecordedEvent, StreamId};
use crate::error::StoreError;
use crate::store::{Appended, EventStore};

/// An in-process event store for tests, examples and benchmarks.
///
/// Behaves like the durable stores (payloads are serialized, appends are
/// compare-and-set on the stream version, positions are global) but keeps
/// everything in memory. Cloning gives another handle to the same events.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The global log; `log[i]` has position `i + 1`.
    log: Vec<RecordedEvent>,
    /// Per aggregate type, per aggregate id: indexes into `log`, in version order.
    streams: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Event id -> index into `log`.
    ids: HashMap<Uuid, usize>,
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic cannot leave `Inner` half-updated: appends validate before mutating.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn append_now(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        let mut inner = self.write();
        let inner = &mut *inner;
        let indexes = inner
            .streams
            .get(stream.aggregate_type)
            .and_then(|s| s.get(stream.aggregate_id));
        let actual = indexes.map_or(0, |v| v.len() as u64);
        if actual != expected_version {
            return Err(StoreError::Conflict {
                aggregate_type: stream.aggregate_type.to_owned(),
                aggregate_id: stream.aggregate_id.to_owned(),
                expected: expected_version,
                actual,
            });
        }
        if events.is_empty() {
            let position = indexes.and_then(|v| v.last()).map_or(0, |i| i + 1) as u64;
            return Ok(Appended {
                version: actual,
                position,
            });
        }
        for (i, event) in events.iter().enumerate() {
            let stored = inner.ids.contains_key(&event.event_id);
            if stored || events[..i].iter().any(|e| e.event_id == event.event_id) {
                return Err(StoreError::DuplicateEvent {
                    event_id: event.event_id,
                });
            }
        }

        let recorded_at = Utc::now();
        let ids = match inner.streams.get_mut(stream.aggregate_type) {
            Some(by_id) => by_id,
            None => inner
                .streams
                .entry(stream.aggregate_type.to_owned())
                .or_default(),
        };
        let indexes = match ids.get_mut(stream.aggregate_id) {
            Some(indexes) => indexes,
            None => ids.entry(stream.aggregate_id.to_owned()).or_default(),
        };
        let mut version = actual;
        for event in events {
            version += 1;
            let index = inner.log.len();
            indexes.push(index);
            inner.ids.insert(event.event_id, index);
            inner.log.push(RecordedEvent {
                event_id: event.event_id,
                aggregate_type: stream.aggregate_type.to_owned(),
                aggregate_id: stream.aggregate_id.to_owned(),
                version,
                position: index as u64 + 1,
                name: event.name.into_owned(),
                event_version: event.version,
                payload: event.payload,
                metadata: metadata.clone(),
                recorded_at,
            });
        }
        Ok(Appended {
            version,
            position: inner.log.len() as u64,
        })
    }
}

impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        self.append_now(stream, expected_version, events, metadata)
    }

    async fn read_stream(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.read();
        let indexes = inner
            .streams
            .get(stream.aggregate_type)
            .and_then(|s| s.get(stream.aggregate_id));
        let skip = usize::try_from(after_version).unwrap_or(usize::MAX);
        Ok(indexes
            .map(|v| v.iter().skip(skip).map(|&i| inner.log[i].clone()).collect())
            .unwrap_or_default())
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
        Ok(inner.log[start..].iter().take(limit).cloned().collect())
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let inner = self.read();
        Ok(inner.ids.get(&event_id).map(|&i| inner.log[i].clone()))
    }
}
