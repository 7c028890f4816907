//! Projections: read models fed from the global log by a runner of their own.
//!
//! A runner reads the log after its checkpoint, only the events its projection
//! handles ([`EventStore::read_all_of`](crate::EventStore::read_all_of)), applies
//! them, moves the checkpoint, and then follows the log live: woken by its `App`'s
//! own commits, and polling for other writers'. Each runner is a task of its own,
//! so a slow one delays no other runner and no command.
//!
//! This is the in-memory kind: the state is the projection value, rebuilt from the
//! start of the log whenever the runner starts (its state is
//! [`RunnerState::Rebuilding`] until it is live). The SQLite and PostgreSQL kinds
//! keep a checkpoint, and are rebuilt by their `#[reset]` method when an older
//! version built them or [`ProjectionHandle::rebuild`] is called.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::app::App;
use crate::envelope::RecordedEvent;
use crate::error::{DecodeErrorKind, StoreError};
use crate::store::BoxFuture;
use runner::Control;
pub use runner::{Progress, RunnerState, RunnerStatus, WaitError};

mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod page;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub mod read_model;
pub(crate) mod runner;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "postgres")]
pub use postgres::{
    BoxedParams, PostgresBatch, PostgresParams, PostgresProjectionBuilder, PostgresTransaction,
};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteProjectionBuilder;

/// A read model that `#[projection]` generated the plumbing of: its name, the
/// events it handles and where it keeps its state. How one event is applied
/// depends on that kind: [`MemoryProjection`], [`SqliteProjection`] or
/// [`PostgresProjection`].
pub trait Projection: Send + 'static {
    /// The projection's name (`#[projection(name = "...")]`, the type's name by
    /// default): its checkpoint and its parked events are stored under it.
    const NAME: &'static str;
    /// `#[projection(version = N)]`, 1 by default.
    const VERSION: u32;
    /// The stored names of the events its `#[on]` methods take.
    const EVENTS: &'static [&'static str];
    /// Where the read model lives, chosen by the `#[on]` methods' signatures:
    /// [`read_model::Memory`], [`read_model::Sqlite`] or [`read_model::Postgres`].
    type Kind: read_model::Kind;
}

/// A read model held in memory: the projection value is the state, rebuilt from
/// the log when its runner starts. `#[on]` methods take `&mut self` and the event
/// (`fn(&mut self, &E)`, optionally `&RecordedEvent` after it) and return nothing.
///
/// Every start is a rebuild: the runner applies the whole log to the value it
/// was given ([`RunnerState::Rebuilding`] until it is live), so a new
/// `version` needs nothing more, and there is no `#[reset]` method nor
/// [`ProjectionHandle::rebuild`]: to rebuild, stop the handle and start a new
/// value.
pub trait MemoryProjection: Projection<Kind = read_model::Memory> {
    /// Decodes `event` (one of [`EVENTS`](Projection::EVENTS)) and runs its `#[on]`
    /// method. An event of another name is ignored.
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), DecodeErrorKind>;
}

/// A read model in a SQLite database: `#[on]` methods also take the runner's open
/// transaction, `&rusqlite::Transaction<'_>`, last, and return a `Result<(), E>`
/// whose error converts into `Box<dyn Error + Send + Sync>` (`rusqlite::Result<()>`
/// does). The runner commits their writes and the checkpoint in one transaction.
///
/// An optional `#[reset]` method, `fn reset(&mut self, tx: &Transaction<'_>) ->
/// Result<(), E>`, empties the read model's own tables (and whatever the value
/// keeps): with it, a read model built by an older
/// [`VERSION`](Projection::VERSION) is rebuilt from the log when the runner
/// starts, and [`ProjectionHandle::rebuild`] rebuilds it on demand.
#[cfg(feature = "sqlite")]
pub trait SqliteProjection: Projection<Kind = read_model::Sqlite> {
    /// Whether the projection has a `#[reset]` method (and so can be rebuilt).
    const RESETS: bool = false;

    /// Decodes `event` (one of [`EVENTS`](Projection::EVENTS)) and runs its `#[on]`
    /// method in `tx`. An event of another name is ignored.
    fn apply(
        &mut self,
        event: &RecordedEvent,
        tx: &rusqlite::Transaction<'_>,
    ) -> Result<(), ApplyError>;

