//! Projections: read models fed from the global log by a runner of their own.
//!
//! A runner reads the log after its checkpoint, only the events its projection
//! handles ([`EventStore::read_all_of`](crate::EventStore::read_all_of)), applies
//! them, moves the checkpoint, and then follows the log live: woken by its `App`'s
//! own commits, and polling for other writers'. Each runner is a task of its own,
//! so a slow one delays no other runner and no command.
//!
//! This is the in-memory kind: the state is the projection value, rebuilt from the
//! start of the log whenever the runner starts.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::envelope::RecordedEvent;
use crate::error::{DecodeError, DecodeErrorKind, StoreError};

pub mod read_model;

/// A read model that `#[projection]` generated the plumbing of: its name, the
/// events it handles and where it keeps its state. How one event is applied
/// depends on that kind: [`MemoryProjection`] or [`SqliteProjection`].
pub trait Projection: Send + 'static {
    /// The projection's name (`#[projection(name = "...")]`, the type's name by
    /// default): its checkpoint and its parked events are stored under it.
    const NAME: &'static str;
    /// `#[projection(version = N)]`, 1 by default.
    const VERSION: u32;
    /// The stored names of the events its `#[on]` methods take.
    const EVENTS: &'static [&'static str];
    /// Where the read model lives, chosen by the `#[on]` methods' signatures:
    /// [`read_model::Memory`] or [`read_model::Sqlite`].
    type Kind: read_model::Kind;
}

/// A read model held in memory: the projection value is the state, rebuilt from
/// the log when its runner starts. `#[on]` methods take `&mut self` and the event
/// (`fn(&mut self, &E)`, optionally `&RecordedEvent` after it) and return nothing.
pub trait MemoryProjection: Projection<Kind = read_model::Memory> {
    /// Decodes `event` (one of [`EVENTS`](Projection::EVENTS)) and runs its `#[on]`
    /// method. An event of another name is ignored.
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), DecodeErrorKind>;
}

/// A read model in a SQLite database: `#[on]` methods also take the runner's open
/// transaction, `&rusqlite::Transaction<'_>`, last, and return a `Result<(), E>`
/// whose error converts into `Box<dyn Error + Send + Sync>` (`rusqlite::Result<()>`
/// does). The runner commits their writes and the checkpoint in one transaction.
#[cfg(feature = "sqlite")]
pub trait SqliteProjection: Projection<Kind = read_model::Sqlite> {
    /// Decodes `event` (one of [`EVENTS`](Projection::EVENTS)) and runs its `#[on]`
    /// method in `tx`. An event of another name is ignored.
    fn apply(
        &mut self,
        event: &RecordedEvent,
        tx: &rusqlite::Transaction<'_>,
    ) -> Result<(), ApplyError>;
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

/// How many events a runner reads and applies at a time.
const BATCH: usize = 512;

/// The longest a runner waits before looking for events another writer
/// committed (its own `App`'s commits wake it at once).
const POLL: Duration = Duration::from_millis(20);

/// What a runner is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunnerState {
    /// Reading the log towards its end.
    CatchingUp,
    /// At the end of the log, waiting for new events.
    Live,
    /// The store failed; the read is tried again after a pause.
    Retrying {
        /// The store's error, displayed.
        error: String,
    },
    /// Stopped: by [`ProjectionHandle::stop`], or by an event it cannot decode
    /// (the state stays as it was before that event).
    Stopped {
        /// Why, when it was not asked to.
        error: Option<String>,
    },
}

/// A runner's progress, from [`ProjectionHandle::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// [`Projection::NAME`].
    pub name: &'static str,
    /// The position up to which the log has been read and applied.
    pub checkpoint: u64,
    /// Events applied since the runner started.
    pub applied: u64,
    /// What the runner is doing.
    pub state: RunnerState,
}

/// Why [`ProjectionHandle::wait_for`] returned without the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The time ran out first.
    #[error("projection `{name}` had not reached position {position} after {waited:?} (it is at {checkpoint})")]
    TimedOut {
        /// The projection.
        name: &'static str,
        /// The position waited for.
        position: u64,
        /// Its checkpoint when the time ran out.
        checkpoint: u64,
        /// How long it waited.
        waited: Duration,
    },
    /// The runner stopped before it got there.
    #[error("projection `{name}` stopped at position {checkpoint}, before position {position}")]
    Stopped {
        /// The projection.
        name: &'static str,
        /// The position waited for.
        position: u64,
        /// Where it stopped.
        checkpoint: u64,
    },
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
    /// owners.wait_for(done.position, std::time::Duration::from_secs(1)).await?;
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
        let (progress, _) = watch::channel(Progress {
            checkpoint: 0,
            applied: 0,
            state: RunnerState::CatchingUp,
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(self.projection),
            progress,
            stop: tokio::sync::Notify::new(),
        });
        let runner = run(self.app, Arc::clone(&shared));
        tokio::spawn(runner);
        ProjectionHandle { shared }
    }
}

/// What a runner and its handles share.
struct Shared<P> {
    state: Mutex<P>,
    progress: watch::Sender<Progress>,
    stop: tokio::sync::Notify,
}

impl<P> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, P> {
        // `#[on]` methods that panic leave the state as far as they got; the
        // runner stops (its task ends) and says so.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, change: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(change);
    }
}

#[derive(Debug, Clone)]
struct Progress {
    checkpoint: u64,
    applied: u64,
    state: RunnerState,
}

