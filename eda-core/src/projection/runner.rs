//! The engine every runner shares (projections of each kind, policies): read the
//! log after the checkpoint, only the events the runner handles, hand each page
//! to a [`Sink`] that applies it and moves the checkpoint, retry what failed,
//! then follow the log live. Each runner is a task of its own (a bulkhead): a
//! slow or failing one delays no other runner and no command.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::Instrument;

use crate::app::App;
use crate::error::StoreError;
use crate::store::LogPage;

#[cfg(test)]
mod tests;

/// How many events a runner reads and applies at a time.
pub(crate) const BATCH: usize = 512;

/// The longest a live runner waits before looking for events another writer
/// committed, on a store that does not signal them (its own `App`'s commits
/// wake it at once).
const POLL: Duration = Duration::from_millis(20);

/// The same on a store that signals other writers' commits
/// (`DynEventStore::watch_log`): only in case a signal went missing.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// The first pause before a runner reads again when its read stopped short of a
/// position known to be committed (on PostgreSQL, an older transaction still
/// running holds the horizon back); it doubles up to [`POLL`] until the read
/// gets there.
const SHORT_OF: Duration = Duration::from_millis(1);

/// How many times an event that failed is tried before its runner stops.
pub(crate) const MAX_ATTEMPTS: u32 = 5;

/// How long a runner on standby waits before it tries to take over again.
const STANDBY: Duration = Duration::from_secs(1);

/// How often a runner that is behind counts the events that came since it
/// last counted, and logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Where a runner's events go: a read model, or a policy's commands.
pub(crate) trait Sink: Send + 'static {
    /// The runner's name, for its status and its traces.
    fn name(&self) -> &'static str;

    /// The stored names of the events it handles.
    fn events(&self) -> &'static [&'static str];

    /// The checkpoint to start after, and whether the read model is empty
    /// (and so rebuilt from there). A sink whose read model has one runner at a
    /// time fails with [`Then::Standby`] while another runner has it.
    fn start(&mut self) -> impl Future<Output = Result<Started, Failure>> + Send;

    /// Applies `page.events` in order and moves the checkpoint to `page.read_to`.
    /// On failure the events before [`Failure::reached`] stay applied, with the
    /// checkpoint there; none after. On the `last_attempt` at an event, a sink
    /// that can park events parks it (with its aggregate's later events) rather
    /// than fail.
    fn apply(
        &mut self,
        page: LogPage,
        last_attempt: bool,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Gives up the turn the sink took in [`start`](Self::start) (a lease),
    /// when its runner stops: another runner need not wait for it to expire.
    fn release(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// How many events are parked, for a sink that parks them.
    fn parked(&self) -> Option<u64> {
        None
    }

    /// Empties the read model, its parked events and its checkpoint, in one
    /// transaction, between two pages: the runner then rebuilds it from the
    /// start of the log. A sink that cannot fails (the default).
    fn rebuild(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send {
        let reason = format!("`{}` cannot be rebuilt", self.name());
        std::future::ready(Err(StoreError::Invalid {
            what: "rebuild",
            reason,
        }))
    }
}

/// Where a [`Sink`] starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    /// The checkpoint to start after.
    pub(crate) checkpoint: u64,
    /// Why the read model is empty, if it is: the runner rebuilds it.
    pub(crate) rebuild: Option<Rebuild>,
}

impl Started {
    /// A start after the stored `checkpoint`.
    pub(crate) fn at(checkpoint: u64) -> Self {
        Started {
            checkpoint,
            rebuild: None,
        }
    }
}

/// Why a runner rebuilds its read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rebuild {
    /// Every start: the read model is in memory.
    Start,
    /// It was emptied by its `#[reset]` method: the stored read model was
    /// built by an older version, or `rebuild()` was called.
    Reset,
}

/// What a handle's `rebuild()` waits for.
pub(crate) type RebuildReply = oneshot::Sender<Result<(), StoreError>>;

