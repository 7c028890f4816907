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

mod control;
mod status;
mod stored;
#[cfg(test)]
mod tests;

pub(crate) use control::{Control, Rebuilds};
use control::{Counted, Shared};
pub use status::{Progress, RunnerState, RunnerStatus, WaitError};
pub(crate) use stored::StoredCheckpoint;

/// How many events a runner reads and applies at a time.
pub(crate) const BATCH: usize = 512;

/// The longest a live runner waits before looking for events another writer
/// committed, on a store that does not signal them (its own `App`'s commits
/// wake it at once).
const POLL: Duration = Duration::from_millis(20);

/// The same on a store that signals other writers' commits
/// (`DynEventStore::watch_log`): only in case a signal went missing.
#[cfg(not(test))]
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// In unit tests, so long that a runner the poll found can't pass for one its
/// signal woke, however slow the machine.
#[cfg(test)]
const SAFETY_POLL: Duration = Duration::from_secs(60);

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

    /// For a sink whose turn is a lease it renews in [`apply`](Self::apply):
    /// the longest a live runner may wait for new events before it applies an
    /// empty page anyway, so that an idle holder keeps its lease.
    fn renew_every(&self) -> Option<Duration> {
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

    /// Waits for a commit, or for the poll (or for `renew`, if sooner).
    async fn wait(&mut self, renew: Option<Duration>) {
        let poll = match self.elsewhere {
            Some(_) => SAFETY_POLL,
            None => POLL,
        };
        let poll = renew.map_or(poll, |renew| renew.min(poll));
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
                    let renew = sink.renew_every();
                    let next = async {
                        if read_to < head {
                            wake.pause_short_of().await;
                        } else {
                            wake.wait(renew).await;
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
                    // again for as long as it takes, as when reading; from
                    // the shortest pause if the page got somewhere first.
                    if failure.reached.is_some() {
                        read_failures = 0;
                    }
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
