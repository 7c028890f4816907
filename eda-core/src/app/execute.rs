//! [`App::execute`]: from a command to its committed events.
//!
//! One path for every store, in steps that both ways through it share: *decide*
//! (the handler on the cached or replayed state), *append* (encode, then the
//! store's compare-and-set), *commit* (apply to the cached state, a snapshot if
//! one is due). On a store with [`ImmediateStore`] the common case (a cached
//! aggregate with a free slot, a synchronous handler without services, no
//! idempotency key, a command accepted with events) runs these steps when the
//! `Execute` becomes its future (`.await` does that), without boxing one; anything
//! else, or anything that goes wrong there, runs them in `App::run`, which also
//! catches up and retries on version conflicts.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tracing::Instrument;
use uuid::Uuid;

use super::cache::Cached;
use super::snapshots::{due_snapshot, warn_if_unsaved};
use super::App;
use crate::aggregate::{no_services, stream_key, Aggregate, AggregateEvent, Handle};
use crate::codec;
use crate::command::HandledCommand;
use crate::envelope::{Metadata, NewEvent, Snapshot, StreamId};
use crate::error::{CommandError, StoreError};
use crate::event_id::{event_id_at, idempotent_event_id, unix_millis};
use crate::store::{check_idempotency_key, check_stream, Appended, ImmediateStore};

/// The pause before deciding a command again after a version conflict.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub(super) first: Duration,
    pub(super) max: Duration,
}

impl Backoff {
    /// A random pause up to `first · 2^(conflicts - 1)`, at most `max` ("full
    /// jitter": colliding writers spread out instead of retrying together).
    fn pause(&self, conflicts: u32) -> Duration {
        if self.first.is_zero() || conflicts == 0 {
            return Duration::ZERO;
        }
        let ceiling = self
            .first
            .saturating_mul(1 << (conflicts - 1).min(20))
            .min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random::<u64>() % nanos.saturating_add(1))
    }
}

/// What a command committed.
#[non_exhaustive]
pub struct Committed<A: Aggregate> {
    /// The aggregate's version after the command.
    pub version: u64,
    /// Global position of the last committed event (`None` if there were none).
    pub position: Option<u64>,
    /// The events the command committed, in order.
    pub events: Vec<A::Event>,
    /// `true` when an idempotency key matched an earlier execution: nothing was
    /// appended and these are that execution's events.
    pub duplicate: bool,
}

// By hand, not derived: a derive would require the aggregate's state to be
// `Debug`, `Clone` and `PartialEq`, and a `Committed` never holds it.
impl<A: Aggregate> fmt::Debug for Committed<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Committed")
            .field("version", &self.version)
            .field("position", &self.position)
            .field("events", &self.events)
            .field("duplicate", &self.duplicate)
            .finish()
    }
}

impl<A: Aggregate> Clone for Committed<A>
where
    A::Event: Clone,
{
    fn clone(&self) -> Self {
        Committed {
            version: self.version,
            position: self.position,
            events: self.events.clone(),
            duplicate: self.duplicate,
        }
    }
}

impl<A: Aggregate> PartialEq for Committed<A>
where
    A::Event: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.position == other.position
            && self.events == other.events
            && self.duplicate == other.duplicate
    }
}