    /// Runs the `#[reset]` method in `tx`, the transaction that also clears the
    /// projection's parked events and moves its checkpoint back to 0: after
    /// it, the read model is as before its first event. Without a `#[reset]`
    /// method ([`RESETS`](Self::RESETS) is false), an error.
    fn reset(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let _ = tx;
        Err(no_reset(Self::NAME))
    }
}

/// The error of [`SqliteProjection::reset`] and [`PostgresProjection::reset`]
/// without a `#[reset]` method.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn no_reset(name: &str) -> Box<dyn std::error::Error + Send + Sync> {
    format!("`{name}` has no #[reset] method").into()
}

/// A read model in a PostgreSQL database: `#[on]` methods are `async`, take the
/// runner's open transaction, `&tokio_postgres::Transaction<'_>`, last, and
/// return a `Result<(), E>` whose error converts into
/// `Box<dyn Error + Send + Sync>` (`tokio_postgres::Error` does). The runner
/// commits their writes and the checkpoint in one transaction, one runner at a
/// time across processes ([`RunnerState::Standby`]); start one with
/// [`ProjectionBuilder::postgres`].
///
/// An optional `#[reset]` method, `async fn reset(&mut self, tx:
/// &Transaction<'_>) -> Result<(), E>`, empties the read model's own tables:
/// with it, a read model built by an older [`VERSION`](Projection::VERSION) is
/// rebuilt from the log when a runner takes its turn, and
/// [`ProjectionHandle::rebuild`] rebuilds it on demand.
///
/// ```no_run
/// use eda::prelude::*;
/// use eda::tokio_postgres::{self, Transaction};
/// use eda::RecordedEvent;
/// # #[event] #[derive(Debug)] pub struct Opened { pub owner: String }
///
/// #[derive(Debug, Default)]
/// pub struct OwnerTable;
///
/// #[projection(name = "owner_table", version = 2)]
/// impl OwnerTable {
///     #[reset]
///     async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
///         tx.execute("DELETE FROM owners", &[]).await?;
///         Ok(())
///     }
///
///     #[on]
///     async fn opened(
///         &mut self,
///         e: &Opened,
///         recorded: &RecordedEvent,
///         tx: &Transaction<'_>,
///     ) -> Result<(), tokio_postgres::Error> {
///         tx.execute(
///             "INSERT INTO owners (account, owner) VALUES ($1, $2)",
///             &[&recorded.aggregate_id, &e.owner],
///         )
///         .await?;
///         Ok(())
///     }
/// }
///
/// # async fn demo(app: App) -> Result<(), StoreError> {
/// let url = "postgres://postgres@127.0.0.1:5432/test";
/// let owners = app.project(OwnerTable).postgres(url).schema("read").start().await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
pub trait PostgresProjection: Projection<Kind = read_model::Postgres> {
    /// Whether the projection has a `#[reset]` method (and so can be rebuilt).
    const RESETS: bool = false;

    /// Decodes `event` (one of [`EVENTS`](Projection::EVENTS)) and runs its `#[on]`
    /// method in `tx` (the page's transaction, with the statements its methods
    /// queue). An event of another name is ignored.
    fn apply<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
        tx: &'a PostgresBatch<'_>,
    ) -> impl std::future::Future<Output = Result<(), ApplyError>> + Send + 'a;

    /// Runs the `#[reset]` method in `tx`, the transaction that also clears the
    /// projection's parked events and moves its checkpoint back to 0: after
    /// it, the read model is as before its first event. Without a `#[reset]`
    /// method ([`RESETS`](Self::RESETS) is false), an error.
    fn reset<'a>(
        &'a mut self,
        tx: &'a PostgresBatch<'_>,
    ) -> impl std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>
           + Send
           + 'a {
        let _ = tx;
        std::future::ready(Err(no_reset(Self::NAME)))
    }
}

