//! [`App`]: executes commands and loads aggregates against one event store.
//!
//! - `builder.rs`: [`AppBuilder`], the settings and the services handlers take;
//! - `execute.rs`: [`App::execute`], from a command to [`Committed`] events, with
//!   the conflict retries;
//! - `replay.rs`: rebuilding a state from its stream, a page at a time;
//! - `snapshots.rs`: when snapshots are taken, and when one is trusted;
//! - `idempotency.rs`: the outcome of an earlier execution with the same key;
//! - `cache.rs`: the loaded aggregates, one slot (and one queue) per instance.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use tracing::Instrument;

use crate::aggregate::{no_services, stream_key, Aggregate};
use crate::command::HandledCommand;
use crate::envelope::{Metadata, StreamId};
use crate::error::{LoadError, StoreError};
use crate::store::{check_stream, DynEventStore, EventStore};

mod builder;
mod cache;
mod execute;
mod idempotency;
mod replay;
mod snapshots;

pub use builder::AppBuilder;
pub use execute::{Committed, Execute, ExecuteFuture};

use builder::{service_names, ServiceMap};
use cache::Cache;
use execute::Backoff;

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
    /// The last position this `App` committed: projection runners on this `App`
    /// wait on it instead of polling for its commits.
    head: tokio::sync::watch::Sender<u64>,
    cache: Cache,
    max_conflict_retries: u32,
    conflict_backoff: Backoff,
    services: ServiceMap,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("max_conflict_retries", &self.inner.max_conflict_retries)
            .field("services", &service_names(&self.inner.services))
            .finish_non_exhaustive()
    }
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
        AppBuilder::new(Box::new(store))
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

    /// Tells this `App`'s projection runners that events up to `position` are
    /// committed. One atomic load when no runner listens.
    pub(crate) fn committed(&self, position: Option<u64>) {
        if let Some(position) = position {
            crate::store::signal::advance(&self.inner.head, position);
        }
    }

    /// A receiver of [`App::committed`]'s positions.
    pub(crate) fn watch_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    /// The store behind this `App`.
    pub(crate) fn store(&self) -> &dyn DynEventStore {
        &*self.inner.store
    }

    /// The services `A`'s handlers take, if the `App` has them.
    fn services<A: Aggregate>(&self) -> Option<&A::Services> {
        if let Some(none) = no_services::<A>() {
            return Some(none);
        }
        let service = self.inner.services.get(&TypeId::of::<A::Services>())?;
        service.value.downcast_ref()
    }
}