impl App {
    /// The common case, without waiting: on a store with [`ImmediateStore`], the
    /// aggregate cached and its slot free, a synchronous handler without services
    /// or key that accepts the command, and an append that succeeds. Anything else
    /// gives the metadata back for `run`, which starts over: handlers are pure, so
    /// deciding twice is harmless, and nothing was stored. (Handlers that await or
    /// consult services go to `run` directly: it decides a rejection again, and
    /// their services would be asked twice.)
    // The large error hands the caller's metadata back, cheaper than cloning it
    // for the fast path's sake.
    #[allow(clippy::result_large_err)]
    fn try_now<C: HandledCommand>(
        &self,
        command: &C,
        mut metadata: Metadata,
        span: &tracing::Span,
    ) -> Result<Outcome<C::Aggregate>, Metadata> {
        let Some(immediate) = self.inner.store.as_immediate() else {
            return Err(metadata);
        };
        if metadata.idempotency_key.is_some() || <C::Aggregate as Handle<C>>::ASYNC {
            return Err(metadata);
        }
        let Some(no_services) = no_services::<C::Aggregate>() else {
            return Err(metadata);
        };
        let id = stream_key(command.target_id());
        let slot = self.inner.cache.slot::<C::Aggregate>(&id);
        let Some(mut guard) = slot.try_lock() else {
            return Err(metadata);
        };
        let Some(mut cached) = guard.take() else {
            return Err(metadata);
        };
        let mut events = Vec::with_capacity(1);
        let decided = cached
            .state
            .handle(command.clone(), no_services, &mut events);
        if decided.is_err() || events.is_empty() {
            // A rejection or no-op decided on a cached state is confirmed by `run`.
            *guard = Some(cached);
            return Err(metadata);
        }
        metadata.command = Some(C::NAME.into());
        let stream = StreamId {
            aggregate_type: <C::Aggregate as Aggregate>::TYPE,
            aggregate_id: &id,
        };
        let appended = append_now(immediate, stream, cached.version, &mut events, &metadata);
        let outcome = match appended {
            Ok(Ok(appended)) => {
                let (committed, snapshot) = commit(&mut cached, events, appended, span);
                self.committed(committed.position);
                if let Some(snapshot) = snapshot {
                    warn_if_unsaved(stream, immediate.save_snapshot_now(stream, snapshot));
                }
                Ok(Ok(committed))
            }
            Err(encode_error) => Ok(Err(encode_error)),
            // A conflict, or another store error: `run` catches up and decides
            // again, or reports it.
            Ok(Err(_)) => Err(metadata),
        };
        *guard = Some(cached);
        outcome
    }

