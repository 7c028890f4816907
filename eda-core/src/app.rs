use std::any::{Any, TypeId};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;
use uuid::Uuid;

use crate::aggregate::{no_services, stream_key, Aggregate, AggregateEvent, Handle};
use crate::cache::{Cache, Cached};
use crate::codec;
use crate::command::HandledCommand;
use crate::envelope::{
    event_id_at, unix_millis, EventRef, Metadata, NewEvent, OwnedStreamId, ReplayEvent, Snapshot,
    StreamId,
};
use crate::error::{CommandError, DecodeError, LoadError, RegistryError, StoreError};
use crate::registry::registry;
use crate::store::memory::MemoryStore;
use crate::store::{check_idempotency_key, check_stream, Appended, DynEventStore, EventStore};

/// How many events replay reads from a durable store at a time: a long stream is
/// decoded page by page, never held in memory whole.
const REPLAY_PAGE: usize = 1_000;

/// The entry point: executes commands and loads aggregates against one event store.
///
/// `App` is a cheap `Clone` handle (`Send + Sync + 'static`); the store behind it is
/// chosen at run time, so the same code runs on [`MemoryStore`](crate::MemoryStore)
/// in tests and on a durable store in production.
///
/// ```
/// use eda::prelude::*;
///
/// #[event]
/// #[derive(Debug)]
/// pub struct Opened { pub owner: String }
///
/// #[command]
/// #[derive(Debug, Clone)]
/// pub struct Open { #[aggregate_id] pub id: String, pub owner: String }
///
/// #[derive(Debug, Default)]
/// pub struct Account { owner: Option<String> }
///
/// #[derive(Debug)]
/// pub enum AccountError { AlreadyOpen }
/// # impl std::fmt::Display for AccountError {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("already open") }
/// # }
/// # impl std::error::Error for AccountError {}
///
/// #[aggregate(error = AccountError)]
/// impl Account {
///     #[handle]
///     fn open(&self, cmd: Open) -> Result<Opened, AccountError> {
///         match self.owner {
///             Some(_) => Err(AccountError::AlreadyOpen),
///             None => Ok(Opened { owner: cmd.owner }),
///         }
///     }
///     #[apply]
///     fn opened(&mut self, e: &Opened) { self.owner = Some(e.owner.clone()); }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let app = App::new(MemoryStore::new());
/// let open = Open { id: "a-1".into(), owner: "ada".into() };
/// let done = app.execute(open.clone()).await?;
/// assert_eq!(done.version, 1);
/// assert!(matches!(app.execute(open).await, Err(CommandError::Rejected(AccountError::AlreadyOpen))));
/// let account: Account = app.load(&"a-1".to_string()).await?;
/// assert_eq!(account.owner.as_deref(), Some("ada"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    store: Box<dyn DynEventStore>,
    cache: Cache,
    max_conflict_retries: u32,
    conflict_backoff: Backoff,
    services: ServiceMap,
}

/// The pause before deciding a command again after a version conflict.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    first: Duration,
    max: Duration,
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

/// Service values by type, each shared by every aggregate that declares it. Filled
/// by the builder and read-only afterwards, so look-ups take no lock.
type ServiceMap = foldhash::HashMap<TypeId, Service>;

struct Service {
    value: Box<dyn Any + Send + Sync>,
    /// For `Debug`: a `dyn Any` cannot say what it holds.
    type_name: &'static str,
}

fn service_names(services: &ServiceMap) -> Vec<&'static str> {
    let mut names: Vec<_> = services.values().map(|s| s.type_name).collect();
    names.sort_unstable();
    names
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("max_conflict_retries", &self.inner.max_conflict_retries)
            .field("services", &service_names(&self.inner.services))
            .finish_non_exhaustive()
    }
}

/// Configures an [`App`]: `App::builder(store).max_conflict_retries(3).build()?`.
#[must_use]
pub struct AppBuilder {
    store: Box<dyn DynEventStore>,
    cache_capacity: usize,
    max_conflict_retries: u32,
    conflict_backoff: Backoff,
    services: ServiceMap,
}

