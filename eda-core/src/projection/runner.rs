//! The engine every runner shares (projections of each kind, policies): read the
//! log after the checkpoint, only the events the runner handles, hand each page
//! to a [`Sink`] that applies it and moves the checkpoint, retry what failed,
//! then follow the log live. Each runner is a task of its own (a bulkhead): a
//! slow or failing one delays no other runner and no command.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::app::App;
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

/// Where a runner's events go: a read model, or a policy's commands.
pub(crate) trait Sink: Send + 'static {
    /// The runner's name, for its status and its traces.
    fn name(&self) -> &'static str;

    /// The stored names of the events it handles.
    fn events(&self) -> &'static [&'static str];

    /// The checkpoint to start after. A sink whose read model has one runner at
    /// a time fails with [`Then::Standby`] while another runner has it.
    fn start(&mut self) -> impl Future<Output = Result<u64, Failure>> + Send;

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

    /// How many events are parked, for a sink that parks them.
    fn parked(&self) -> Option<u64> {
        None
    }
}

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
        }
    }

    /// A failure that trying again may cure.
    pub(crate) fn retry(error: impl ToString, reached: Option<u64>) -> Self {
        Failure::new(error, reached, Then::Retry)
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
struct Progress {
    checkpoint: u64,
    /// The end of the log as far as the runner knows: its reads, its `App`'s
    /// commits, and those its store signals.
    head: u64,
    applied: u64,
    parked: u64,
    state: RunnerState,
    /// When the runner was last at the end of the log (or started).
    caught_up_at: Instant,
}

/// What a runner and its handles share: its progress and its stop signal.
pub(crate) struct Control {
    name: &'static str,
    progress: watch::Sender<Progress>,
    stop: Notify,
}

impl Control {
    fn set(&self, change: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(change);
    }

    pub(crate) fn status(&self) -> RunnerStatus {
        let progress = self.progress.borrow().clone();
        let head = progress.head.max(progress.checkpoint);
        let lag_time = match progress.state {
            RunnerState::Live => Duration::ZERO,
            _ => progress.caught_up_at.elapsed(),
        };
        RunnerStatus {
            name: self.name,
            checkpoint: progress.checkpoint,
            head,
            lag: head - progress.checkpoint,
            lag_time,
            applied: progress.applied,
            parked: progress.parked,
            state: progress.state,
        }
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
    /// again. Returns `false` if the runner was stopped meanwhile.
    async fn stand_by(&self, reason: String) -> bool {
        tracing::debug!(runner = self.name, %reason, "runner on standby");
        self.set(|p| p.state = RunnerState::Standby { reason });
        let pause = STANDBY.mul_f64(0.9 + rand::random::<f64>() / 5.0);
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = self.stop.notified() => false,
        }
    }

    /// Waits before the next attempt: a doubling pause from 10 ms, at most 5 s,
    /// with up to half of it random (so runners that failed together do not
    /// retry together). Returns `false` if the runner was stopped meanwhile.
    async fn pause(&self, error: String, failures: u32) -> bool {
        tracing::warn!(runner = self.name, %error, failures, "runner failed; retrying");
        self.set(|p| p.state = RunnerState::Retrying { error, failures });
        let pause = Duration::from_millis(10)
            .saturating_mul(1 << failures.min(10))
            .min(Duration::from_secs(5));
        let pause = pause.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = self.stop.notified() => false,
        }
    }
}

/// Starts `sink`'s runner on a task of its own.
///
/// # Panics
/// Outside a tokio runtime, as `tokio::spawn` does.
pub(crate) fn spawn(app: App, sink: impl Sink) -> Arc<Control> {
    let (progress, _) = watch::channel(Progress {
        checkpoint: 0,
        head: 0,
        applied: 0,
        parked: sink.parked().unwrap_or(0),
        state: RunnerState::CatchingUp,
        caught_up_at: Instant::now(),
    });
    let control = Arc::new(Control {
        name: sink.name(),
        progress,
        stop: Notify::new(),
    });
    tokio::spawn(run(app, sink, Arc::clone(&control)));
    control
}

