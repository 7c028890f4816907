//! The relay: the event store as the outbox of its service's public events.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Bus, BusError, Message};
use crate::app::App;
use crate::failpoint;
use crate::policy::lease::{self, Lease};
use crate::projection::runner::{self, Control, Failure, Sink, Started, StoredCheckpoint};
use crate::projection::{RunnerStatus, WaitError};
use crate::resilience::Resilience;
use crate::store::LogPage;

/// The relay's name, by default: its checkpoint is kept in the event store
/// under it.
const NAME: &str = "eda.relay";

impl App {
    /// A relay of this `App`'s public events (`#[event(public)]`) to `bus`,
    /// fed from its store's log after the relay's checkpoint (kept in the
    /// store): call [`start`](RelayBuilder::start) on it.
    ///
    /// Each public event is published with its id as the message's id, at its
    /// subject ([`Message::of`](super::Message::of)), in log order; the
    /// checkpoint moves once the page's messages are all acknowledged. A crash
    /// between publishing and checkpointing publishes the page again after the
    /// restart, and the bus drops the duplicates: nothing committed is left
    /// unpublished, nothing is published twice where the bus de-duplicates. A
    /// bus that is unavailable is tried again with a backoff (10 ms doubling to
    /// 5 s), for as long as it takes. One relay runs at a time across
    /// processes (a lease in the store, like a policy's).
    pub fn relay<B: Bus>(&self, bus: B) -> RelayBuilder<B> {
        RelayBuilder {
            app: self.clone(),
            bus,
            lease: lease::DEFAULT,
            policy: Resilience::new(),
        }
    }
}

/// A relay about to be started: [`App::relay`].
#[must_use = "a relay does nothing until it is started"]
pub struct RelayBuilder<B> {
    app: App,
    bus: B,
    lease: Duration,
    policy: Resilience<BusError>,
}

impl<B: fmt::Debug> fmt::Debug for RelayBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("bus", &self.bus)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<B: Bus> RelayBuilder<B> {
    /// How long the relay's lease lasts without being renewed (5 s by
    /// default): one relay publishes at a time, and another takes over this
    /// long after its process dies.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// The [resilience](crate::resilience) policies each publication goes
    /// through: none by default (the bus's own time-out, then the runner's
    /// pause, 10 ms doubling to 5 s, before it tries again). A circuit breaker
    /// makes the relay stop calling a bus that keeps failing for its break; a
    /// retry retries a publication before the runner pauses.
    pub fn policy(mut self, policy: Resilience<BusError>) -> Self {
        self.policy = policy;
        self
    }

    /// Starts the relay on a task of its own and returns its handle.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(self) -> RelayHandle {
        let sink = RelaySink {
            app: self.app.clone(),
            bus: self.bus,
            policy: self.policy,
            stored: StoredCheckpoint::new(NAME),
            lease: Lease::new(NAME, self.lease),
        };
        RelayHandle {
            control: runner::spawn(self.app, sink),
        }
    }
}

/// A started relay: its progress, and waiting until it has published.
#[derive(Clone)]
pub struct RelayHandle {
    control: Arc<Control>,
}

impl fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandle")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// The relay's progress: its checkpoint, the head of the log, its lag.
    pub fn status(&self) -> RunnerStatus {
        self.control.status()
    }

    /// Waits until the relay has published the log up to `position`, at most
    /// `timeout`.
    pub async fn wait_for(
        &self,
        position: Option<u64>,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        self.control.wait_for(position, timeout).await
    }

    /// Stops the relay after the page it is publishing, and waits until it has.
    pub async fn stop(&self) {
        self.control.stop().await;
    }
}

struct RelaySink<B> {
    app: App,
    bus: B,
    policy: Resilience<BusError>,
    /// Its checkpoint, in the event store.
    stored: StoredCheckpoint,
    lease: Lease,
}

impl<B: Bus> RelaySink<B> {
    async fn checkpoint(&mut self, to: u64) -> Result<(), Failure> {
        self.stored.move_to(self.app.store(), to).await
    }
}

impl<B: Bus> Sink for RelaySink<B> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn events(&self) -> &'static [&'static str] {
        crate::registry::registry().public_events()
    }

    async fn start(&mut self) -> Result<Started, Failure> {
        self.lease.acquire(self.app.store()).await?;
        self.stored.read(self.app.store()).await
    }

    /// Publishes each event, in order, then moves the checkpoint past the page.
    /// If the bus fails, the checkpoint moves past what it took, and the rest
    /// is tried again.
    async fn apply(&mut self, page: LogPage, _last_attempt: bool) -> Result<(), Failure> {
        self.lease.renew(self.app.store()).await?;
        for (done, event) in page.events.iter().enumerate() {
            let message = Message::of(event.clone());
            let published = self.policy.call(|| self.bus.publish(&message)).await;
            if let Err(error) = published {
                let mut failure = Failure::retry(
                    format!(
                        "publishing event `{}` at position {}: {error}",
                        event.name, event.position
                    ),
                    None,
                );
                let reached = event.position - 1;
                if done > 0 && self.checkpoint(reached).await.is_ok() {
                    failure.reached = Some(reached);
                    failure.applied = done as u64;
                }
                return Err(failure);
            }
        }
        if !page.events.is_empty() {
            failpoint::hit("relay.before_checkpoint");
        }
        self.checkpoint(page.read_to).await
    }

    fn renew_every(&self) -> Option<Duration> {
        Some(self.lease.renew_every())
    }

    async fn release(&mut self) {
        self.lease.release(self.app.store()).await;
    }
}
