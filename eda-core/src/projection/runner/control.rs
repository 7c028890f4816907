//! What a runner and its handles share: its progress, its stop signal and the
//! rebuilds asked of it, with the pauses, standbys and progress reports the
//! engine goes through.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::{
    Progress, Rebuild, RebuildReply, RunnerState, RunnerStatus, WaitError, PROGRESS_EVERY, STANDBY,
};
use crate::app::App;
use crate::error::StoreError;

#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) checkpoint: u64,
    /// The end of the log as far as the runner knows: its reads, its `App`'s
    /// commits, and those its store signals.
    pub(super) head: u64,
    pub(super) applied: u64,
    pub(super) parked: u64,
    pub(super) state: RunnerState,
    /// When the runner was last at the end of the log (or started).
    pub(super) caught_up_at: Instant,
    /// The catch-up under way, while the runner is behind.
    pub(super) catch_up: Option<CatchUp>,
}

/// A catch-up (or a rebuild) under way.
#[derive(Debug, Clone, Copy)]
pub(super) struct CatchUp {
    pub(super) began: Instant,
    /// Events read since.
    pub(super) done: u64,
    /// `done` plus the events left, as last counted.
    pub(super) total: Option<u64>,
    pub(super) rebuild: Option<Rebuild>,
}

/// What a runner and its handles share: its progress, its stop signal, and the
/// rebuilds asked of it.
pub(crate) struct Control {
    pub(super) name: &'static str,
    pub(super) progress: watch::Sender<Shared>,
    pub(super) stop: Notify,
    pub(super) rebuilds: mpsc::UnboundedSender<RebuildReply>,
}

impl Control {
    pub(super) fn set(&self, change: impl FnOnce(&mut Shared)) {
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

    pub(super) fn stopped(&self, error: Option<String>) {
        if let Some(error) = &error {
            tracing::error!(runner = self.name, %error, "runner stopped");
        }
        self.set(|p| p.state = RunnerState::Stopped { error });
    }

    /// Waits [`STANDBY`] (give or take a tenth) before trying to take over
    /// again, refusing the rebuilds asked meanwhile (another runner has the
    /// read model). Returns `false` if the runner was stopped meanwhile.
    pub(super) async fn stand_by(&self, reason: String, rebuilds: &mut Rebuilds) -> bool {
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
    pub(super) async fn pause(
        &self,
        error: String,
        failures: u32,
        rebuilds: &mut Rebuilds,
    ) -> bool {
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
    pub(super) async fn catch_up(
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
    pub(super) async fn report(
        &self,
        app: &App,
        names: &[&str],
        checkpoint: u64,
        counted: &mut Counted,
    ) {
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
    pub(super) fn read(&self, events: u64) {
        self.set(|p| {
            if let Some(c) = &mut p.catch_up {
                c.done += events;
            }
        });
    }

    /// Logs the end of the catch-up under way, if any: the runner is live.
    pub(super) fn caught_up(&self, counted: &Counted) {
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
pub(super) struct Counted {
    /// Where to count on from; `None` before the first count, or if the store
    /// cannot count.
    pub(super) to: Option<u64>,
    pub(super) reported_at: Instant,
    /// Whether its progress was logged (then its end is too).
    pub(super) logged: bool,
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
    pub(super) async fn count(&mut self, app: &App, names: &[&str], after: u64) -> Option<u64> {
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
    pub(super) receiver: mpsc::UnboundedReceiver<RebuildReply>,
    /// One that ended a pause, to answer next.
    pub(super) pending: Option<RebuildReply>,
}

impl Rebuilds {
    /// The next rebuild asked.
    pub(super) async fn next(&mut self) -> RebuildReply {
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