/// A started projection: its state, its progress, read-your-writes.
pub struct ProjectionHandle<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for ProjectionHandle<P> {
    fn clone(&self) -> Self {
        ProjectionHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P: Projection> fmt::Debug for ProjectionHandle<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl<P: Projection> ProjectionHandle<P> {
    /// `f` of the read model as it is now (the runner waits meanwhile: keep `f`
    /// short).
    pub fn read<R>(&self, f: impl FnOnce(&P) -> R) -> R {
        f(&self.shared.lock())
    }

    /// The runner's progress.
    pub fn status(&self) -> ProjectionStatus {
        let progress = self.shared.progress.borrow().clone();
        ProjectionStatus {
            name: P::NAME,
            checkpoint: progress.checkpoint,
            applied: progress.applied,
            state: progress.state,
        }
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
        let Some(position) = position else {
            return Ok(());
        };
        let mut progress = self.shared.progress.subscribe();
        let reached = progress.wait_for(|p| {
            p.checkpoint >= position || matches!(p.state, RunnerState::Stopped { .. })
        });
        let checkpoint = match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(p)) if p.checkpoint >= position => return Ok(()),
            Ok(Ok(p)) => p.checkpoint,
            // The runner is gone (its task ended without saying so: it panicked).
            Ok(Err(_)) => self.status().checkpoint,
            Err(_) => {
                return Err(WaitError::TimedOut {
                    name: P::NAME,
                    position,
                    checkpoint: self.status().checkpoint,
                    waited: timeout,
                })
            }
        };
        Err(WaitError::Stopped {
            name: P::NAME,
            position,
            checkpoint,
        })
    }

    /// Stops the runner after the batch it is applying, and waits until it has.
    pub async fn stop(&self) {
        let mut progress = self.shared.progress.subscribe();
        self.shared.stop.notify_one();
        let _ = progress
            .wait_for(|p| matches!(p.state, RunnerState::Stopped { .. }))
            .await;
    }
}

/// The runner: catch up, then follow; until stopped or an event cannot be decoded.
async fn run<P: MemoryProjection>(app: App, shared: Arc<Shared<P>>) {
    let _ends_stopped = EndsStopped(&*shared);
    let mut commits = app.watch_commits();
    let mut checkpoint = 0;
    let mut failures = 0u32;
    let stopped = |shared: &Shared<P>, error: Option<String>| {
        shared.set(|p| p.state = RunnerState::Stopped { error });
    };
    loop {
        let read = app.store().read_all_of(checkpoint, BATCH, P::EVENTS);
        let page = tokio::select! {
            page = read => page,
            () = shared.stop.notified() => return stopped(&shared, None),
        };
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                failures += 1;
                retry_after(&shared, &error, failures).await;
                continue;
            }
        };
        failures = 0;
        let span = tracing::debug_span!(
            "eda.project",
            projection = P::NAME,
            after = checkpoint,
            read_to = page.read_to,
            events = page.events.len(),
        );
        if let Err(error) = span.in_scope(|| apply_page(&shared, &page.events)) {
            tracing::error!(projection = P::NAME, %error, "projection stopped");
            return stopped(&shared, Some(error.to_string()));
        }
        checkpoint = page.read_to;
        let live = page.events.len() < BATCH;
        let applied = page.events.len() as u64;
        shared.set(|p| {
            p.checkpoint = checkpoint;
            p.applied += applied;
            p.state = if live {
                RunnerState::Live
            } else {
                RunnerState::CatchingUp
            };
        });
        if live {
            // Woken by this App's next commit, or after a while for other writers.
            tokio::select! {
                _ = commits.changed() => {}
                () = tokio::time::sleep(POLL) => {}
                () = shared.stop.notified() => return stopped(&shared, None),
            }
        }
    }
}

/// Marks the runner stopped however its task ends: a panicking `#[on]` method
/// included, so that nobody waits for it forever.
struct EndsStopped<'a, P>(&'a Shared<P>);

impl<P> Drop for EndsStopped<'_, P> {
    fn drop(&mut self) {
        self.0.progress.send_if_modified(|p| match p.state {
            RunnerState::Stopped { .. } => false,
            _ => {
                let error = Some("the runner ended: an #[on] method panicked".to_owned());
                p.state = RunnerState::Stopped { error };
                true
            }
        });
    }
}

/// Applies `events` in order under one lock; the first that cannot be decoded
/// stops the page there (the events before it stay applied).
fn apply_page<P: MemoryProjection>(
    shared: &Shared<P>,
    events: &[RecordedEvent],
) -> Result<(), DecodeError> {
    let mut state = shared.lock();
    for event in events {
        state
            .apply(event)
            .map_err(|kind| DecodeError::at(&event.as_event_ref(), kind))?;
    }
    Ok(())
}

/// Says that the store failed, and waits before the runner reads again: a
/// doubling pause, at most 5 s.
async fn retry_after<P>(shared: &Shared<P>, error: &StoreError, failures: u32) {
    tracing::warn!(%error, failures, "projection runner: the store failed; retrying");
    let error = error.to_string();
    shared.set(|p| p.state = RunnerState::Retrying { error });
    let pause = Duration::from_millis(10)
        .saturating_mul(1 << failures.min(10))
        .min(Duration::from_secs(5));
    tokio::select! {
        () = tokio::time::sleep(pause) => {}
        () = shared.stop.notified() => shared.stop.notify_one(),
    }
}
