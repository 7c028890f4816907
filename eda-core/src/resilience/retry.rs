use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use super::ResilienceError;

/// How much of each pause of a [`Retry`] is random, so that callers that failed
/// together do not all try again at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// The schedule's pauses as they are.
    None,
    /// A pause drawn evenly between zero and the schedule's ("full jitter", the
    /// default): spreads callers out the most, and is what `App` uses between
    /// version conflicts.
    #[default]
    Full,
    /// Half the schedule's pause plus a random part up to the other half ("equal
    /// jitter"): never shorter than half.
    Half,
}

impl Jitter {
    fn apply(self, ceiling: Duration) -> Duration {
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let nanos = match self {
            Jitter::None => return ceiling,
            Jitter::Full => rand::random_range(0..=nanos),
            Jitter::Half => {
                let half = nanos / 2;
                half + rand::random_range(0..=nanos - half)
            }
        };
        Duration::from_nanos(nanos)
    }
}

/// Calls an operation again after a failure, with exponential back-off.
///
/// The pause before attempt `n + 1` is at most `initial_delay · factor^(n - 1)`,
/// capped at `max_delay`, of which [`Jitter`] makes a random part; every pause is
/// at most `max_delay`. Pauses use tokio's timer (`tokio::time::sleep`), so tests
/// on a paused clock run them instantly.
///
/// Defaults: 100 ms initial delay, factor 2, 10 s maximum delay, 5 attempts in all
/// (the first and 4 retries), full jitter, no limit on the elapsed time, every
/// error of the operation retried.
///
/// What is retried:
/// - the operation's error when [`retry_if`](Self::retry_if)'s predicate says so;
///   otherwise it is returned at once as [`ResilienceError::Inner`];
/// - a time-out ([`ResilienceError::TimedOut`]) of an attempt, always;
/// - never a rejection by an open breaker or a full bulkhead: it is returned at
///   once, so a retry does not spin against an open breaker (the error says when
///   the next probe is due; the caller decides whether to wait that long).
///
/// When the attempts ([`max_attempts`](Self::max_attempts)) or the time
/// ([`max_elapsed`](Self::max_elapsed)) run out, the call ends with
/// [`ResilienceError::Exhausted`], which holds the last error.
///
/// Retry only operations that are safe to repeat (idempotent, or made so with an
/// idempotency key).
///
/// The schedule comes from `backon`'s exponential builder (without its jitter,
/// which adds up to the whole delay on top and so can exceed the maximum); the
/// jitter and the loop are eda's, so that a retry can tell which errors to retry
/// and stop on a breaker's rejection.
pub struct Retry<E> {
    initial_delay: Duration,
    factor: f32,
    max_delay: Duration,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    jitter: Jitter,
    is_retryable: Arc<dyn Fn(&E) -> bool + Send + Sync>,
}

