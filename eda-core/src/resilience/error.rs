use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a call through a resilience policy did not return a value.
///
/// The operation's own error stays typed in [`Inner`](Self::Inner) (and inside
/// [`Exhausted`](Self::Exhausted) when retries ran out): match on it, or take it
/// with [`inner`](Self::inner) / [`into_inner`](Self::into_inner). The other
/// variants say which policy refused or stopped the call.
///
/// It implements [`std::error::Error`] when `E` does; `Inner` is transparent (its
/// message and source are `E`'s), and `Exhausted` has the last error as `source`.
///
/// `Display` and `Error` are written by hand, not derived with thiserror: the
/// derive would bound them on the boxed last error of `Exhausted`, a bound that
/// refers to itself and that no type satisfies.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResilienceError<E> {
    /// The operation ran and returned this error (not retried: no retry policy,
    /// or the retry policy's predicate said it is not worth retrying).
    Inner(E),
    /// The attempt took longer than its [`Timeout`](super::Timeout) and was
    /// dropped (cancelled at its next `.await`).
    TimedOut {
        /// The configured time-out.
        after: Duration,
    },
    /// The [`CircuitBreaker`](super::CircuitBreaker) is open (or half-open with its
    /// one probe in flight): the operation was not called.
    Open {
        /// The breaker's name.
        name: Arc<str>,
        /// How long until the breaker lets a probe through; zero when a probe is
        /// already running (its outcome decides).
        retry_in: Duration,
    },
    /// The [`Bulkhead`](super::Bulkhead) had no free slot (at once, or within its
    /// maximum wait): the operation was not called.
    Full {
        /// The bulkhead's name.
        name: Arc<str>,
        /// Its concurrency limit.
        max_concurrent: usize,
    },
    /// The [`Retry`](super::Retry) policy gave up: every attempt failed with a
    /// retryable error and the attempts or the time allowed ran out.
    Exhausted {
        /// How many times the operation was attempted.
        attempts: u32,
        /// The last attempt's error: [`Inner`](Self::Inner) or
        /// [`TimedOut`](Self::TimedOut).
        last: Box<ResilienceError<E>>,
    },
}

impl<E> ResilienceError<E> {
    /// The operation's own error, if it was the last thing that went wrong (also
    /// inside [`Exhausted`](Self::Exhausted)).
    pub fn inner(&self) -> Option<&E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Exhausted { last, .. } => last.inner(),
            _ => None,
        }
    }

    /// The operation's own error, by value (see [`inner`](Self::inner)).
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Exhausted { last, .. } => last.into_inner(),
            _ => None,
        }
    }

    /// Whether the operation was refused without being called (an open breaker or
    /// a full bulkhead): it had no effect, so it is safe to try again later even
    /// when it is not idempotent.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Open { .. } | Self::Full { .. })
    }
}

impl<E: fmt::Display> fmt::Display for ResilienceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inner(e) => e.fmt(f),
            Self::TimedOut { after } => write!(f, "call timed out after {after:?}"),
            Self::Open { name, retry_in } => {
                write!(
                    f,
                    "circuit breaker `{name}` is open: next probe in {retry_in:?}"
                )
            }
            Self::Full {
                name,
                max_concurrent,
            } => write!(
                f,
                "bulkhead `{name}` is full: {max_concurrent} calls in progress"
            ),
            Self::Exhausted { attempts, .. } => write!(f, "gave up after {attempts} attempts"),
        }
    }
}

impl<E: StdError + 'static> StdError for ResilienceError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Inner(e) => e.source(),
            Self::Exhausted { last, .. } => Some(&**last),
            Self::TimedOut { .. } | Self::Open { .. } | Self::Full { .. } => None,
        }
    }
}
