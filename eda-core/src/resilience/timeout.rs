use std::future::Future;
use std::time::Duration;

use super::ResilienceError;

/// A time limit for one call, on tokio's timer.
///
/// A call that has not finished after the duration is dropped (it stops at its
/// next `.await`) and returns [`ResilienceError::TimedOut`]. Inside a
/// [`Resilience`](super::Resilience) the limit applies to each attempt, not to all
/// of them together ([`Retry::max_elapsed`](super::Retry::max_elapsed) bounds
/// those).
///
/// There is no default: a time-out only makes sense for a known dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    after: Duration,
}

impl Timeout {
    /// A limit of `after` per call.
    pub fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The limit.
    pub fn duration(&self) -> Duration {
        self.after
    }

    /// Runs `op` with the limit.
    ///
    /// # Errors
    ///
    /// [`ResilienceError::Inner`] with the operation's error, or
    /// [`ResilienceError::TimedOut`].
    pub async fn call<T, E, F, Fut>(&self, op: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(async { op().await.map_err(ResilienceError::Inner) })
            .await
    }

    /// The limit around a call whose errors are already [`ResilienceError`]s.
    pub(super) async fn run<T, E>(
        &self,
        call: impl Future<Output = Result<T, ResilienceError<E>>>,
    ) -> Result<T, ResilienceError<E>> {
        match tokio::time::timeout(self.after, call).await {
            Ok(result) => result,
            Err(_) => Err(ResilienceError::TimedOut { after: self.after }),
        }
    }
}