/// Why a [`Sink`] could not apply a page.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The checkpoint the sink moved to before failing, if it moved.
    pub(crate) reached: Option<u64>,
    /// How many events it applied before failing.
    pub(crate) applied: u64,
    /// What failed, displayed.
    pub(crate) error: String,
    /// What the runner does next.
    pub(crate) then: Then,
    /// Whether an event failed (its `#[on]` method, its command), rather than
    /// the database or the store: only an event's failures count towards
    /// [`MAX_ATTEMPTS`], after which it is parked or the runner stops.
    pub(crate) event: bool,
}

/// What a runner does after a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// Tries the same page again after a pause: it may succeed later (a handler
    /// or database error).
    Retry,
    /// Stops: it never will (an event that cannot be decoded, a lost turn).
    Stop,
    /// Stands by: another runner of the read model has its turn (or this one
    /// lost it). After [`STANDBY`] the runner starts over from [`Sink::start`],
    /// which takes the turn and reads the checkpoint again, or fails the same way.
    Standby,
}

impl Failure {
    fn new(error: impl ToString, reached: Option<u64>, then: Then) -> Self {
        Failure {
            reached,
            applied: 0,
            error: error.to_string(),
            then,
            event: false,
        }
    }

    /// A failure that trying again may cure.
    pub(crate) fn retry(error: impl ToString, reached: Option<u64>) -> Self {
        Failure::new(error, reached, Then::Retry)
    }

    /// An event that failed, which trying again may cure: tried up to
    /// [`MAX_ATTEMPTS`] times.
    pub(crate) fn retry_event(error: impl ToString) -> Self {
        Failure {
            event: true,
            ..Failure::new(error, None, Then::Retry)
        }
    }

    /// A failure that stops the runner.
    pub(crate) fn stop(error: impl ToString, reached: Option<u64>) -> Self {
        Failure::new(error, reached, Then::Stop)
    }

    /// Another runner has the turn: this one stands by.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn standby(error: impl ToString) -> Self {
        Failure::new(error, None, Then::Standby)
    }
}

/// What a runner is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunnerState {
    /// Reading the log towards its end.
    CatchingUp,
    /// Rebuilding the read model from the start of the log, into a read model
    /// emptied by its `#[reset]` method (the stored one was built by an older
    /// version of the projection, or
    /// [`rebuild`](crate::ProjectionHandle::rebuild) was called), or, in
    /// memory, at every start. Until it is live, readers see the read model as
    /// of an earlier point in the log: [`RunnerStatus::checkpoint`], with
    /// [`RunnerStatus::progress`] telling how far the rebuild is.
    Rebuilding,
    /// At the end of the log, waiting for new events.
    Live,
    /// Another runner of the same read model has its turn: a PostgreSQL read
    /// model is applied by one runner at a time, across processes (the holder
    /// of a lock on its connection). This one tries to take over every second,
    /// so it does within seconds of the holder stopping or its connection
    /// dying; it then goes on from the checkpoint the holder left.
    Standby {
        /// Why it stands by, displayed.
        reason: String,
    },
    /// Reading the log or applying an event failed; it is tried again after a
    /// pause.
    Retrying {
        /// The error, displayed.
        error: String,
        /// How many times in a row it failed.
        failures: u32,
    },
    /// Stopped: by `stop()`, or by an error trying again cannot cure (an event it
    /// cannot decode, an event that failed every attempt, another runner moving
    /// its checkpoint). The read model stays as it was before the failed event.
    Stopped {
        /// Why, when it was not asked to.
        error: Option<String>,
    },
}

/// A runner's progress: `status()` of its handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnerStatus {
    /// The projection's or policy's name.
    pub name: &'static str,
    /// The position up to which the log has been read and applied.
    pub checkpoint: u64,
    /// The end of the log as far as the runner knows: its reads, its `App`'s
    /// commits, and the commits its store signals (another `App`'s, another
    /// process's; on a store that signals none, once it has read them).
    pub head: u64,
    /// How far behind the runner is, in positions of the log (`head -
    /// checkpoint`; some of those may be events it does not handle).
    pub lag: u64,
    /// How long the runner has been behind: zero while it is live, otherwise
    /// the time since it was last at the end of the log (or started).
    pub lag_time: Duration,
    /// Events applied since the runner started.
    pub applied: u64,
    /// Events parked (dead letters) and not yet retried or skipped.
    pub parked: u64,
    /// What the runner is doing.
    pub state: RunnerState,
    /// How far a rebuild or a catch-up is, while the runner is behind:
    /// from its start, or a rebuild, until it is live; after it fell behind
    /// again, from then on (with a total once it has been behind for a few
    /// seconds). `None` while it is live.
    pub progress: Option<Progress>,
}

