//! A store's signal that its log grew: what wakes runners for commits their own
//! `App` did not make (another `App` on the same store, another store opened on
//! the same database, another process), so that runners following the log live
//! need not poll for them often.
//!
//! The signal carries a position the log is known to hold, committed. A read of
//! the log that stops short of it (on PostgreSQL, where an older transaction
//! still running holds the horizon back) is worth repeating soon.
//!
//! Stores whose writers are all in this process signal their commits
//! themselves. The others start a listener (a thread or a task that hears of
//! other connections' commits) on first use, which runs while someone listens
//! and the store is open: see [`LogSignal::subscribe_with`].

use std::sync::Arc;

use tokio::sync::watch;

/// Moves the position `head` gives its receivers up to `position` (never back),
/// waking them if it moved: one atomic load when nobody listens. Both the
/// commits an `App` makes and those a store signals go through it.
pub(crate) fn advance(head: &watch::Sender<u64>, position: u64) {
    if head.receiver_count() > 0 {
        head.send_if_modified(|head| {
            let later = position > *head;
            *head = (*head).max(position);
            later
        });
    }
}

/// The positions known committed, for runners, and the listener that hears of
/// other writers' commits.
pub(crate) struct LogSignal {
    head: watch::Sender<u64>,
    state: watch::Sender<State>,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// A listener runs.
    listening: bool,
    /// The store was closed: no listener starts any more.
    closed: bool,
}

impl Default for LogSignal {
    fn default() -> Self {
        LogSignal {
            head: watch::channel(0).0,
            state: watch::channel(State::default()).0,
        }
    }
}

impl LogSignal {
    /// Tells runners that the log holds events up to `position`, committed.
    /// One atomic load when no runner listens.
    pub(crate) fn committed(&self, position: u64) {
        advance(&self.head, position);
    }

    /// A receiver of the positions, for a store whose commits all go through
    /// [`committed`](Self::committed).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// A receiver of the positions, with a listener running: `start` is given
    /// the place of one when none runs (it then runs the listener on a thread or
    /// task of its own, holding the place). `None` once the store is closed.
    pub(crate) fn subscribe_with(
        self: &Arc<Self>,
        start: impl FnOnce(Listener),
    ) -> Option<watch::Receiver<u64>> {
        // Subscribed before the state is looked at: a listener that finds
        // nobody listening and gives up its place does so under the state's
        // lock, so either it sees this receiver or this call sees it gone.
        let receiver = self.head.subscribe();
        let (mut closed, mut start_one) = (false, false);
        self.state.send_if_modified(|state| {
            closed = state.closed;
            start_one = !state.closed && !state.listening;
            state.listening |= start_one;
            start_one
        });
        if closed {
            return None;
        }
        if start_one {
            start(Listener {
                signal: Arc::clone(self),
                holds_place: true,
            });
        }
        Some(receiver)
    }

    /// Stops the listener (within its period) and starts none again; returns
    /// once none runs.
    pub(crate) async fn close(&self) {
        self.state.send_modify(|state| state.closed = true);
        let mut state = self.state.subscribe();
        let _ = state.wait_for(|state| !state.listening).await;
    }
}

/// The place of the one listener of a [`LogSignal`]: while it is held, no other
/// starts. Given back when the listener finds itself unwanted, or however it
/// ends (a panic, a task dropped with its runtime), so that the next subscriber
/// starts another.
pub(crate) struct Listener {
    signal: Arc<LogSignal>,
    holds_place: bool,
}

impl Listener {
    /// Tells runners that the log holds events up to `position`, committed.
    pub(crate) fn committed(&self, position: u64) {
        self.signal.committed(position);
    }

    /// Whether to go on listening: someone listens and the store is open. If
    /// not, the place is given back.
    pub(crate) fn wanted(&mut self) -> bool {
        if !self.holds_place {
            return false;
        }
        let signal = &self.signal;
        let mut wanted = true;
        signal.state.send_if_modified(|state| {
            wanted = !state.closed && signal.head.receiver_count() > 0;
            state.listening &= wanted;
            !wanted
        });
        self.holds_place = wanted;
        wanted
    }

    /// Returns once nobody listens any more or the store was closed (then
    /// [`wanted`](Self::wanted) says whether that is still so).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) async fn unwanted(&self) {
        let mut state = self.signal.state.subscribe();
        tokio::select! {
            () = self.signal.head.closed() => {}
            _ = state.wait_for(|state| state.closed) => {}
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.holds_place {
            self.signal
                .state
                .send_modify(|state| state.listening = false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_listener_while_someone_listens_and_another_after_it_gave_up() {
        let signal = Arc::new(LogSignal::default());
        let mut started = Vec::new();
        let first = signal.subscribe_with(|l| started.push(l)).unwrap();
        let second = signal.subscribe_with(|l| started.push(l)).unwrap();
        assert_eq!(started.len(), 1);
        let mut listener = started.pop().unwrap();
        assert!(listener.wanted());
        listener.committed(7);
        assert_eq!((*first.borrow(), *second.borrow()), (7, 7));
        drop((first, second));
        assert!(!listener.wanted());
        // Its place was given back: the next subscriber starts another one.
        let third = signal.subscribe_with(|l| started.push(l)).unwrap();
        assert_eq!(started.len(), 1);
        // Dropping the old one does not take the new one's place.
        drop(listener);
        assert!(started[0].wanted());
        drop(third);
    }

    #[tokio::test]
    async fn closing_stops_the_listener_and_refuses_subscribers() {
        let signal = Arc::new(LogSignal::default());
        let mut started = Vec::new();
        let _receiver = signal.subscribe_with(|l| started.push(l)).unwrap();
        let mut listener = started.pop().unwrap();
        let listening = tokio::spawn(async move {
            listener.unwanted().await;
            assert!(!listener.wanted());
        });
        signal.close().await;
        listening.await.unwrap();
        assert!(signal.subscribe_with(|_| unreachable!()).is_none());
    }
}
