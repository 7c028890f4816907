//! A `MemoryStore` reached through a chosen path: with or without its immediate
//! operations, suspending or not. The command-path tests compare the paths; the
//! command benchmark prices them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use eda::{
    Appended, EventRef, EventStore, IdempotencyRecord, ImmediateStore, LoadError, LogCount,
    LogPage, MemoryStore, Metadata, NewEvent, ParkedEvent, RecordedEvent, ReplayEvent, Snapshot,
    StoreError, StreamId, Uuid,
};

/// How a [`Routed`] store lets `App` reach the `MemoryStore` inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through [`ImmediateStore`], which the wrapper implements by forwarding:
    /// `App`'s in-process path.
    Immediate,
    /// Without `ImmediateStore`: every call is awaited, as on a durable store, but
    /// completes at once.
    Awaited,
    /// Without `ImmediateStore`, and every call suspends first (yields to the
    /// scheduler), as a networked store does.
    Suspending,
    /// The control of path comparisons: `Immediate`, except that immediate
    /// snapshots are dropped.
    LosesSnapshots,
    /// The control of "applied once": `Immediate`, except that `read_all_of`
    /// reports the log read no further than where it started, so a reader gets
    /// the same events again.
    RepeatsReads,
}

/// A `MemoryStore` behind a chosen [`Route`]: every call forwarded, snapshots
/// included, and the appends that reach the async `append` counted.
#[derive(Clone)]
pub struct Routed {
    inner: MemoryStore,
    route: Route,
    async_appends: Arc<AtomicUsize>,
    /// Appends to this aggregate id fail (the store is down for it).
    failing: Arc<Mutex<Option<String>>>,
}

impl Routed {
    /// An empty store behind `route`.
    pub fn new(route: Route) -> Self {
        Routed {
            inner: MemoryStore::new(),
            route,
            async_appends: Arc::default(),
            failing: Arc::default(),
        }
    }

    /// Makes every append to aggregate id `id` fail with `StoreError::Backend`
    /// (`None`: none fails), on every route.
    pub fn fail_appends_to(&self, id: Option<&str>) {
        *self.failing.lock().unwrap() = id.map(str::to_owned);
    }

    fn check_failing(&self, stream: StreamId<'_>) -> Result<(), StoreError> {
        match &*self.failing.lock().unwrap() {
            Some(id) if id == stream.aggregate_id => Err(StoreError::Backend(
                format!("appends to `{id}` fail").into(),
            )),
            _ => Ok(()),
        }
    }

    /// How many appends came through the async `EventStore::append`.
    pub fn async_appends(&self) -> usize {
        self.async_appends.load(Ordering::Relaxed)
    }

    async fn suspend(&self) {
        if self.route == Route::Suspending {
            tokio::task::yield_now().await;
        }
    }
}

impl ImmediateStore for Routed {
    fn append_now(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: &mut Vec<NewEvent>,
        metadata: &Metadata,
        recorded_at: SystemTime,
    ) -> Result<Appended, StoreError> {
        self.check_failing(stream)?;
        self.inner
            .append_now(stream, expected_version, events, metadata, recorded_at)
    }

    fn replay_now(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        apply: &mut dyn FnMut(EventRef<'_>) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        self.inner.replay_now(stream, after_version, apply)
    }

    fn save_snapshot_now(
        &self,
        stream: StreamId<'_>,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        match self.route {
            Route::LosesSnapshots => Ok(()),
            _ => self.inner.save_snapshot_now(stream, snapshot),
        }
    }
}

impl EventStore for Routed {
    async fn append(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: Vec<NewEvent>,
        metadata: &Metadata,
    ) -> Result<Appended, StoreError> {
        self.async_appends.fetch_add(1, Ordering::Relaxed);
        self.suspend().await;
        self.check_failing(stream)?;
        self.inner
            .append(stream, expected_version, events, metadata)
            .await
    }

    async fn read_stream(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.suspend().await;
        self.inner.read_stream(stream, after_version).await
    }

    async fn read_all(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after_position, limit).await
    }

    async fn read_all_of(
        &self,
        after_position: u64,
        limit: usize,
        names: &[&str],
    ) -> Result<LogPage, StoreError> {
        let mut page = self.inner.read_all_of(after_position, limit, names).await?;
        if self.route == Route::RepeatsReads {
            page.read_to = after_position;
        }
        Ok(page)
    }

    async fn count_all_of(
        &self,
        after_position: u64,
        names: &[&str],
    ) -> Result<Option<LogCount>, StoreError> {
        self.inner.count_all_of(after_position, names).await
    }

    async fn read_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.read_event(id).await
    }

    async fn read_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.suspend().await;
        self.inner.read_idempotency_key(key).await
    }

    async fn read_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.suspend().await;
        self.inner.read_checkpoint(name).await
    }

    async fn write_checkpoint(
        &self,
        name: &str,
        from: Option<u64>,
        to: u64,
    ) -> Result<(), StoreError> {
        self.suspend().await;
        self.inner.write_checkpoint(name, from, to).await
    }

    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
        self.suspend().await;
        self.inner.park(name, event).await
    }

    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        self.suspend().await;
        self.inner.parked(name).await
    }

    async fn unpark(&self, name: &str, position: u64) -> Result<bool, StoreError> {
        self.suspend().await;
        self.inner.unpark(name, position).await
    }

    async fn save_snapshot(
        &self,
        stream: StreamId<'_>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        self.suspend().await;
        self.inner.save_snapshot(stream, snapshot).await
    }

    async fn load_snapshot(&self, stream: StreamId<'_>) -> Result<Option<Snapshot>, StoreError> {
        self.suspend().await;
        self.inner.load_snapshot(stream).await
    }

    async fn read_for_replay(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<ReplayEvent>, StoreError> {
        self.suspend().await;
        self.inner
            .read_for_replay(stream, after_version, limit)
            .await
    }

    fn as_immediate(&self) -> Option<&dyn ImmediateStore> {
        match self.route {
            Route::Awaited | Route::Suspending => None,
            Route::Immediate | Route::LosesSnapshots | Route::RepeatsReads => Some(self),
        }
    }
}
