use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::ResilienceError;

/// Where a [`CircuitBreaker`] is, as [`CircuitBreaker::state`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls are rejected without calling the operation until the break is over.
    Open,
    /// The break is over: the next call is the probe, or the probe is running and
    /// other calls are rejected until it ends.
    HalfOpen,
}

/// A circuit breaker: after a run of failures it stops calling the dependency for
/// a while, then lets one probe through to see whether it has recovered.
///
/// - **Closed**: calls go through. [`failure_threshold`](Self::failure_threshold)
///   consecutive failures (default 5) open it.
/// - **Open**: for [`break_duration`](Self::break_duration) (default 30 s), calls
///   fail fast with [`ResilienceError::Open`], which says how long until the next
///   probe; the operation is not called.
/// - **Half-open**: the first call after the break is the probe; calls made while
///   it runs are rejected (`retry_in` zero). A successful probe closes the breaker;
///   a failed one opens it for another full break. A probe that is dropped before
///   it ends (its caller gave up) decides nothing: the next call probes instead.
///
/// Which errors are failures is [`failure_if`](Self::failure_if)'s predicate on
/// the operation's error (default: every error), and a time-out
/// ([`ResilienceError::TimedOut`], from a [`Timeout`](super::Timeout) inside a
/// [`Resilience`](super::Resilience)) always is. An error that is not a failure
/// counts as a success: the dependency answered.
///
/// Changes of state are logged with `tracing` under the breaker's name (`warn`
/// when it opens, `info` when it half-opens and closes).
///
/// Cheap to clone: clones share the state (an `Arc`), so one breaker per
/// dependency can be handed to every task that calls it. The settings belong to
/// each clone: set them first, then clone.
///
/// It counts consecutive failures, not a failure rate over a window: eda's callers
/// (the relay, consumers) call their dependency one call after another, where a
/// run of failures is the signal; a rate would also need a minimum number of calls
/// per window to mean anything.
pub struct CircuitBreaker<E> {
    name: Arc<str>,
    failure_threshold: u32,
    break_duration: Duration,
    is_failure: Arc<dyn Fn(&E) -> bool + Send + Sync>,
    shared: Arc<Mutex<Shared>>,
}

/// The state clones share.
#[derive(Debug)]
struct Shared {
    circuit: Circuit,
    /// Changed on every transition, so that the outcome of a call admitted before
    /// one is not counted after it.
    generation: u64,
}

#[derive(Debug, Clone, Copy)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing,
}

/// A change of state, logged once the lock is released.
enum Transition {
    Opened { failures: u32 },
    Reopened,
    HalfOpened,
    Closed,
    ProbeDropped,
}

impl<E> CircuitBreaker<E> {
    /// Consecutive failures that open a breaker made by [`new`](Self::new).
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
    /// How long a breaker made by [`new`](Self::new) stays open.
    pub const DEFAULT_BREAK_DURATION: Duration = Duration::from_secs(30);

