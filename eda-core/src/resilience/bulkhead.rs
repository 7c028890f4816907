use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::ResilienceError;

/// A limit on the calls in progress to one dependency, so that a slow one ties up
/// at most that many tasks (a tokio [`Semaphore`]).
///
/// A call that finds every slot taken is rejected with [`ResilienceError::Full`]
/// at once, or, with [`max_wait`](Self::max_wait), waits its turn (first come,
/// first served) up to that long. The operation of a rejected call is not called.
///
/// Defaults: [`DEFAULT_MAX_CONCURRENT`](Self::DEFAULT_MAX_CONCURRENT) (16) calls,
/// no waiting.
///
/// Cheap to clone; clones share the slots (configure it first, then clone it into
/// the tasks that call the dependency: [`max_concurrent`](Self::max_concurrent)
/// makes a new set of slots).
#[derive(Debug, Clone)]
pub struct Bulkhead {
    name: Arc<str>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    max_wait: Duration,
}

impl Bulkhead {
    /// Calls in progress that [`new`](Self::new) allows.
    pub const DEFAULT_MAX_CONCURRENT: usize = 16;

    /// A bulkhead named `name` (in its errors) with the defaults.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            slots: Arc::new(Semaphore::new(Self::DEFAULT_MAX_CONCURRENT)),
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
            max_wait: Duration::ZERO,
        }
    }

    /// Allows `max` calls in progress (at least 1, at most
    /// [`Semaphore::MAX_PERMITS`]); a new set of slots, not shared with earlier
    /// clones.
    pub fn max_concurrent(mut self, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        self.max_concurrent = max;
        self.slots = Arc::new(Semaphore::new(max));
        self
    }

    /// Lets a call wait up to `wait` for a free slot before it is rejected (zero,
    /// the default: rejected at once).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The name given to [`new`](Self::new).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    /// Runs `op` in a slot.
    ///
    /// # Errors
    ///
    /// [`ResilienceError::Inner`] with the operation's error, or
    /// [`ResilienceError::Full`] (the operation was not called).
    pub async fn call<T, E, F, Fut>(&self, op: F) -> Result<T, ResilienceError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _slot = self.enter().await?;
        op().await.map_err(ResilienceError::Inner)
    }

    /// A slot, held until the returned permit is dropped.
    pub(super) async fn enter<E>(&self) -> Result<SemaphorePermit<'_>, ResilienceError<E>> {
        let slot = if self.max_wait.is_zero() {
            self.slots.try_acquire().ok()
        } else {
            // The semaphore is never closed, so `acquire` fails only by the timer.
            tokio::time::timeout(self.max_wait, self.slots.acquire())
                .await
                .ok()
                .and_then(Result::ok)
        };
        slot.ok_or_else(|| ResilienceError::Full {
            name: self.name.clone(),
            max_concurrent: self.max_concurrent,
        })
    }
}