    // Rare paths (replay, catch-up, idempotency look-ups) are boxed: the future of
    // `run` stays small, which keeps its own allocation on the allocator's fast path.
    /// Executes a command, waiting where needed: for the slot of the instance,
    /// a replay, the handler, the store, a look-up of its idempotency key.
    async fn run<C: HandledCommand>(
        &self,
        command: C,
        mut metadata: Metadata,
        span: tracing::Span,
    ) -> Result<Committed<C::Aggregate>, CommandError<<C::Aggregate as Aggregate>::Error>> {
        let Some(services) = self.services::<C::Aggregate>() else {
            return Err(CommandError::MissingServices {
                aggregate_type: <C::Aggregate as Aggregate>::TYPE,
                services: std::any::type_name::<<C::Aggregate as Aggregate>::Services>(),
            });
        };
        let id = stream_key(command.target_id());
        let stream = StreamId {
            aggregate_type: <C::Aggregate as Aggregate>::TYPE,
            aggregate_id: &id,
        };
        check_stream(stream).map_err(CommandError::Store)?;
        if let Some(key) = &metadata.idempotency_key {
            check_idempotency_key(key).map_err(CommandError::Store)?;
            metadata.command_fingerprint = command.fingerprint();
            let fingerprint = metadata.command_fingerprint;
            if let Some(first) = Box::pin(self.first_outcome::<C>(key, &id, fingerprint)).await? {
                return Ok(first);
            }
        }
        metadata.command = Some(C::NAME.into());

        let slot = self.inner.cache.slot::<C::Aggregate>(&id);
        let mut guard = slot.lock().await;
        // Taken out while in use: if anything below fails or panics, the slot stays
        // empty and the next command replays instead of trusting a doubtful state.
        // `fresh`: the state was just read from the store. A cached state may be
        // behind other writers; appends are protected by the version check, and a
        // rejection or a no-op decided on it is confirmed after catching up.
        let (mut cached, mut fresh) = match guard.take() {
            Some(cached) => (cached, false),
            None => (Box::pin(self.replay::<C::Aggregate>(&id)).await?, true),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut events = Vec::with_capacity(1);
            let decided = if <C::Aggregate as Handle<C>>::ASYNC {
                cached
                    .state
                    .handle_async(command.clone(), services, &mut events)
                    .await
            } else {
                cached.state.handle(command.clone(), services, &mut events)
            };
            if !fresh && (decided.is_err() || events.is_empty()) {
                let before = cached.version;
                Box::pin(self.catch_up(&mut cached, &id)).await?;
                fresh = true;
                if cached.version != before {
                    continue;
                }
            }
            if decided.is_err() {
                // Another execution of this idempotent command may have committed
                // while this one waited: its outcome is this one's too. (A keyed
                // no-op needs no look-up here: its append carries the key, and a
                // winner shows as a stored key there.)
                if let Some(first) = self.committed_meanwhile::<C>(&metadata, &id).await? {
                    *guard = Some(cached);
                    return Ok(first);
                }
            }
            if let Err(rejection) = decided {
                *guard = Some(cached);
                return Err(CommandError::Rejected(rejection));
            }
            if events.is_empty() && metadata.idempotency_key.is_none() {
                let version = cached.version;
                *guard = Some(cached);
                return Ok(Committed {
                    version,
                    position: None,
                    events,
                    duplicate: false,
                });
            }
            // Appended even without events when the command has a key: the store
            // then remembers the key's outcome, a no-op, at this version.
            let appended = self
                .append::<C::Aggregate>(stream, cached.version, &mut events, &metadata)
                .await?;
            match appended {
                Ok(appended) => {
                    let (committed, snapshot) = commit(&mut cached, events, appended, &span);
                    self.committed(committed.position);
                    *guard = Some(cached);
                    if let Some(snapshot) = snapshot {
                        self.save_snapshot(stream, snapshot).await;
                    }
                    return Ok(committed);
                }
                Err(StoreError::Conflict {
                    actual, expected, ..
                }) => {
                    if attempts > self.inner.max_conflict_retries {
                        return Err(CommandError::Conflict {
                            stream: stream.into_owned(),
                            expected,
                            actual,
                            attempts,
                        });
                    }
                    tracing::debug!(expected, actual, attempts, "version conflict; catching up");
                    // Writers that collided would collide again if they all
                    // retried at once: each waits a random while first.
                    let backoff = &self.inner.conflict_backoff;
                    let pause = backoff.pause(attempts);
                    if !pause.is_zero() {
                        futures_timer::Delay::new(pause).await;
                    }
                    if actual < cached.version {
                        // The store is behind the state this App held (a database
                        // restored from a backup): start over from the store.
                        cached = Box::pin(self.replay::<C::Aggregate>(&id)).await?;
                    } else {
                        Box::pin(self.catch_up(&mut cached, &id)).await?;
                    }
                    fresh = true;
                    if let Some(first) = self.committed_meanwhile::<C>(&metadata, &id).await? {
                        *guard = Some(cached);
                        return Ok(first);
                    }
                }
                Err(
                    duplicate @ (StoreError::DuplicateEvent { .. }
                    | StoreError::DuplicateKey { .. }),
                ) => {
                    // With an idempotency key: a concurrent execution won the race.
                    drop(guard);
                    if let Some(first) = self.committed_meanwhile::<C>(&metadata, &id).await? {
                        return Ok(first);
                    }
                    return Err(CommandError::Store(duplicate));
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }

    /// The append step: encodes `events` and appends them at `expected_version`,
    /// without waiting on a store with [`ImmediateStore`], else awaiting its
    /// `append`. An event that cannot be stored as decided is an error before
    /// anything is sent.
    async fn append<A: Aggregate>(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: &mut [A::Event],
        metadata: &Metadata,
    ) -> Result<Result<Appended, StoreError>, CommandError<A::Error>> {
        if let Some(immediate) = self.inner.store.as_immediate() {
            return append_now(immediate, stream, expected_version, events, metadata);
        }
        let span = append_span(stream, expected_version, events.len());
        let mut encoded = Vec::with_capacity(events.len());
        let key = metadata.idempotency_key.as_deref();
        encode(events, key, &mut encoded, SystemTime::now())?;
        let store = &self.inner.store;
        let appended = store.append(stream, expected_version, encoded, metadata);
        Ok(appended.instrument(span).await)
    }
}

/// A command about to be executed; `.await` it. Built by [`App::execute`].
#[must_use = "a command does nothing until it is awaited"]
pub struct Execute<'a, C> {
    pub(super) app: &'a App,
    pub(super) command: C,
    pub(super) metadata: Metadata,
}

impl<C: fmt::Debug> fmt::Debug for Execute<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Execute")
            .field("command", &self.command)
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl<C: HandledCommand> Execute<'_, C> {
    /// Makes the command idempotent: executing it again with the same key appends
    /// nothing and returns the first execution's events (with `duplicate: true`).
    /// The event ids are derived from the key, so a concurrent duplicate is refused
    /// by the store itself.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.metadata.idempotency_key = Some(key.into());
        self
    }

