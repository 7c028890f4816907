//! How a caller waits for the writer or a reader thread: the only request in
//! flight polls for its reply for a while, instead of sleeping until it is woken.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::closed;
use crate::error::StoreError;

/// What a waiting caller needs to decide whether to poll for its reply instead of
/// sleeping until it is woken.
pub(super) struct Pace {
    /// Appends and reads sent and not yet answered.
    pub(super) in_flight: AtomicUsize,
    /// How long the writer's last transaction took, in microseconds.
    pub(super) last_write_micros: AtomicU64,
    /// [`SqliteOptions::poll_for_reply`](super::SqliteOptions::poll_for_reply).
    poll_window: Duration,
    /// Until when callers sleep instead of polling (microseconds since `epoch`),
    /// after a poller found itself descheduled: the CPU is busy.
    no_polling_until: AtomicU64,
    epoch: std::time::Instant,
}

/// A poller that finds this long between two of its polls lost its CPU to another
/// thread (or its runtime is busy): polling would only slow the writer down.
const DESCHEDULED: Duration = Duration::from_micros(500);

/// How long callers then sleep instead of polling.
const BACK_OFF: Duration = Duration::from_millis(50);

impl Pace {
    /// Nothing in flight yet; the only request in flight polls for up to `poll_window`.
    pub(super) fn new(poll_window: Duration) -> Self {
        Pace {
            in_flight: AtomicUsize::new(0),
            last_write_micros: AtomicU64::new(0),
            poll_window,
            no_polling_until: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    fn micros(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}

/// Counts an append as in flight until it is dropped (answered or cancelled).
pub(super) struct InFlight<'a>(&'a Pace);

impl<'a> InFlight<'a> {
    pub(super) fn enter(pace: &'a Pace) -> Self {
        pace.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(pace)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The reply of a writer or reader thread. The only request in flight polls for
/// it for up to
/// [`SqliteOptions::poll_for_reply`](super::SqliteOptions::poll_for_reply),
/// yielding to other threads and tasks between polls, unless it is `expected` to
/// take longer than that; then, or with several requests in flight (group
/// commit), or while the CPU is busy, it sleeps until woken.
pub(super) async fn reply_of<T>(
    mut rx: oneshot::Receiver<Result<T, StoreError>>,
    pace: &Pace,
    expected: Duration,
) -> Result<T, StoreError> {
    let window = pace.poll_window;
    let start = std::time::Instant::now();
    if pace.in_flight.load(Ordering::Relaxed) == 1
        && !window.is_zero()
        && expected <= window
        && pace.micros(start) >= pace.no_polling_until.load(Ordering::Relaxed)
    {
        let mut last = start;
        loop {
            match rx.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(closed()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            // Let a thread waiting for this CPU (the writer, perhaps) have it.
            std::thread::yield_now();
            YieldNow(false).await;
            let now = std::time::Instant::now();
            if now.duration_since(last) > DESCHEDULED {
                let until = pace.micros(now + BACK_OFF);
                pace.no_polling_until.store(until, Ordering::Relaxed);
                break;
            }
            if now.duration_since(start) > window {
                break;
            }
            last = now;
        }
    }
    rx.await.map_err(|_| closed())?
}

/// Lets the executor run other tasks once, on any runtime.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
