//! Resilience policies around any async call: retry, time-out, circuit breaker,
//! bulkhead, and [`Resilience`], which composes them.
//!
//! Each policy works alone (`policy.call(|| async { ... }).await`) and returns the
//! operation's value, or a [`ResilienceError`] that keeps the operation's own
//! error typed in [`ResilienceError::Inner`].
//!
//! | policy | what it does | defaults |
//! | --- | --- | --- |
//! | [`Retry`] | calls again after a retryable error, pausing with exponential back-off and jitter | 100 ms first pause, ×2, at most 10 s, 5 attempts in all, full jitter, every error retried |
//! | [`Timeout`] | drops a call that takes too long ([`ResilienceError::TimedOut`]) | none: give the duration |
//! | [`CircuitBreaker`] | after consecutive failures, rejects calls without making them ([`ResilienceError::Open`]), then lets one probe through | opens after 5 failures, for 30 s; every error is a failure |
//! | [`Bulkhead`] | limits the calls in progress ([`ResilienceError::Full`]) | 16 at once, no waiting |
//!
//! All of them use tokio's timer, so tests on a paused clock
//! (`#[tokio::test(start_paused = true)]`) see every pause and time-out happen
//! at once and exactly.
//!
//! # Composition
//!
//! [`Resilience`] wraps one call in the policies it is given, always in this
//! order, from the outside in:
//!
//! 1. **bulkhead**: a call takes a slot before anything else and keeps it through
//!    its retries and their pauses, so the slots bound all the work in progress
//!    against the dependency, retries included; when it is full the call is
//!    rejected before any attempt (a full bulkhead is never retried: the limit is
//!    ours, and trying again would only spin);
//! 2. **retry**: each attempt goes through the breaker, so the failures of the
//!    attempts count towards opening it; once it is open the retry stops at once
//!    and returns [`ResilienceError::Open`] (with the time until the next probe)
//!    instead of calling again or sleeping through the break;
//! 3. **circuit breaker**: outside the time-out, so that an attempt that timed
//!    out counts as a failure;
//! 4. **time-out**, innermost: per attempt, so that each retry has the whole
//!    duration ([`Retry::max_elapsed`] bounds the call as a whole).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use eda::resilience::{Bulkhead, CircuitBreaker, Resilience, ResilienceError, Retry};
//!
//! #[derive(Debug)]
//! enum PaymentError {
//!     Unavailable,
//!     Declined,
//! }
//!
//! async fn charge(amount: u64) -> Result<String, PaymentError> {
//!     if amount > 100 {
//!         return Err(PaymentError::Declined);
//!     }
//!     Ok(format!("receipt for {amount}"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let unavailable = |e: &PaymentError| matches!(e, PaymentError::Unavailable);
//! let payments = Resilience::new()
//!     .bulkhead(Bulkhead::new("payments").max_concurrent(8))
//!     .retry(Retry::new().max_attempts(3).retry_if(unavailable))
//!     .circuit_breaker(CircuitBreaker::new("payments").failure_if(unavailable))
//!     .timeout(Duration::from_secs(2));
//!
//! let receipt = payments.call(|| charge(42)).await.unwrap();
//! assert_eq!(receipt, "receipt for 42");
//!
//! match payments.call(|| charge(1_000)).await {
//!     Err(ResilienceError::Inner(PaymentError::Declined)) => {} // not retried
//!     Err(ResilienceError::Open { retry_in, .. }) => println!("try again in {retry_in:?}"),
//!     other => panic!("unexpected: {other:?}"),
//! }
//! # }
//! ```
//!
//! # Crates
//!
//! The retry schedule is `backon`'s exponential one. The breaker is eda's own:
//! `failsafe`'s lets every call through while half-open, not one probe, and reads
//! `std`'s clock, which a paused tokio clock does not move.
//! `tower` has retry, time-out and concurrency-limit layers but no breaker, and its
//! `Service` shape (a request type, `poll_ready`, cloneable requests to retry)
//! fits a server's stack rather than one call to a closure; eda uses no tower
//! elsewhere, so these policies take closures.

use std::fmt;
use std::future::Future;
use std::time::Duration;

mod breaker;
mod bulkhead;
mod error;
mod retry;
mod timeout;

pub use breaker::{BreakerState, CircuitBreaker};
pub use bulkhead::Bulkhead;
pub use error::ResilienceError;
pub use retry::{Jitter, Retry};
pub use timeout::Timeout;

/// Policies composed around one call: bulkhead, then retry, then circuit breaker,
/// then time-out per attempt (the [module docs](self) say why in this order).
///
/// Each policy is optional; [`new`](Self::new) has none, and its calls go straight
/// through. Cheap to clone (the breaker and the bulkhead share their state with
/// their clones), so one `Resilience` per dependency can be handed to every task
/// that calls it.
pub struct Resilience<E> {
    bulkhead: Option<Bulkhead>,
    retry: Option<Retry<E>>,
    breaker: Option<CircuitBreaker<E>>,
    timeout: Option<Timeout>,
}

impl<E> Resilience<E> {
    /// No policy yet.
    pub fn new() -> Self {
        Self {
            bulkhead: None,
            retry: None,
            breaker: None,
            timeout: None,
        }
    }

    /// Limits the calls in progress (outermost: a call holds its slot through
    /// its retries).
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Retries failed attempts (inside the bulkhead, outside the breaker).
    pub fn retry(mut self, retry: Retry<E>) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Puts each attempt through `breaker` (inside the retry, outside the
    /// time-out).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker<E>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Gives each attempt at most `after` (innermost).
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(Timeout::new(after));
        self
    }

    /// Runs `op` through the policies; `op` is called once per attempt, and not
    /// at all when the bulkhead or the breaker rejects the call.
    ///
    /// # Errors
    ///
    /// [`ResilienceError::Inner`] with an error not retried,
    /// [`ResilienceError::Exhausted`] when the retries ran out,
    /// [`ResilienceError::TimedOut`] for an attempt that timed out without a retry
    /// policy, [`ResilienceError::Open`] and [`ResilienceError::Full`] for a
    /// rejected call.
    pub async fn call<T, F, Fut>(&self, mut op: F) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _slot = match &self.bulkhead {
            Some(bulkhead) => Some(bulkhead.enter().await?),
            None => None,
        };
        let Some(retry) = &self.retry else {
            return self.attempt(&mut op).await;
        };
        let mut schedule = retry.start();
        loop {
            match self.attempt(&mut op).await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let pause = schedule.after_failure(error)?;
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// One attempt: the breaker around the time-out around `op`.
    async fn attempt<T, F, Fut>(&self, op: &mut F) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let timed = || async move {
            let call = async { op().await.map_err(ResilienceError::Inner) };
            match &self.timeout {
                Some(timeout) => timeout.run(call).await,
                None => call.await,
            }
        };
        match &self.breaker {
            Some(breaker) => breaker.run(timed).await,
            None => timed().await,
        }
    }
}

impl<E> Default for Resilience<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> Clone for Resilience<E> {
    fn clone(&self) -> Self {
        Self {
            bulkhead: self.bulkhead.clone(),
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            timeout: self.timeout,
        }
    }
}

impl<E> fmt::Debug for Resilience<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilience")
            .field("bulkhead", &self.bulkhead)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .field("timeout", &self.timeout)
            .finish()
    }
}