    /// Sets the correlation id stored with the events.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.metadata.correlation_id = Some(id);
        self
    }

    /// Sets the causation id stored with the events.
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.metadata.causation_id = Some(id);
        self
    }

    /// Adds a user key-value stored with the events.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.user.insert(key.into(), value.into());
        self
    }
}

type Outcome<A> = Result<Committed<A>, CommandError<<A as Aggregate>::Error>>;

/// The future of an [`Execute`]: already complete when the command could finish
/// without waiting, otherwise the running command.
#[must_use = "futures do nothing unless polled"]
pub struct ExecuteFuture<'a, A: Aggregate> {
    state: ExecuteState<'a, A>,
}

enum ExecuteState<'a, A: Aggregate> {
    Done(std::future::Ready<Outcome<A>>),
    Running(Pin<Box<dyn Future<Output = Outcome<A>> + Send + 'a>>),
}

impl<A: Aggregate> fmt::Debug for ExecuteFuture<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ExecuteState::Done(_) => "done",
            ExecuteState::Running(_) => "running",
        };
        f.debug_struct("ExecuteFuture")
            .field("state", &state)
            .finish()
    }
}

impl<A: Aggregate> Future for ExecuteFuture<'_, A> {
    type Output = Outcome<A>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().state {
            ExecuteState::Done(ready) => Pin::new(ready).poll(cx),
            ExecuteState::Running(running) => running.as_mut().poll(cx),
        }
    }
}

impl<'a, C: HandledCommand> IntoFuture for Execute<'a, C> {
    type Output = Result<Committed<C::Aggregate>, CommandError<<C::Aggregate as Aggregate>::Error>>;
    type IntoFuture = ExecuteFuture<'a, C::Aggregate>;

    fn into_future(self) -> Self::IntoFuture {
        let span = tracing::debug_span!(
            "eda.execute",
            command = C::NAME,
            aggregate_type = <C::Aggregate as Aggregate>::TYPE,
            aggregate_id = tracing::field::Empty,
            version = tracing::field::Empty,
        );
        if !span.is_disabled() {
            span.record(
                "aggregate_id",
                tracing::field::display(self.command.target_id()),
            );
        }
        #[allow(clippy::result_large_err)]
        let metadata = match span.in_scope(|| self.app.try_now(&self.command, self.metadata, &span))
        {
            Ok(done) => {
                return ExecuteFuture {
                    state: ExecuteState::Done(std::future::ready(done)),
                }
            }
            Err(metadata) => metadata,
        };
        let running = self
            .app
            .run(self.command, metadata, span.clone())
            .instrument(span);
        ExecuteFuture {
            state: ExecuteState::Running(Box::pin(running)),
        }
    }
}