/// How far a runner's rebuild or catch-up is: [`RunnerStatus::progress`].
/// Events are those the runner handles (of its projection's or policy's
/// `EVENTS`), read since the catch-up began, whether applied or parked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Events read since the catch-up began.
    pub done: u64,
    /// `done` plus the events left to read, as the store counted them
    /// ([`EventStore::count_all_of`](crate::EventStore::count_all_of)) when
    /// the catch-up began and every few seconds since; `None` until then, or
    /// if the store cannot count. Never less than `done`.
    pub total: Option<u64>,
    /// How long the catch-up has been going on.
    pub elapsed: Duration,
    /// The time left at the rate so far; `None` until there is a rate and a
    /// total.
    pub remaining: Option<Duration>,
}

impl Progress {
    fn new(done: u64, total: Option<u64>, elapsed: Duration) -> Self {
        let total = total.map(|total| total.max(done));
        let remaining = match total {
            Some(total) if done > 0 => {
                let left = (total - done) as f64 / done as f64;
                Some(elapsed.mul_f64(left))
            }
            _ => None,
        };
        Progress {
            done,
            total,
            elapsed,
            remaining,
        }
    }

    /// Events read per second since the catch-up began.
    pub fn rate(&self) -> f64 {
        match self.elapsed.as_secs_f64() {
            0.0 => 0.0,
            secs => self.done as f64 / secs,
        }
    }
}

/// Why `wait_for` returned without the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The time ran out first.
    #[error("runner `{name}` had not reached position {position} after {waited:?} (it is at {checkpoint})")]
    TimedOut {
        /// The runner.
        name: &'static str,
        /// The position waited for.
        position: u64,
        /// Its checkpoint when the time ran out.
        checkpoint: u64,
        /// How long it waited.
        waited: Duration,
    },
    /// The runner stopped before it got there.
    #[error("runner `{name}` stopped at position {checkpoint}, before position {position}")]
    Stopped {
        /// The runner.
        name: &'static str,
        /// The position waited for.
        position: u64,
        /// Where it stopped.
        checkpoint: u64,
    },
}

#[derive(Debug, Clone)]
struct Shared {
    checkpoint: u64,
    /// The end of the log as far as the runner knows: its reads, its `App`'s
    /// commits, and those its store signals.
    head: u64,
    applied: u64,
    parked: u64,
    state: RunnerState,
    /// When the runner was last at the end of the log (or started).
    caught_up_at: Instant,
    /// The catch-up under way, while the runner is behind.
    catch_up: Option<CatchUp>,
}

/// A catch-up (or a rebuild) under way.
#[derive(Debug, Clone, Copy)]
struct CatchUp {
    began: Instant,
    /// Events read since.
    done: u64,
    /// `done` plus the events left, as last counted.
    total: Option<u64>,
    rebuild: Option<Rebuild>,
}

/// What a runner and its handles share: its progress, its stop signal, and the
/// rebuilds asked of it.
pub(crate) struct Control {
    name: &'static str,
    progress: watch::Sender<Shared>,
    stop: Notify,
    rebuilds: mpsc::UnboundedSender<RebuildReply>,
}

impl Control {
    fn set(&self, change: impl FnOnce(&mut Shared)) {
        self.progress.send_modify(change);
    }