/// Why an event could not be applied to a read model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The stored event could not be decoded as the type the `#[on]` method takes.
    #[error("the event cannot be decoded")]
    Decode(#[source] DecodeErrorKind),
    /// The `#[on]` method returned an error.
    #[error("the #[on] method failed: {0}")]
    Handler(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApplyError {
    /// The error an `#[on]` method returned.
    pub fn handler(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApplyError::Handler(error.into())
    }
}

impl From<DecodeErrorKind> for ApplyError {
    fn from(kind: DecodeErrorKind) -> Self {
        ApplyError::Decode(kind)
    }
}

/// A projection about to be started: [`App::project`].
#[must_use = "a projection does nothing until it is started"]
pub struct ProjectionBuilder<P: Projection, K = <P as Projection>::Kind> {
    app: App,
    projection: P,
    kind: PhantomData<fn() -> K>,
}

impl<P: Projection + fmt::Debug, K> fmt::Debug for ProjectionBuilder<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionBuilder")
            .field("projection", &self.projection)
            .finish_non_exhaustive()
    }
}

impl App {
    /// A runner for `projection`, fed from this `App`'s store from the start of the
    /// log: call [`start`](ProjectionBuilder::start) on it.
    ///
    /// ```
    /// use eda::prelude::*;
    /// # #[event] #[derive(Debug)] pub struct Opened { pub owner: String }
    /// # #[command] #[derive(Debug, Clone)] pub struct Open { #[aggregate_id] pub id: String, pub owner: String }
    /// # #[derive(Debug, Default)] pub struct Account;
    /// # #[aggregate(error = std::convert::Infallible)]
    /// # impl Account {
    /// #     #[handle] fn open(&self, c: Open) -> Result<Opened, std::convert::Infallible> { Ok(Opened { owner: c.owner }) }
    /// #     #[apply] fn opened(&mut self, _: &Opened) {}
    /// # }
    /// #[derive(Debug, Default)]
    /// pub struct Owners { names: Vec<String> }
    ///
    /// #[projection]
    /// impl Owners {
    ///     #[on]
    ///     fn opened(&mut self, e: &Opened) { self.names.push(e.owner.clone()); }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let app = App::new(MemoryStore::new());
    /// let owners = app.project(Owners::default()).start();
    /// let done = app.execute(Open { id: "a".into(), owner: "ada".into() }).await?;
    /// owners.wait_for(done.position, std::time::Duration::from_secs(5)).await?;
    /// assert_eq!(owners.read(|o| o.names.clone()), ["ada"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn project<P: Projection>(&self, projection: P) -> ProjectionBuilder<P> {
        ProjectionBuilder {
            app: self.clone(),
            projection,
            kind: PhantomData,
        }
    }
}

impl<P: MemoryProjection> ProjectionBuilder<P, read_model::Memory> {
    /// Starts the runner on a task of its own and returns its handle. Dropping
    /// the handle leaves the runner running; [`ProjectionHandle::stop`] stops it.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(self) -> ProjectionHandle<P> {
        let state = Arc::new(Mutex::new(self.projection));
        let control = runner::spawn(self.app, memory::MemorySink::new(Arc::clone(&state)));
        ProjectionHandle {
            control,
            state,
            parking: None,
        }
    }
}

/// A started projection: its state, its progress, read-your-writes, its parked
/// events.
pub struct ProjectionHandle<P> {
    control: Arc<Control>,
    state: Arc<Mutex<P>>,
    /// The dead letters of a kind that parks failed events.
    parking: Option<Arc<dyn Parking>>,
}

impl<P> Clone for ProjectionHandle<P> {
    fn clone(&self) -> Self {
        ProjectionHandle {
            control: Arc::clone(&self.control),
            state: Arc::clone(&self.state),
            parking: self.parking.clone(),
        }
    }
}

/// An event a runner parked (a dead letter): it could not be decoded, its
/// `#[on]` method failed every attempt, or an earlier event of its aggregate is
/// parked (so the aggregate's order is kept). Other aggregates' events flow on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParkedEvent {
    /// Its position in the global log.
    pub position: u64,
    /// Its id.
    pub event_id: Uuid,
    /// Its aggregate's type.
    pub aggregate_type: String,
    /// Its aggregate's id.
    pub aggregate_id: String,
    /// Its stored name.
    pub name: String,
    /// Why it was parked (the last error, after a retry that failed).
    pub error: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

impl ParkedEvent {
    /// `event`, parked now because of `error`: the time to the microsecond, as
    /// every store keeps it.
    pub fn from_event(event: &RecordedEvent, error: impl Into<String>) -> Self {
        ParkedEvent {
            position: event.position,
            event_id: event.event_id,
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            name: event.name.clone(),
            error: error.into(),
            parked_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
        }
    }
}