/// The span of one append.
fn append_span(stream: StreamId<'_>, expected_version: u64, events: usize) -> tracing::Span {
    tracing::debug_span!(
        "eda.append",
        aggregate_type = stream.aggregate_type,
        aggregate_id = %stream.aggregate_id,
        expected_version,
        events,
    )
}

/// The append step on an [`ImmediateStore`]: the encoded events go through a
/// reused buffer and share one clock read with the append.
fn append_now<E: AggregateEvent, Err>(
    immediate: &dyn ImmediateStore,
    stream: StreamId<'_>,
    expected_version: u64,
    events: &mut [E],
    metadata: &Metadata,
) -> Result<Result<Appended, StoreError>, CommandError<Err>> {
    let _span = append_span(stream, expected_version, events.len()).entered();
    let now = SystemTime::now();
    let mut buffer = ENCODED.take();
    let key = metadata.idempotency_key.as_deref();
    let appended = encode(events, key, &mut buffer, now)
        .map(|()| immediate.append_now(stream, expected_version, &mut buffer, metadata, now));
    ENCODED.set(buffer);
    appended
}

thread_local! {
    /// Encoded events on their way into an `ImmediateStore` (emptied by each append).
    static ENCODED: std::cell::Cell<Vec<NewEvent>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Encodes `events` into `out` (cleared first), with ids derived from the
/// idempotency key if there is one. Each event must read back from its payload as
/// itself ([`codec::encode_checked`]), in every build: what the cache applies and
/// what a replay applies are then the same.
fn encode<E: AggregateEvent, Err>(
    events: &mut [E],
    key: Option<&str>,
    out: &mut Vec<NewEvent>,
    now: SystemTime,
) -> Result<(), CommandError<Err>> {
    out.clear();
    // One clock read per command; the random bits keep ids within a batch unique.
    let millis = unix_millis(now);
    for (i, event) in events.iter_mut().enumerate() {
        let payload = codec::encode_checked(event).map_err(|source| CommandError::Encode {
            event: event.name(),
            source,
        })?;
        let event_id = match key {
            Some(key) => idempotent_event_id(key, i),
            None => event_id_at(millis),
        };
        out.push(NewEvent {
            event_id,
            name: event.name().into(),
            version: event.version(),
            payload,
        });
    }
    Ok(())
}

/// The commit step: applies the committed events to the cached state, and
/// returns what was committed and the snapshot the commit made due, if any.
fn commit<A: Aggregate>(
    cached: &mut Cached<A>,
    events: Vec<A::Event>,
    appended: Appended,
    span: &tracing::Span,
) -> (Committed<A>, Option<Snapshot>) {
    let before = cached.version;
    for event in &events {
        cached.state.apply(event);
    }
    cached.version = appended.version;
    span.record("version", appended.version);
    let committed = Committed {
        version: appended.version,
        position: (!events.is_empty()).then_some(appended.position),
        events,
        duplicate: false,
    };
    (committed, due_snapshot(cached, before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_backoff_is_random_below_a_doubling_ceiling() {
        let backoff = Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(50),
        };
        assert_eq!(backoff.pause(0), Duration::ZERO);
        for (conflicts, ceiling) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 50), (40, 50)] {
            let ceiling = Duration::from_millis(ceiling);
            let pauses: Vec<_> = (0..2_000).map(|_| backoff.pause(conflicts)).collect();
            assert!(pauses.iter().all(|p| *p <= ceiling), "{conflicts}");
            // Spread over the whole range, not stuck at one end.
            assert!(pauses.iter().any(|p| *p < ceiling / 4), "{conflicts}");
            assert!(pauses.iter().any(|p| *p > ceiling * 3 / 4), "{conflicts}");
        }
        let off = Backoff {
            first: Duration::ZERO,
            max: Duration::from_millis(50),
        };
        assert_eq!(off.pause(5), Duration::ZERO);
    }
}