    pub(crate) fn status(&self) -> RunnerStatus {
        let progress = self.progress.borrow().clone();
        let head = progress.head.max(progress.checkpoint);
        let lag_time = match progress.state {
            RunnerState::Live => Duration::ZERO,
            _ => progress.caught_up_at.elapsed(),
        };
        let catch_up = progress.catch_up;
        RunnerStatus {
            name: self.name,
            checkpoint: progress.checkpoint,
            head,
            lag: head - progress.checkpoint,
            lag_time,
            applied: progress.applied,
            parked: progress.parked,
            state: progress.state,
            progress: catch_up.map(|c| Progress::new(c.done, c.total, c.began.elapsed())),
        }
    }

    /// Asks the runner to rebuild its read model between two pages, and waits
    /// until it has emptied it (the rebuild itself goes on in the runner).
    pub(crate) async fn rebuild(&self) -> Result<(), StoreError> {
        let stopped = || StoreError::Invalid {
            what: "rebuild",
            reason: format!("the runner of `{}` is stopped", self.name),
        };
        let (reply, answer) = oneshot::channel();
        self.rebuilds.send(reply).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub(crate) async fn wait_for(
        &self,
        position: Option<u64>,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let Some(position) = position else {
            return Ok(());
        };
        let mut progress = self.progress.subscribe();
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
                    name: self.name,
                    position,
                    checkpoint: self.status().checkpoint,
                    waited: timeout,
                })
            }
        };
        Err(WaitError::Stopped {
            name: self.name,
            position,
            checkpoint,
        })
    }

    pub(crate) async fn stop(&self) {
        let mut progress = self.progress.subscribe();
        self.stop.notify_one();
        let _ = progress
            .wait_for(|p| matches!(p.state, RunnerState::Stopped { .. }))
            .await;
    }

    /// Sets the parked count (after parked events were retried or skipped).
    pub(crate) fn set_parked(&self, parked: u64) {
        self.set(|p| p.parked = parked);
    }

    fn stopped(&self, error: Option<String>) {
        if let Some(error) = &error {
            tracing::error!(runner = self.name, %error, "runner stopped");
        }
        self.set(|p| p.state = RunnerState::Stopped { error });
    }

    /// Waits [`STANDBY`] (give or take a tenth) before trying to take over
    /// again, refusing the rebuilds asked meanwhile (another runner has the
    /// read model). Returns `false` if the runner was stopped meanwhile.
    async fn stand_by(&self, reason: String, rebuilds: &mut Rebuilds) -> bool {
        tracing::debug!(runner = self.name, %reason, "runner on standby");
        self.set(|p| {
            p.state = RunnerState::Standby {
                reason: reason.clone(),
            }
        });
        let pause = STANDBY.mul_f64(0.9 + rand::random::<f64>() / 5.0);
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                () = self.stop.notified() => return false,
                reply = rebuilds.next() => {
                    let _ = reply.send(Err(StoreError::Invalid {
                        what: "rebuild",
                        reason: format!("this runner of `{}` is on standby: {reason}", self.name),
                    }));
                }
            }
        }
    }

    /// Waits before the next attempt: a doubling pause from 10 ms, at most 5 s,
    /// with up to half of it random (so runners that failed together do not
    /// retry together); a rebuild asked meanwhile ends it. Returns `false` if
    /// the runner was stopped meanwhile.
    async fn pause(&self, error: String, failures: u32, rebuilds: &mut Rebuilds) -> bool {
        tracing::warn!(runner = self.name, %error, failures, "runner failed; retrying");
        self.set(|p| p.state = RunnerState::Retrying { error, failures });
        let pause = Duration::from_millis(10)
            .saturating_mul(1 << failures.min(10))
            .min(Duration::from_secs(5));
        let pause = pause.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = self.stop.notified() => false,
            reply = rebuilds.next() => {
                rebuilds.pending = Some(reply);
                true
            }
        }
    }

    /// A catch-up (or a `rebuild`) begins after `checkpoint`; the events left
    /// are counted at once if `count_now`, or at the first report.
    async fn catch_up(
        &self,
        app: &App,
        names: &[&str],
        checkpoint: u64,
        rebuild: Option<Rebuild>,
        count_now: bool,
        counted: &mut Counted,
    ) {
        *counted = Counted::default();
        let total = match count_now {
            true => counted.count(app, names, checkpoint).await,
            false => None,
        };
        let state = match rebuild {
            Some(_) => RunnerState::Rebuilding,
            None => RunnerState::CatchingUp,
        };
        if rebuild == Some(Rebuild::Reset) {
            tracing::info!(
                runner = self.name,
                events = total,
                "rebuilding the read model"
            );
        }
        self.set(|p| {
            p.checkpoint = checkpoint;
            p.state = state;
            p.catch_up = Some(CatchUp {
                began: Instant::now(),
                done: 0,
                total,
                rebuild,
            });
        });
    }

    /// Every [`PROGRESS_EVERY`] while behind: counts the events that came
    /// since the last count (all those after `checkpoint`, the first time), and
    /// logs the progress.
    async fn report(&self, app: &App, names: &[&str], checkpoint: u64, counted: &mut Counted) {
        let Some(catch_up) = self.progress.borrow().catch_up else {
            return;
        };
        if counted.reported_at.elapsed() < PROGRESS_EVERY {
            return;
        }
        counted.reported_at = Instant::now();
        counted.logged = true;
        let total = match counted.to {
            Some(after) => {
                let more = counted.count(app, names, after).await;
                catch_up.total.zip(more).map(|(total, more)| total + more)
            }
            None => {
                let left = counted.count(app, names, checkpoint).await;
                left.map(|left| left + catch_up.done)
            }
        };
        self.set(|p| {
            if let Some(c) = &mut p.catch_up {
                c.total = total.or(c.total);
            }
        });
        let Some(c) = self.progress.borrow().catch_up else {
            return;
        };
        let progress = Progress::new(c.done, c.total, c.began.elapsed());
        tracing::info!(
            runner = self.name,
            rebuilding = c.rebuild.is_some(),
            done = progress.done,
            total = progress.total,
            rate = progress.rate().round(),
            remaining = ?progress.remaining,
            "runner behind the log"
        );
    }

    /// Counts `events` more read in the catch-up under way.
    fn read(&self, events: u64) {
        self.set(|p| {
            if let Some(c) = &mut p.catch_up {
                c.done += events;
            }
        });
    }

    /// Logs the end of the catch-up under way, if any: the runner is live.
    fn caught_up(&self, counted: &Counted) {
        let Some(c) = self.progress.borrow().catch_up else {
            return;
        };
        let elapsed = c.began.elapsed();
        if c.rebuild == Some(Rebuild::Reset) || counted.logged {
            tracing::info!(
                runner = self.name,
                events = c.done,
                ?elapsed,
                "runner caught up"
            );
        } else {
            tracing::debug!(
                runner = self.name,
                events = c.done,
                ?elapsed,
                "runner caught up"
            );
        }
    }
}

