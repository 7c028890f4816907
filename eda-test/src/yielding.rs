//! A store that interleaves its callers.

use eda::{Metadata, NewEvent, StreamId};

/// A store (a `MemoryStore` by default) whose every call yields to the scheduler
/// before and after, as a networked store does, so tasks interleave inside
/// `App::execute`. It forwards the events (and their counts), idempotency keys, checkpoints and
/// parked events; it keeps no snapshots.
#[derive(Clone)]
pub struct YieldingStore<S = eda::MemoryStore>(pub S);

impl Default for YieldingStore {
    fn default() -> Self {
        YieldingStore(eda::MemoryStore::new())
    }
}

impl<S: eda::EventStore> eda::EventStore for YieldingStore<S> {
    async fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<eda::Appended, eda::StoreError> {
        tokio::task::yield_now().await;
        let result = self
            .0
            .append(stream, expected_version, events, metadata)
            .await;
        tokio::task::yield_now().await;
        result
    }

    async fn read_stream(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
    ) -> Result<Vec<eda::RecordedEvent>, eda::StoreError> {
        tokio::task::yield_now().await;
        let result = eda::EventStore::read_stream(&self.0, stream, after_version).await;
        tokio::task::yield_now().await;
        result
    }

    async fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<eda::RecordedEvent>, eda::StoreError> {
        tokio::task::yield_now().await;
        eda::EventStore::read_all(&self.0, after_position, limit).await
    }

    async fn count_all_of(
        &self,
        after_position: u64,
        names: &[&str],
    ) -> Result<Option<eda::LogCount>, eda::StoreError> {
        tokio::task::yield_now().await;
        eda::EventStore::count_all_of(&self.0, after_position, names).await
    }

    async fn read_event(
        &self,
        event_id: eda::Uuid,
    ) -> Result<Option<eda::RecordedEvent>, eda::StoreError> {
        tokio::task::yield_now().await;
        let result = eda::EventStore::read_event(&self.0, event_id).await;
        tokio::task::yield_now().await;
        result
    }

    async fn read_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<eda::IdempotencyRecord>, eda::StoreError> {
        tokio::task::yield_now().await;
        let result = eda::EventStore::read_idempotency_key(&self.0, key).await;
        tokio::task::yield_now().await;
        result
    }

    async fn read_checkpoint(&self, name: &str) -> Result<Option<u64>, eda::StoreError> {
        tokio::task::yield_now().await;
        let result = eda::EventStore::read_checkpoint(&self.0, name).await;
        tokio::task::yield_now().await;
        result
    }

    async fn write_checkpoint(
        &self,
        name: &str,
        from: Option<u64>,
        to: u64,
    ) -> Result<(), eda::StoreError> {
        tokio::task::yield_now().await;
        let result = eda::EventStore::write_checkpoint(&self.0, name, from, to).await;
        tokio::task::yield_now().await;
        result
    }

    async fn park(&self, name: &str, event: &eda::ParkedEvent) -> Result<(), eda::StoreError> {
        tokio::task::yield_now().await;
        let result = eda::EventStore::park(&self.0, name, event).await;
        tokio::task::yield_now().await;
        result
    }

    async fn parked(&self, name: &str) -> Result<Vec<eda::ParkedEvent>, eda::StoreError> {
        tokio::task::yield_now().await;
        let result = eda::EventStore::parked(&self.0, name).await;
        tokio::task::yield_now().await;
        result
    }

    async fn unpark(&self, name: &str, position: u64) -> Result<bool, eda::StoreError> {
        tokio::task::yield_now().await;
        let result = eda::EventStore::unpark(&self.0, name, position).await;
        tokio::task::yield_now().await;
        result
    }
}