/// The runner: start, catch up, then follow; until stopped or a failure that
/// trying again cannot cure. A sink that stands by starts over.
async fn run(app: App, mut sink: impl Sink, control: Arc<Control>) {
    let _ends_stopped = EndsStopped(&control);
    let mut wake = Wake::new(&app);
    loop {
        let Some(checkpoint) = start(&mut sink, &control).await else {
            return;
        };
        match follow(&app, &mut sink, &control, &mut wake, checkpoint).await {
            Next::StandBy(reason) => {
                if !control.stand_by(reason).await {
                    return control.stopped(None);
                }
            }
            Next::Stop(error) => return control.stopped(error),
        }
    }
}

/// The checkpoint `sink` starts after, once it has its turn; `None` once the
/// runner stopped.
async fn start(sink: &mut impl Sink, control: &Control) -> Option<u64> {
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
            Ok(checkpoint) => {
                control.set(|p| {
                    p.checkpoint = checkpoint;
                    p.state = RunnerState::CatchingUp;
                });
                return Some(checkpoint);
            }
            Err(failure) => match failure.then {
                Then::Retry => {
                    failures += 1;
                    control.pause(failure.error, failures).await
                }
                Then::Standby => {
                    failures = 0;
                    control.stand_by(failure.error).await
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

    /// Waits for a commit, or for the poll; `false` if the runner was stopped
    /// meanwhile.
    async fn wait(&mut self, stop: &Notify) -> bool {
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
            () = stop.notified() => return false,
        }
        true
    }

    /// Pauses before reading again towards a position known committed that
    /// the last read stopped short of, a little longer each time; `false` if
    /// the runner was stopped meanwhile.
    async fn pause_short_of(&mut self, stop: &Notify) -> bool {
        let pause = self.short_of;
        self.short_of = (pause * 2).min(POLL);
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = stop.notified() => false,
        }
    }
}

/// Catches up from `checkpoint`, then follows the log.
async fn follow(
    app: &App,
    sink: &mut impl Sink,
    control: &Control,
    wake: &mut Wake,
    mut checkpoint: u64,
) -> Next {
    let (mut failures, mut read_failures) = (0, 0);
    // The position of the event that failed last, to count its attempts.
    let mut failed_at = None;
    loop {
        let read = app.store().read_all_of(checkpoint, BATCH, sink.events());
        let page = tokio::select! {
            page = read => page,
            () = control.stop.notified() => return Next::Stop(None),
        };
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                // The store is down: try again for as long as it takes.
                read_failures += 1;
                if !control.pause(error.to_string(), read_failures).await {
                    return Next::Stop(None);
                }
                continue;
            }
        };
        read_failures = 0;
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
                failures = 0;
                failed_at = None;
                let before = std::mem::replace(&mut checkpoint, read_to);
                let head = wake.known().max(read_to);
                // A short page from a store that scans a bounded window may end
                // before the log does: the end is where a read moves no further.
                let live = events < BATCH && (read_to == before || read_to >= head);
                control.set(|p| {
                    p.checkpoint = checkpoint;
                    p.head = p.head.max(head);
                    p.applied += events as u64;
                    if live {
                        p.state = RunnerState::Live;
                        p.caught_up_at = Instant::now();
                    } else {
                        p.state = RunnerState::CatchingUp;
                    }
                });
                if read_to >= head {
                    wake.short_of = SHORT_OF;
                }
                let go_on = match live {
                    false => true,
                    // A commit below the horizon (PostgreSQL): the horizon
                    // passes it once the older transactions end, and no
                    // signal says when.
                    true if read_to < head => wake.pause_short_of(&control.stop).await,
                    true => wake.wait(&control.stop).await,
                };
                if !go_on {
                    return Next::Stop(None);
                }
            }
            Err(failure) => {
                if let Some(reached) = failure.reached {
                    let applied = failure.applied;
                    checkpoint = checkpoint.max(reached);
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
                if !control.pause(failure.error, failures).await {
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