/// The engine's side of a catch-up's progress: how far it counted the log.
#[derive(Debug)]
struct Counted {
    /// Where to count on from; `None` before the first count, or if the store
    /// cannot count.
    to: Option<u64>,
    reported_at: Instant,
    /// Whether its progress was logged (then its end is too).
    logged: bool,
}

impl Default for Counted {
    fn default() -> Self {
        Counted {
            to: None,
            reported_at: Instant::now(),
            logged: false,
        }
    }
}

impl Counted {
    /// The events of `names` after `after`; `None` if the store cannot count
    /// (or failed to: the count is only for progress).
    async fn count(&mut self, app: &App, names: &[&str], after: u64) -> Option<u64> {
        match app.store().count_all_of(after, names).await {
            Ok(Some(count)) => {
                self.to = Some(count.read_to);
                Some(count.events)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(%error, "counting the events behind failed");
                None
            }
        }
    }
}

/// The rebuilds asked of a runner by its handles.
pub(crate) struct Rebuilds {
    receiver: mpsc::UnboundedReceiver<RebuildReply>,
    /// One that ended a pause, to answer next.
    pending: Option<RebuildReply>,
}

impl Rebuilds {
    /// The next rebuild asked.
    async fn next(&mut self) -> RebuildReply {
        if let Some(reply) = self.pending.take() {
            return reply;
        }
        match self.receiver.recv().await {
            Some(reply) => reply,
            // Control keeps a sender for as long as the runner runs.
            None => std::future::pending().await,
        }
    }
}