impl fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppBuilder")
            .field("cache_capacity", &self.cache_capacity)
            .field("max_conflict_retries", &self.max_conflict_retries)
            .field("services", &service_names(&self.services))
            .finish_non_exhaustive()
    }
}

impl AppBuilder {
    /// How many times a command is decided again after a version conflict before
    /// [`CommandError::Conflict`] is returned. Default: 50 (with the pauses of
    /// [`conflict_backoff`](Self::conflict_backoff) between them).
    pub fn max_conflict_retries(mut self, retries: u32) -> Self {
        self.max_conflict_retries = retries;
        self
    }

    /// How long to wait before deciding a command again after a version conflict:
    /// a random pause up to `first`, doubling with each further conflict of the
    /// same command, at most `max`. Default: 2 ms, at most 100 ms.
    /// `Duration::ZERO` retries at once.
    pub fn conflict_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.conflict_backoff = Backoff { first, max };
        self
    }

    /// How many instances of each aggregate type stay loaded between commands.
    /// `0` turns the cache off (every command replays its stream). Default: 10,000.
    pub fn cache_capacity(mut self, instances: usize) -> Self {
        self.cache_capacity = instances;
        self
    }

    /// Gives the handlers of every aggregate declaring `services = S` this value.
    ///
    /// One value per type: giving a second value of the same type replaces the first.
    /// Aggregates without `services =` need nothing. Executing a command of an
    /// aggregate whose services were not given fails with
    /// [`CommandError::MissingServices`].
    ///
    /// A handler may run more than once for one command (again after a version
    /// conflict, with the state caught up), so the services it calls must tolerate
    /// that: queries, or idempotent requests.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use eda::prelude::*;
    ///
    /// /// What the bank's handlers consult; a trait object, so tests can swap it.
    /// pub struct BankServices { pub fraud: Arc<dyn Fn(u64) -> bool + Send + Sync> }
    ///
    /// #[event] #[derive(Debug)] pub struct Withdrawn { pub amount: u64 }
    /// #[command] #[derive(Debug, Clone)]
    /// pub struct Withdraw { #[aggregate_id] pub id: String, pub amount: u64 }
    /// #[derive(Debug, Default)] pub struct Account;
    /// #[derive(Debug)] pub enum AccountError { Suspicious }
    ///
    /// #[aggregate(error = AccountError, services = BankServices)]
    /// impl Account {
    ///     #[handle]
    ///     fn withdraw(&self, cmd: Withdraw, bank: &BankServices) -> Result<Withdrawn, AccountError> {
    ///         if (bank.fraud)(cmd.amount) { return Err(AccountError::Suspicious); }
    ///         Ok(Withdrawn { amount: cmd.amount })
    ///     }
    ///     #[apply] fn withdrawn(&mut self, _: &Withdrawn) {}
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let bank = BankServices { fraud: Arc::new(|amount| amount > 1_000) };
    /// let app = App::builder(MemoryStore::new()).services(bank).build()?;
    /// let small = Withdraw { id: "a".into(), amount: 10 };
    /// assert_eq!(app.execute(small.clone()).await.unwrap().version, 1);
    /// let large = Withdraw { id: "a".into(), amount: 5_000 };
    /// assert!(matches!(app.execute(large).await, Err(CommandError::Rejected(AccountError::Suspicious))));
    ///
    /// let without = App::new(MemoryStore::new());
    /// assert!(matches!(without.execute(small).await, Err(CommandError::MissingServices { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn services<S: Send + Sync + 'static>(mut self, value: S) -> Self {
        let service = Service {
            value: Box::new(value),
            type_name: std::any::type_name::<S>(),
        };
        self.services.insert(TypeId::of::<S>(), service);
        self
    }

    /// Builds the `App`, failing if two event types share a name and version.
    pub fn build(self) -> Result<App, RegistryError> {
        registry().check()?;
        Ok(App {
            inner: Arc::new(Inner {
                store: self.store,
                cache: Cache::new(self.cache_capacity),
                max_conflict_retries: self.max_conflict_retries,
                conflict_backoff: self.conflict_backoff,
                services: self.services,
            }),
        })
    }
}