impl<E> Retry<E> {
    /// The first pause of a policy made by [`new`](Self::new).
    pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_millis(100);
    /// The growth of the pauses of a policy made by [`new`](Self::new).
    pub const DEFAULT_FACTOR: f32 = 2.0;
    /// The longest pause of a policy made by [`new`](Self::new).
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);
    /// The attempts (the first included) of a policy made by [`new`](Self::new).
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

    /// A retry policy with the defaults.
    pub fn new() -> Self {
        Self {
            initial_delay: Self::DEFAULT_INITIAL_DELAY,
            factor: Self::DEFAULT_FACTOR,
            max_delay: Self::DEFAULT_MAX_DELAY,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            max_elapsed: None,
            jitter: Jitter::default(),
            is_retryable: Arc::new(|_| true),
        }
    }

    /// The (largest) first pause.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Each pause's ceiling is the previous one's times `factor` (at least 1; a
    /// `NaN` counts as 1).
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = factor.max(1.0);
        self
    }

    /// No pause is longer than `delay`, jitter included.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Calls the operation at most `attempts` times in all, the first included (at
    /// least 1: `1` is no retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Starts no attempt whose pause would end more than `elapsed` after the
    /// first attempt started (the attempts themselves count); `None`, the default:
    /// only [`max_attempts`](Self::max_attempts) limits.
    pub fn max_elapsed(mut self, elapsed: Option<Duration>) -> Self {
        self.max_elapsed = elapsed;
        self
    }

    /// How random the pauses are.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Retries an error of the operation only when `is_retryable` says so (a
    /// lost connection is worth another try, a refused request is not).
    pub fn retry_if(mut self, is_retryable: impl Fn(&E) -> bool + Send + Sync + 'static) -> Self {
        self.is_retryable = Arc::new(is_retryable);
        self
    }

    /// The pauses this policy would make if every attempt failed: one before each
    /// attempt after the first, so `max_attempts - 1` of them, each at most
    /// `max_delay` (random where [`Jitter`] says so: a new draw on every call).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + 'static {
        self.pauses()
    }

    fn pauses(&self) -> Delays {
        Delays {
            ceilings: ExponentialBuilder::new()
                .with_min_delay(self.initial_delay)
                .with_factor(self.factor)
                .with_max_delay(self.max_delay)
                .with_max_times(usize::try_from(self.max_attempts - 1).unwrap_or(usize::MAX))
                .build(),
            max_delay: self.max_delay,
            jitter: self.jitter,
        }
    }

    /// Runs `op` until it succeeds, fails with an error not worth retrying, or the
    /// attempts or the time run out.
    ///
    /// # Errors
    ///
    /// [`ResilienceError::Inner`] with an error the predicate does not retry, or
    /// [`ResilienceError::Exhausted`] with the last error.
    pub async fn call<T, F, Fut>(&self, mut op: F) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut schedule = self.start();
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    let pause = schedule.after_failure(ResilienceError::Inner(e))?;
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// The schedule of one call, started now.
    pub(super) fn start(&self) -> Schedule<'_, E> {
        Schedule {
            retry: self,
            delays: self.pauses(),
            attempts: 0,
            started: Instant::now(),
        }
    }

    fn is_retryable(&self, error: &ResilienceError<E>) -> bool {
        match error {
            ResilienceError::Inner(e) => (self.is_retryable)(e),
            ResilienceError::TimedOut { .. } => true,
            ResilienceError::Open { .. }
            | ResilienceError::Full { .. }
            | ResilienceError::Exhausted { .. } => false,
        }
    }
}

impl<E> Default for Retry<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> Clone for Retry<E> {
    fn clone(&self) -> Self {
        Self {
            initial_delay: self.initial_delay,
            factor: self.factor,
            max_delay: self.max_delay,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            jitter: self.jitter,
            is_retryable: self.is_retryable.clone(),
        }
    }
}

impl<E> fmt::Debug for Retry<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("initial_delay", &self.initial_delay)
            .field("factor", &self.factor)
            .field("max_delay", &self.max_delay)
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

/// The pauses of [`Retry::delays`].
struct Delays {
    ceilings: <ExponentialBuilder as BackoffBuilder>::Backoff,
    max_delay: Duration,
    jitter: Jitter,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // backon's first delay is the initial one even when that is above the maximum.
        let ceiling = self.ceilings.next()?.min(self.max_delay);
        Some(self.jitter.apply(ceiling))
    }
}

/// Where one call is in its retry schedule.
pub(super) struct Schedule<'a, E> {
    retry: &'a Retry<E>,
    delays: Delays,
    attempts: u32,
    started: Instant,
}

impl<E> Schedule<'_, E> {
    /// After a failed attempt: the pause before the next one, or the error to end
    /// the call with.
    pub(super) fn after_failure(
        &mut self,
        error: ResilienceError<E>,
    ) -> Result<Duration, ResilienceError<E>> {
        self.attempts = self.attempts.saturating_add(1);
        if !self.retry.is_retryable(&error) {
            return Err(error);
        }
        let pause = self.delays.next().filter(|pause| {
            self.retry
                .max_elapsed
                .is_none_or(|max| self.started.elapsed().saturating_add(*pause) <= max)
        });
        match pause {
            Some(pause) => {
                tracing::debug!(attempt = self.attempts, ?pause, "retrying after a failure");
                Ok(pause)
            }
            None => Err(ResilienceError::Exhausted {
                attempts: self.attempts,
                last: Box::new(error),
            }),
        }
    }
}