/// Starts `sink`'s runner on a task of its own.
///
/// # Panics
/// Outside a tokio runtime, as `tokio::spawn` does.
pub(crate) fn spawn(app: App, sink: impl Sink) -> Arc<Control> {
    let (progress, _) = watch::channel(Shared {
        checkpoint: 0,
        head: 0,
        applied: 0,
        parked: sink.parked().unwrap_or(0),
        state: RunnerState::CatchingUp,
        caught_up_at: Instant::now(),
        catch_up: None,
    });
    let (rebuilds, receiver) = mpsc::unbounded_channel();
    let control = Arc::new(Control {
        name: sink.name(),
        progress,
        stop: Notify::new(),
        rebuilds,
    });
    let rebuilds = Rebuilds {
        receiver,
        pending: None,
    };
    tokio::spawn(run(app, sink, Arc::clone(&control), rebuilds));
    control
}

/// What a runner works with besides its sink.
struct Runner<'a> {
    app: &'a App,
    control: &'a Control,
    rebuilds: Rebuilds,
    counted: Counted,
}

/// The runner: start, catch up, then follow; until stopped or a failure that
/// trying again cannot cure. A sink that stands by starts over.
async fn run(app: App, mut sink: impl Sink, control: Arc<Control>, rebuilds: Rebuilds) {
    let _ends_stopped = EndsStopped(&control);
    let mut wake = Wake::new(&app);
    let mut runner = Runner {
        app: &app,
        control: &control,
        rebuilds,
        counted: Counted::default(),
    };
    loop {
        let Some(started) = start(&mut sink, &mut runner).await else {
            return;
        };
        if let Some(parked) = sink.parked() {
            control.set_parked(parked);
        }
        let names = sink.events();
        let (checkpoint, rebuild) = (started.checkpoint, started.rebuild);
        let counted = &mut runner.counted;
        control
            .catch_up(&app, names, checkpoint, rebuild, true, counted)
            .await;
        match follow(&mut sink, &mut runner, &mut wake, checkpoint).await {
            Next::StandBy(reason) => {
                if !control.stand_by(reason, &mut runner.rebuilds).await {
                    return control.stopped(None);
                }
            }
            Next::Stop(error) => {
                sink.release().await;
                return control.stopped(error);
            }
        }
    }
}

/// Where `sink` starts, once it has its turn; `None` once the runner stopped.
async fn start(sink: &mut impl Sink, runner: &mut Runner<'_>) -> Option<Started> {
    let control = runner.control;
    let mut failures = 0u32;
    loop {
        let started = tokio::select! {
            started = sink.start() => started,
            () = control.stop.notified() => {
                control.stopped(None);
                return None;
            }
        };
        let go_on = match started {
            Ok(started) => return Some(started),
            Err(failure) => match failure.then {
                Then::Retry => {
                    failures += 1;
                    control
                        .pause(failure.error, failures, &mut runner.rebuilds)
                        .await
                }
                Then::Standby => {
                    failures = 0;
                    control.stand_by(failure.error, &mut runner.rebuilds).await
                }
                Then::Stop => {
                    control.stopped(Some(failure.error));
                    return None;
                }
            },
        };
        if !go_on {
            control.stopped(None);
            return None;
        }
    }
}

/// Why [`follow`] returned.
enum Next {
    /// The sink lost its turn: stand by, then start over.
    StandBy(String),
    /// Stop, with the error if it was not asked for.
    Stop(Option<String>),
}

/// What wakes a live runner: its `App`'s commits, the commits its store
/// signals, or time.
struct Wake {
    /// The positions its `App` committed.
    commits: watch::Receiver<u64>,
    /// The positions its store signals, if it does.
    elsewhere: Option<watch::Receiver<u64>>,
    /// The next pause when a read stopped short of a known position.
    short_of: Duration,
}