/// What a command committed.
#[derive(Debug, Clone, PartialEq)]
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

impl App {
    /// An `App` on `store` with the default settings.
    ///
    /// # Panics
    /// If two event types in the program share a name and version (a programming
    /// error, reported with both type paths). [`App::builder`] returns it instead.
    pub fn new(store: impl EventStore) -> App {
        match App::builder(store).build() {
            Ok(app) => app,
            Err(e) => panic!("{e}"),
        }
    }

    /// An [`AppBuilder`] on `store`.
    pub fn builder(store: impl EventStore) -> AppBuilder {
        AppBuilder {
            store: Box::new(store),
            cache_capacity: 10_000,
            max_conflict_retries: 50,
            conflict_backoff: Backoff {
                first: Duration::from_millis(2),
                max: Duration::from_millis(100),
            },
            services: ServiceMap::default(),
        }
    }

    /// Executes a command: load (cached, or replay), decide, append at the version
    /// decided on, and on a version conflict catch up and decide again.
    ///
    /// Await the returned [`Execute`] directly, or set an idempotency key or
    /// metadata on it first.
    pub fn execute<C: HandledCommand>(&self, command: C) -> Execute<'_, C> {
        Execute {
            app: self,
            command,
            metadata: Metadata::default(),
        }
    }

    /// Closes the store behind this `App` (and its clones): see
    /// [`EventStore::close`]. On SQLite this leaves the whole database in its
    /// `.db` file; call it before the program ends.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.store.close().await
    }

    /// How many instances of `A` this `App` keeps loaded (at most
    /// [`AppBuilder::cache_capacity`] once no command is running), for metrics.
    pub fn cached_instances<A: Aggregate>(&self) -> usize {
        self.inner.cache.len::<A>()
    }

    /// Rebuilds an aggregate's current state from its events.
    pub async fn load<A: Aggregate>(&self, id: &A::Id) -> Result<A, LoadError> {
        self.load_with_version(id).await.map(|(state, _)| state)
    }

    /// Rebuilds an aggregate's state and returns it with its stream version.
    pub async fn load_with_version<A: Aggregate>(&self, id: &A::Id) -> Result<(A, u64), LoadError> {
        let id = stream_key(id);
        check_stream(StreamId {
            aggregate_type: A::TYPE,
            aggregate_id: &id,
        })?;
        let span = tracing::debug_span!(
            "eda.load",
            aggregate_type = A::TYPE,
            aggregate_id = %id,
            version = tracing::field::Empty,
        );
        let loaded = self.replay::<A>(&id).instrument(span.clone()).await?;
        span.record("version", loaded.version);
        Ok((loaded.state, loaded.version))
    }

    async fn replay<A: Aggregate>(&self, id: &str) -> Result<Cached<A>, LoadError> {
        let mut cached = Cached {
            state: A::default(),
            version: 0,
        };
        if A::SNAPSHOT_EVERY > 0 && self.replay_from_snapshot(&mut cached, id).await? {
            return Ok(cached);
        }
        self.catch_up(&mut cached, id).await?;
        Ok(cached)
    }

    /// Loads the stream's snapshot and the events after it. Returns whether that
    /// gave the current state; if not (no usable snapshot, a tail that does not
    /// follow on from it, a store error), `cached` holds a consistent prefix and
    /// the caller reads the rest.
    async fn replay_from_snapshot<A: Aggregate>(
        &self,
        cached: &mut Cached<A>,
        id: &str,
    ) -> Result<bool, LoadError> {
        let stream = StreamId {
            aggregate_type: A::TYPE,
            aggregate_id: id,
        };
        let read = self.inner.store.read_from_snapshot(stream, REPLAY_PAGE);
        let (snapshot, tail) = match read.await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(aggregate_type = A::TYPE, aggregate_id = id, %error, "snapshot not loaded; replaying");
                return Ok(false);
            }
        };
        match snapshot.as_ref().map(|s| restore::<A>(s, id)) {
            // The stream must hold the event the snapshot ends with: a snapshot
            // ahead of its stream (a restored backup, events removed by hand)
            // would make every append conflict forever.
            Some(Some(state)) if tail.first().map(|e| e.version) == Some(state.version) => {
                *cached = state
            }
            Some(Some(state)) => {
                tracing::warn!(
                    aggregate_type = A::TYPE,
                    aggregate_id = id,
                    snapshot_version = state.version,
                    "the snapshot is ahead of its stream; replaying"
                );
                return Ok(false);
            }
            Some(None) => return Ok(false),
            None => {}
        }
        // The snapshot and the tail may come from two reads with a snapshot saved in
        // between: events the state holds are skipped, and a gap is not trusted.
        if apply_following(cached, stream, &tail)?.is_some() {
            return Ok(false);
        }
        // A page exactly full: the caller reads on from here.
        Ok(tail.len() != REPLAY_PAGE)
    }

    /// Stores a snapshot. A failure is logged, not returned: the events are
    /// committed, and a missing snapshot only costs replay time.
    async fn save_snapshot<A: Aggregate>(&self, id: &str, snapshot: Snapshot) {
        let stream = StreamId {
            aggregate_type: A::TYPE,
            aggregate_id: id,
        };
        if let Err(error) = self.inner.store.save_snapshot(stream, &snapshot).await {
            tracing::warn!(aggregate_type = A::TYPE, aggregate_id = id, %error, "snapshot not saved");
        }
    }

    /// Applies the events stored after `cached.version`, a page at a time.
    async fn catch_up<A: Aggregate>(
        &self,
        cached: &mut Cached<A>,
        id: &str,
    ) -> Result<(), LoadError> {
        let stream = StreamId {
            aggregate_type: A::TYPE,
            aggregate_id: id,
        };
        if let Some(memory) = self.inner.store.as_memory() {
            // Decoded where they are kept: no copies of the stored events.
            let after = cached.version;
            let apply = |stored: EventRef<'_>| apply_recorded(cached, &stored);
            return Ok(memory.for_each_in_stream(stream, after, apply)?);
        }
        loop {
            let before = cached.version;
            let page = self
                .inner
                .store
                .read_for_replay(stream, before, REPLAY_PAGE)
                .await?;
            if let Some(after_gap) = apply_following(cached, stream, &page)? {
                return Err(LoadError::Store(StoreError::Corrupt {
                    position: after_gap.position,
                    what: format!(
                        "version {} of {}/{} follows version {}",
                        after_gap.version,
                        stream.aggregate_type,
                        stream.aggregate_id,
                        cached.version
                    ),
                }));
            }
            // Only a page exactly full may have more after it.
            if page.len() != REPLAY_PAGE {
                return Ok(());
            }
            if cached.version == before {
                // A store that ignores `after_version`: stop rather than loop,
                // and say so rather than return a stale state.
                return Err(LoadError::Store(StoreError::BrokenContract {
                    method: "read_for_replay",
                    what: format!(
                        "a full page without an event after version {before} of {}/{}",
                        stream.aggregate_type, stream.aggregate_id
                    ),
                }));
            }
        }
    }

    /// The common case without waiting, on the in-process store: the aggregate is
    /// cached and its slot free, the command is accepted and the append succeeds.
    /// Anything else gives the metadata back for [`App::run`], which starts over:
    /// handlers are pure, so deciding twice is harmless, and nothing was stored.
    /// Handlers that await or consult services go to `run` directly: it decides
    /// a rejection again, and their services would be asked twice.
    // The large error hands the caller's metadata back, cheaper than cloning it
    // for the fast path's sake.
    #[allow(clippy::result_large_err)]
    fn try_now<C: HandledCommand>(
        &self,
        command: &C,
        mut metadata: Metadata,
        span: &tracing::Span,
    ) -> Result<Outcome<C::Aggregate>, Metadata> {
        let Some(memory) = self.inner.store.as_memory() else {
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
        let append_span = append_span::<C::Aggregate>(&id, cached.version, events.len());
        let appended = append_span
            .in_scope(|| append_to_memory(memory, stream, cached.version, &mut events, metadata));
        let before = cached.version;
        let result = match appended {
            Ok(Ok(appended)) => {
                let committed = commit(&mut cached, events, appended, span);
                if let Some(snapshot) = due_snapshot(&cached, before) {
                    memory.keep_snapshot(stream, snapshot);
                }
                Ok(Ok(committed))
            }
            Err(encode_error) => Ok(Err(encode_error)),
            // A conflict: `run` catches up and decides again.
            Ok(Err((_, metadata))) => Err(metadata),
        };
        *guard = Some(cached);
        result
    }

    // Rare paths (replay, catch-up, idempotency look-ups) are boxed: the future of
    // `run` stays small, which keeps its own allocation on the allocator's fast path.
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
            let append_span = append_span::<C::Aggregate>(&id, cached.version, events.len());
            let appended = match self.inner.store.as_memory() {
                Some(memory) => {
                    let taken = std::mem::take(&mut metadata);
                    let appended = append_span.in_scope(|| {
                        append_to_memory(memory, stream, cached.version, &mut events, taken)
                    })?;
                    appended.map_err(|(error, given_back)| {
                        metadata = given_back;
                        error
                    })
                }
                None => {
                    let mut new_events = Vec::with_capacity(events.len());
                    let now = std::time::SystemTime::now();
                    encode(
                        &mut events,
                        metadata.idempotency_key.as_deref(),
                        &mut new_events,
                        now,
                    )?;
                    self.inner
                        .store
                        .append(stream, cached.version, new_events, &metadata)
                        .instrument(append_span)
                        .await
                }
            };
            match appended {
                Ok(appended) => {
                    let before = cached.version;
                    let committed = commit(&mut cached, events, appended, &span);
                    if let Some(snapshot) = due_snapshot(&cached, before) {
                        self.save_snapshot::<C::Aggregate>(&id, snapshot).await;
                    }
                    *guard = Some(cached);
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

    /// The services `A`'s handlers take, if the `App` has them.
    fn services<A: Aggregate>(&self) -> Option<&A::Services> {
        if let Some(none) = no_services::<A>() {
            return Some(none);
        }
        let service = self.inner.services.get(&TypeId::of::<A::Services>())?;
        service.value.downcast_ref()
    }

    /// Whether another execution of this idempotent command has committed; its
    /// outcome then stands for this one.
    async fn committed_meanwhile<C: HandledCommand>(
        &self,
        metadata: &Metadata,
        id: &str,
    ) -> Result<Option<Committed<C::Aggregate>>, CommandError<<C::Aggregate as Aggregate>::Error>>
    {
        match &metadata.idempotency_key {
            Some(key) => {
                let fingerprint = metadata.command_fingerprint;
                Box::pin(self.first_outcome::<C>(key, id, fingerprint)).await
            }
            None => Ok(None),
        }
    }

    /// The outcome of an earlier execution with `key`, if there was one: its key
    /// record, and the events it appended (read by version, so the cost does not
    /// grow with the stream). A key first used for another command, aggregate or
    /// arguments is an error.
    async fn first_outcome<C: HandledCommand>(
        &self,
        key: &str,
        id: &str,
        fingerprint: Option<Uuid>,
    ) -> Result<Option<Committed<C::Aggregate>>, CommandError<<C::Aggregate as Aggregate>::Error>>
    {
        let store = &self.inner.store;
        let record = store.read_idempotency_key(key).await;
        let Some(record) = record.map_err(CommandError::Store)? else {
            return Ok(None);
        };
        let same_command = record.command == C::NAME;
        let same_stream =
            record.aggregate_type == <C::Aggregate as Aggregate>::TYPE && record.aggregate_id == id;
        let same_arguments = match (record.fingerprint, fingerprint) {
            (Some(first), Some(this)) => first == this,
            _ => true,
        };
        if !(same_command && same_stream && same_arguments) {
            return Err(CommandError::IdempotencyKeyReused {
                key: key.to_owned(),
                first_command: record.command,
                first_stream: OwnedStreamId {
                    aggregate_type: record.aggregate_type,
                    aggregate_id: record.aggregate_id,
                },
                other_arguments: same_command && same_stream,
            });
        }
        let stream = StreamId {
            aggregate_type: <C::Aggregate as Aggregate>::TYPE,
            aggregate_id: id,
        };
        let mut events = Vec::new();
        let mut after = record.expected_version;
        while after < record.version {
            let page = (record.version - after).min(REPLAY_PAGE as u64) as usize;
            let page = store.read_for_replay(stream, after, page).await;
            let page = page.map_err(CommandError::Store)?;
            let missing = |after: u64| {
                CommandError::Store(StoreError::Corrupt {
                    position: record.position.unwrap_or_default(),
                    what: format!(
                        "idempotency key `{key}` names version {} of {}/{id}, which is not stored",
                        after + 1,
                        stream.aggregate_type
                    ),
                })
            };
            if page.is_empty() {
                return Err(missing(after));
            }
            for event in page.iter().take_while(|e| e.version <= record.version) {
                if event.version != after + 1 {
                    return Err(missing(after));
                }
                let decoded = decode::<C::Aggregate>(&event.as_ref(stream));
                events.push(decoded.map_err(CommandError::Decode)?);
                after = event.version;
            }
        }
        Ok(Some(Committed {
            version: record.version,
            position: record.position,
            events,
            duplicate: true,
        }))
    }
}

/// A command about to be executed; `.await` it. Built by [`App::execute`].
#[must_use = "a command does nothing until it is awaited"]
pub struct Execute<'a, C> {
    app: &'a App,
    command: C,
    metadata: Metadata,
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

fn decode<A: Aggregate>(stored: &EventRef<'_>) -> Result<A::Event, DecodeError> {
    A::Event::decode(stored.name, stored.event_version, stored.payload)
        .map_err(|kind| DecodeError::at(stored, kind))
}

/// The span of one append.
fn append_span<A: Aggregate>(id: &str, expected_version: u64, events: usize) -> tracing::Span {
    tracing::debug_span!(
        "eda.append",
        aggregate_type = A::TYPE,
        aggregate_id = %id,
        expected_version,
        events,
    )
}

/// Encodes `events` and appends them to the in-process store, which needs no
/// waiting; the encoded events go through a reused buffer and share one clock read
/// with the append. `metadata` stays with the events, or comes back on a store error.
fn append_to_memory<E: AggregateEvent, Err>(
    memory: &MemoryStore,
    stream: StreamId<'_>,
    expected_version: u64,
    events: &mut [E],
    metadata: Metadata,
) -> Result<Result<Appended, (StoreError, Metadata)>, CommandError<Err>> {
    let now = std::time::SystemTime::now();
    let mut buffer = ENCODED.take();
    encode(
        events,
        metadata.idempotency_key.as_deref(),
        &mut buffer,
        now,
    )?;
    let appended = memory.append_now(stream, expected_version, &mut buffer, metadata, now);
    ENCODED.set(buffer);
    Ok(appended)
}

/// The state of a snapshot, if it is usable: taken with this `snapshot_version` and
/// readable. Otherwise the aggregate is replayed from its events.
fn restore<A: Aggregate>(snapshot: &Snapshot, id: &str) -> Option<Cached<A>> {
    let changed = snapshot.snapshot_version != A::SNAPSHOT_VERSION
        || snapshot.fingerprint != state_fingerprint::<A>();
    if snapshot.version == 0 || changed {
        tracing::debug!(
            aggregate_type = A::TYPE,
            aggregate_id = id,
            "snapshot of another version; replaying"
        );
        return None;
    }
    match A::decode_snapshot(&snapshot.payload)? {
        Ok(state) => Some(Cached {
            state,
            version: snapshot.version,
        }),
        Err(error) => {
            tracing::warn!(aggregate_type = A::TYPE, aggregate_id = id, %error, "snapshot not readable; replaying");
            None
        }
    }
}

/// The shape of `A`'s state: field names and JSON kinds of the default state,
/// nested, hashed with FNV-1a (stable across builds, unlike the std hasher). Two
/// states with other fields, or fields of another kind, have other fingerprints.
/// Worked out once per type: every snapshot load and save compares or stores it.
fn state_fingerprint<A: Aggregate>() -> u64 {
    static FINGERPRINTS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<std::any::TypeId, u64>>,
    > = std::sync::OnceLock::new();
    let known = FINGERPRINTS.get_or_init(Default::default);
    let lock = || {
        known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let id = std::any::TypeId::of::<A>();
    if let Some(&fingerprint) = lock().get(&id) {
        return fingerprint;
    }
    let fingerprint = shape_fingerprint::<A>();
    lock().insert(id, fingerprint);
    fingerprint
}

fn shape_fingerprint<A: Aggregate>() -> u64 {
    fn shape(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(fields) => {
                out.push('{');
                for (name, field) in fields {
                    out.push_str(name);
                    out.push(':');
                    shape(field, out);
                    out.push(',');
                }
                out.push('}');
            }
            serde_json::Value::Array(_) => out.push('['),
            serde_json::Value::String(_) => out.push('s'),
            serde_json::Value::Number(_) => out.push('n'),
            serde_json::Value::Bool(_) => out.push('b'),
            serde_json::Value::Null => out.push('0'),
        }
    }
    let default = A::default().encode_snapshot().and_then(Result::ok);
    let mut text = String::new();
    if let Some(value) = default.and_then(|json| serde_json::from_str(&json).ok()) {
        shape(&value, &mut text);
    }
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Decodes one stored event and folds it into the state.
fn apply_recorded<A: Aggregate>(
    cached: &mut Cached<A>,
    stored: &EventRef<'_>,
) -> Result<(), DecodeError> {
    let event = decode::<A>(stored)?;
    cached.state.apply(&event);
    cached.version = stored.version;
    Ok(())
}

/// Applies the events of `page` that follow on from `cached`, skipping those it
/// already holds; stops at a gap and returns the first event after it.
fn apply_following<'p, A: Aggregate>(
    cached: &mut Cached<A>,
    stream: StreamId<'_>,
    page: &'p [ReplayEvent],
) -> Result<Option<&'p ReplayEvent>, DecodeError> {
    for event in page {
        if event.version <= cached.version {
            continue;
        }
        if event.version != cached.version + 1 {
            return Ok(Some(event));
        }
        apply_recorded(cached, &event.as_ref(stream))?;
    }
    Ok(None)
}

/// A snapshot of `cached`, if the append from version `before` crossed a multiple
/// of the aggregate's `snapshot_every`.
fn due_snapshot<A: Aggregate>(cached: &Cached<A>, before: u64) -> Option<Snapshot> {
    let every = A::SNAPSHOT_EVERY;
    if every == 0 || before / every == cached.version / every {
        return None;
    }
    match cached.state.encode_snapshot()? {
        Ok(payload) => Some(Snapshot {
            version: cached.version,
            snapshot_version: A::SNAPSHOT_VERSION,
            fingerprint: state_fingerprint::<A>(),
            payload,
        }),
        Err(error) => {
            tracing::warn!(aggregate_type = A::TYPE, %error, "snapshot not serializable");
            None
        }
    }
}

/// Applies committed events to the cached state and describes the commit.
fn commit<A: Aggregate>(
    cached: &mut Cached<A>,
    events: Vec<A::Event>,
    appended: Appended,
    span: &tracing::Span,
) -> Committed<A> {
    for event in &events {
        cached.state.apply(event);
    }
    cached.version = appended.version;
    span.record("version", appended.version);
    Committed {
        version: appended.version,
        position: (!events.is_empty()).then_some(appended.position),
        events,
        duplicate: false,
    }
}

thread_local! {
    /// Encoded events on their way into a `MemoryStore` (emptied by each append).
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
    now: std::time::SystemTime,
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

/// The id of the `index`th event of the command with idempotency key `key`.
fn idempotent_event_id(key: &str, index: usize) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6564_615f_6964_656d_706f_7465_6e63_7921);
    Uuid::new_v5(&NAMESPACE, format!("{key}\u{0}{index}").as_bytes())
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