/// What [`ProjectionHandle::retry_parked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retried {
    /// Parked events applied (and no longer parked).
    pub applied: u64,
    /// Events still parked.
    pub parked: u64,
}

impl<P> ProjectionHandle<P>
where
    P: Projection,
    P::Kind: read_model::InDatabase,
{
    /// Rebuilds the read model from the log, as a new `version` does: between
    /// two pages, the runner empties it with the projection's `#[reset]`
    /// method, clears its parked events and moves its checkpoint back to 0, in
    /// one transaction; then it replays the log into it
    /// ([`RunnerState::Rebuilding`], with [`RunnerStatus::progress`], until it
    /// is live). Returns once the read model is emptied: wait for a position
    /// with [`wait_for`](Self::wait_for), as for any write.
    ///
    /// Meanwhile readers see the read model as of an earlier point in the log,
    /// from empty on: each page is committed with its checkpoint.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] (`what: "rebuild"`): the projection has no
    /// `#[reset]` method, the runner is stopped, or it does not have the read
    /// model's turn (a PostgreSQL runner on standby: rebuild on the runner that
    /// has it). Otherwise the error of the transaction or of the `#[reset]`
    /// method, which changed nothing; the runner goes on where it was.
    pub async fn rebuild(&self) -> Result<(), StoreError> {
        self.control.rebuild().await
    }
}

/// The dead-letter operations behind a handle, for a kind that parks events.
pub(crate) trait Parking: Send + Sync {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ParkedEvent>, StoreError>>;
    fn retry(&self) -> BoxFuture<'_, Result<Retried, StoreError>>;
    fn skip(&self, event_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>>;
}

impl<P> fmt::Debug for ProjectionHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Locks `state` even if a thread panicked while holding it. A runner's
/// projection value: `#[on]` methods that panic leave it as far as they got;
/// the runner stops (its task ends) and says so.
pub(crate) fn lock<P>(state: &Mutex<P>) -> MutexGuard<'_, P> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<P> ProjectionHandle<P> {
    /// `f` of the projection value as it is now: the read model itself for an
    /// in-memory projection (the runner waits meanwhile: keep `f` short). While
    /// the runner applies a page to a SQLite or PostgreSQL read model, this
    /// waits for the page (which makes progress on a thread of its own).
    pub fn read<R>(&self, f: impl FnOnce(&P) -> R) -> R {
        f(&lock(&self.state))
    }

    /// The runner's progress.
    pub fn status(&self) -> RunnerStatus {
        self.control.status()
    }

    /// Waits until the read model has applied the log up to `position`, at most
    /// `timeout`: read-your-writes after `app.execute(..)`, whose
    /// [`Committed::position`](crate::Committed::position) this takes (`None`, a
    /// command that stored nothing, returns at once).
    pub async fn wait_for(
        &self,
        position: Option<u64>,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        self.control.wait_for(position, timeout).await
    }

    /// Stops the runner after the batch it is applying, and waits until it has.
    pub async fn stop(&self) {
        self.control.stop().await;
    }

    /// The events parked so far, in log order (none for an in-memory
    /// projection, which stops at an event it cannot decode instead).
    pub async fn parked(&self) -> Result<Vec<ParkedEvent>, StoreError> {
        match &self.parking {
            Some(parking) => parking.list().await,
            None => Ok(Vec::new()),
        }
    }

    /// Applies the parked events again, in log order, aggregate by aggregate
    /// (after the `#[on]` method or the data was fixed). Each one applied leaves
    /// the park; an aggregate's first event that fails again stays parked with
    /// its new error, and so do its later events.
    pub async fn retry_parked(&self) -> Result<Retried, StoreError> {
        match &self.parking {
            Some(parking) => parking.retry().await,
            None => Ok(Retried {
                applied: 0,
                parked: 0,
            }),
        }
    }

    /// Removes the parked event `event_id` from the park without applying it;
    /// `false` if it was not parked. Its aggregate's later parked events stay
    /// parked until they are retried.
    pub async fn skip_parked(&self, event_id: Uuid) -> Result<bool, StoreError> {
        match &self.parking {
            Some(parking) => parking.skip(event_id).await,
            None => Ok(false),
        }
    }
}
