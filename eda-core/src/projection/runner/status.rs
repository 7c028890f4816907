//! What a runner tells its handles: its state, its status and progress, and why
//! a wait ended without the position.

use std::time::Duration;

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
    pub(super) fn new(done: u64, total: Option<u64>, elapsed: Duration) -> Self {
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