    /// A closed breaker named `name` (in its logs and errors) with the defaults.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
            break_duration: Self::DEFAULT_BREAK_DURATION,
            is_failure: Arc::new(|_| true),
            shared: Arc::new(Mutex::new(Shared {
                circuit: Circuit::Closed { failures: 0 },
                generation: 0,
            })),
        }
    }

    /// Opens after `failures` consecutive failures (at least 1).
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// Stays open for `duration` before letting a probe through.
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
    }

    /// Counts an error of the operation as a failure only when `is_failure` says
    /// so (a refused request is not a sign of an unhealthy dependency; a refused
    /// connection is).
    pub fn failure_if(mut self, is_failure: impl Fn(&E) -> bool + Send + Sync + 'static) -> Self {
        self.is_failure = Arc::new(is_failure);
        self
    }

    /// The name given to [`new`](Self::new).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state now: [`BreakerState::HalfOpen`] as soon as the break is over,
    /// even before the next call probes.
    pub fn state(&self) -> BreakerState {
        match self.lock().circuit {
            Circuit::Closed { .. } => BreakerState::Closed,
            Circuit::Open { until } if Instant::now() < until => BreakerState::Open,
            Circuit::Open { .. } | Circuit::Probing => BreakerState::HalfOpen,
        }
    }

    /// Runs `op` if the breaker lets it through, and counts its outcome.
    ///
    /// # Errors
    ///
    /// [`ResilienceError::Inner`] with the operation's error, or
    /// [`ResilienceError::Open`] (the operation was not called).
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(|| async { op().await.map_err(ResilienceError::Inner) })
            .await
    }

    /// The breaker around a call whose errors are already [`ResilienceError`]s;
    /// `start` is called only if the call is let through.
    pub(super) async fn run<T, F, Fut>(&self, start: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ResilienceError<E>>>,
    {
        let mut admission = self.admit()?;
        let result = start().await;
        let failed = match &result {
            Ok(_) => false,
            Err(error) => self.is_failure(error),
        };
        admission.settle(failed);
        result
    }

    fn is_failure(&self, error: &ResilienceError<E>) -> bool {
        match error {
            ResilienceError::Inner(e) => (self.is_failure)(e),
            ResilienceError::TimedOut { .. } => true,
            ResilienceError::Exhausted { last, .. } => self.is_failure(last),
            ResilienceError::Open { .. } | ResilienceError::Full { .. } => false,
        }
    }

    /// When a break that starts now ends (a break too long for the clock ends
    /// in about 30 years).
    fn break_ends(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.break_duration)
            .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 24 * 3600)))
            .unwrap_or(now)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing panics while the lock is held; a poisoned lock still holds a
        // consistent state.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self) -> Result<Admission<'_, E>, ResilienceError<E>> {
        let now = Instant::now();
        let (admission, transition) = {
            let mut shared = self.lock();
            match shared.circuit {
                Circuit::Closed { .. } => {
                    let kind = Kind::Call {
                        generation: shared.generation,
                    };
                    (Ok(kind), None)
                }
                Circuit::Open { until } if now >= until => {
                    shared.circuit = Circuit::Probing;
                    shared.generation += 1;
                    (Ok(Kind::Probe), Some(Transition::HalfOpened))
                }
                Circuit::Open { until } => (Err(until.saturating_duration_since(now)), None),
                Circuit::Probing => (Err(Duration::ZERO), None),
            }
        };
        self.log(transition);
        match admission {
            Ok(kind) => Ok(Admission {
                breaker: self,
                kind,
                settled: false,
            }),
            Err(retry_in) => Err(ResilienceError::Open {
                name: self.name.clone(),
                retry_in,
            }),
        }
    }

    fn log(&self, transition: Option<Transition>) {
        let breaker = &*self.name;
        match transition {
            None => {}
            Some(Transition::Opened { failures }) => tracing::warn!(
                breaker,
                failures,
                break_duration = ?self.break_duration,
                "circuit breaker opened"
            ),
            Some(Transition::Reopened) => tracing::warn!(
                breaker,
                break_duration = ?self.break_duration,
                "circuit breaker probe failed: open again"
            ),
            Some(Transition::HalfOpened) => {
                tracing::info!(breaker, "circuit breaker half-open: one probe goes through")
            }
            Some(Transition::Closed) => {
                tracing::info!(breaker, "circuit breaker closed: the probe succeeded")
            }
            Some(Transition::ProbeDropped) => tracing::info!(
                breaker,
                "circuit breaker probe dropped before it ended: the next call probes"
            ),
        }
    }
}

impl<E> Clone for CircuitBreaker<E> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            failure_threshold: self.failure_threshold,
            break_duration: self.break_duration,
            is_failure: self.is_failure.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<E> fmt::Debug for CircuitBreaker<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("failure_threshold", &self.failure_threshold)
            .field("break_duration", &self.break_duration)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// A call the breaker let through; its outcome is counted by
/// [`settle`](Self::settle), or, for a probe dropped before then, by `Drop`.
struct Admission<'a, E> {
    breaker: &'a CircuitBreaker<E>,
    kind: Kind,
    settled: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    /// A call while closed, in the closed period numbered `generation`.
    Call { generation: u64 },
    /// The one call of a half-open breaker.
    Probe,
}

impl<E> Admission<'_, E> {
    fn settle(&mut self, failed: bool) {
        self.settled = true;
        let breaker = self.breaker;
        let transition = {
            let mut shared = breaker.lock();
            match (self.kind, shared.circuit) {
                (Kind::Call { generation }, Circuit::Closed { failures })
                    if generation == shared.generation =>
                {
                    if !failed {
                        shared.circuit = Circuit::Closed { failures: 0 };
                        None
                    } else if failures.saturating_add(1) >= breaker.failure_threshold {
                        shared.circuit = Circuit::Open {
                            until: breaker.break_ends(),
                        };
                        shared.generation += 1;
                        Some(Transition::Opened {
                            failures: failures.saturating_add(1),
                        })
                    } else {
                        shared.circuit = Circuit::Closed {
                            failures: failures.saturating_add(1),
                        };
                        None
                    }
                }
                (Kind::Probe, Circuit::Probing) => {
                    shared.generation += 1;
                    if failed {
                        shared.circuit = Circuit::Open {
                            until: breaker.break_ends(),
                        };
                        Some(Transition::Reopened)
                    } else {
                        shared.circuit = Circuit::Closed { failures: 0 };
                        Some(Transition::Closed)
                    }
                }
                // Admitted before the last transition: its outcome is stale.
                _ => None,
            }
        };
        breaker.log(transition);
    }
}

impl<E> Drop for Admission<'_, E> {
    fn drop(&mut self) {
        if self.settled || !matches!(self.kind, Kind::Probe) {
            return;
        }
        let breaker = self.breaker;
        let transition = {
            let mut shared = breaker.lock();
            if matches!(shared.circuit, Circuit::Probing) {
                shared.circuit = Circuit::Open {
                    until: Instant::now(),
                };
                shared.generation += 1;
                Some(Transition::ProbeDropped)
            } else {
                None
            }
        };
        breaker.log(transition);
    }
}