impl Wake {
    fn new(app: &App) -> Self {
        Wake {
            commits: app.watch_commits(),
            elsewhere: app.store().watch_log(),
            short_of: SHORT_OF,
        }
    }

    /// The highest position known committed; both signals are marked seen,
    /// so that only later commits wake the runner.
    fn known(&mut self) -> u64 {
        let elsewhere = self
            .elsewhere
            .as_mut()
            .map_or(0, |signal| *signal.borrow_and_update());
        (*self.commits.borrow_and_update()).max(elsewhere)
    }

    /// Waits for a commit, or for the poll.
    async fn wait(&mut self) {
        let poll = match self.elsewhere {
            Some(_) => SAFETY_POLL,
            None => POLL,
        };
        let signalled = async {
            match &mut self.elsewhere {
                Some(signal) => signal.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.commits.changed() => {}
            signalled = signalled => {
                if !signalled {
                    // The store dropped its signal: poll as without one.
                    self.elsewhere = None;
                }
            }
            () = tokio::time::sleep(poll) => {}
        }
    }

    /// Pauses before reading again towards a position known committed that
    /// the last read stopped short of, a little longer each time.
    async fn pause_short_of(&mut self) {
        let pause = self.short_of;
        self.short_of = (pause * 2).min(POLL);
        tokio::time::sleep(pause).await;
    }
}

/// What woke a runner up while it read a page or waited for new events.
enum Woken<T> {
    /// What it waited for.
    Done(T),
    /// A rebuild was asked.
    Rebuild(RebuildReply),
    /// It was stopped.
    Stop,
}

/// `future`, unless the runner is stopped or asked to rebuild first.
async fn unless_woken<T>(runner: &mut Runner<'_>, future: impl Future<Output = T>) -> Woken<T> {
    tokio::select! {
        biased;
        () = runner.control.stop.notified() => Woken::Stop,
        reply = runner.rebuilds.next() => Woken::Rebuild(reply),
        done = future => Woken::Done(done),
    }
}

/// Empties `sink`'s read model and answers `reply`; the new checkpoint (0), or
/// `None` if it could not (then nothing changed).
async fn rebuild(
    sink: &mut impl Sink,
    runner: &mut Runner<'_>,
    reply: RebuildReply,
) -> Option<u64> {
    let control = runner.control;
    let rebuilt = sink.rebuild().await;
    if let Some(parked) = sink.parked() {
        control.set_parked(parked);
    }
    if let Err(error) = rebuilt {
        tracing::warn!(runner = control.name, %error, "the read model could not be rebuilt");
        let _ = reply.send(Err(error));
        return None;
    }
    let (app, names) = (runner.app, sink.events());
    let counted = &mut runner.counted;
    control
        .catch_up(app, names, 0, Some(Rebuild::Reset), true, counted)
        .await;
    let _ = reply.send(Ok(()));
    Some(0)
}

/// Catches up from `checkpoint`, then follows the log; rebuilds between pages
/// when asked.
async fn follow(
    sink: &mut impl Sink,
    runner: &mut Runner<'_>,
    wake: &mut Wake,
    mut checkpoint: u64,
) -> Next {
    let (app, control) = (runner.app, runner.control);
    let (mut failures, mut read_failures) = (0, 0);
    // The position of the event that failed last, to count its attempts.
    let mut failed_at = None;
    loop {
        control
            .report(app, sink.events(), checkpoint, &mut runner.counted)
            .await;
        let read = app.store().read_all_of(checkpoint, BATCH, sink.events());
        let page = match unless_woken(runner, read).await {
            Woken::Done(page) => page,
            Woken::Stop => return Next::Stop(None),
            Woken::Rebuild(reply) => {
                if let Some(rebuilt) = rebuild(sink, runner, reply).await {
                    (checkpoint, failures, read_failures, failed_at) = (rebuilt, 0, 0, None);
                }
                continue;
            }
        };
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                // The store is down: try again for as long as it takes.
                read_failures += 1;
                let error = error.to_string();
                if !control
                    .pause(error, read_failures, &mut runner.rebuilds)
                    .await
                {
                    return Next::Stop(None);
                }
                continue;
            }
        };
        let (read_to, events) = (page.read_to, page.events.len());
        let span = tracing::debug_span!(
            "eda.runner",
            runner = control.name,
            after = checkpoint,
            read_to,
            events,
        );
        let last_attempt = failed_at == Some(checkpoint) && failures + 1 >= MAX_ATTEMPTS;
        let applied = sink.apply(page, last_attempt).instrument(span).await;
        if let Some(parked) = sink.parked() {
            control.set_parked(parked);
        }
        match applied {
            Ok(()) => {
                (failures, read_failures) = (0, 0);
                failed_at = None;
                let before = std::mem::replace(&mut checkpoint, read_to);
                let head = wake.known().max(read_to);
                // A short page from a store that scans a bounded window may end
                // before the log does: the end is where a read moves no further.
                let live = events < BATCH && (read_to == before || read_to >= head);
                control.read(events as u64);
                if live {
                    control.caught_up(&runner.counted);
                }
                let behind_again = !live && control.progress.borrow().catch_up.is_none();
                if behind_again {
                    let counted = &mut runner.counted;
                    control
                        .catch_up(app, sink.events(), before, None, false, counted)
                        .await;
                    control.read(events as u64);
                }
                control.set(|p| {
                    p.checkpoint = checkpoint;
                    p.head = p.head.max(head);
                    p.applied += events as u64;
                    if live {
                        p.state = RunnerState::Live;
                        p.caught_up_at = Instant::now();
                        p.catch_up = None;
                    } else if let Some(c) = &p.catch_up {
                        p.state = match c.rebuild {
                            Some(_) => RunnerState::Rebuilding,
                            None => RunnerState::CatchingUp,
                        };
                    }
                });
                if read_to >= head {
                    wake.short_of = SHORT_OF;
                }
                if live {
                    // Woken by a commit (this App's, or one its store signals),
                    // or after a while. A commit below the horizon (PostgreSQL)
                    // is read again after a short pause: the horizon passes it
                    // once the older transactions end, and no signal says when.
                    let next = async {
                        if read_to < head {
                            wake.pause_short_of().await;
                        } else {
                            wake.wait().await;
                        }
                    };
                    match unless_woken(runner, next).await {
                        Woken::Done(()) => {}
                        Woken::Stop => return Next::Stop(None),
                        Woken::Rebuild(reply) => {
                            if let Some(rebuilt) = rebuild(sink, runner, reply).await {
                                checkpoint = rebuilt;
                            }
                        }
                    }
                }
            }
            Err(failure) => {
                if let Some(reached) = failure.reached {
                    let applied = failure.applied;
                    checkpoint = checkpoint.max(reached);
                    control.read(applied);
                    control.set(|p| {
                        p.checkpoint = checkpoint;
                        p.applied += applied;
                    });
                }
                match failure.then {
                    Then::Retry => {}
                    Then::Stop => return Next::Stop(Some(failure.error)),
                    Then::Standby => return Next::StandBy(failure.error),
                }
                if !failure.event {
                    // The database or the store failed, not an event: try
                    // again for as long as it takes, as when reading.
                    read_failures += 1;
                    if !control
                        .pause(failure.error, read_failures, &mut runner.rebuilds)
                        .await
                    {
                        return Next::Stop(None);
                    }
                    continue;
                }
                let at = checkpoint;
                if failed_at == Some(at) {
                    failures += 1;
                } else {
                    (failed_at, failures) = (Some(at), 1);
                }
                if failures >= MAX_ATTEMPTS {
                    let error = format!(
                        "the event after position {at} failed {failures} times: {}",
                        failure.error
                    );
                    return Next::Stop(Some(error));
                }
                if !control
                    .pause(failure.error, failures, &mut runner.rebuilds)
                    .await
                {
                    return Next::Stop(None);
                }
            }
        }
    }
}

/// Marks the runner stopped however its task ends: a panicking `#[on]` method
/// included, so that nobody waits for it forever.
struct EndsStopped<'a>(&'a Control);

impl Drop for EndsStopped<'_> {
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
