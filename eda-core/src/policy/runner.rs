//! A policy's runner: it reacts to the log after the policy's checkpoint (kept
//! in the event store), executes the commands through `App`, parks the events
//! it cannot react to (in the event store), and holds the policy's lease so
//! that one runner executes it at a time.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::lease::{self, Lease};
use super::{reaction_key, CommandFailed, Policy, Reacted, Reactions};
use crate::app::App;
use crate::envelope::RecordedEvent;
use crate::error::{DecodeError, StoreError};
use crate::failpoint;
use crate::projection::runner::{self, Control, Failure, Sink, Started, StoredCheckpoint};
use crate::projection::{ParkedEvent, Parking, Retried, RunnerStatus, WaitError};
use crate::store::{BoxFuture, LogPage};

impl App {
    /// A runner for `policy`, fed from this `App`'s store after the policy's
    /// checkpoint (kept in the store under [`Policy::NAME`]), executing the
    /// commands it returns through this `App`: call
    /// [`start`](PolicyBuilder::start) on it.
    ///
    /// Each command is executed with the idempotency key
    /// `eda.policy/{name}/{event id}/{index}`, the event's id as its causation id
    /// and the event's correlation id (or, without one, its id) as its
    /// correlation id. A command the aggregate rejects is logged (`tracing`,
    /// with the event) and the policy goes on; one that fails otherwise (the
    /// store, conflicts beyond the retries) is tried again, up to 5 times.
    ///
    /// ```
    /// use eda::prelude::*;
    /// use eda::RecordedEvent;
    /// # use std::convert::Infallible;
    /// # #[event] #[derive(Debug)] pub struct Relocated { pub street: String }
    /// # #[event] #[derive(Debug)] pub struct CheckScheduled;
    /// # #[command] #[derive(Debug, Clone)] pub struct Relocate { #[aggregate_id] pub id: String, pub street: String }
    /// # #[command] #[derive(Debug, Clone)] pub struct ScheduleCheck { #[aggregate_id] pub id: String }
    /// # #[derive(Debug, Default)] pub struct Customer;
    /// # #[aggregate(error = Infallible)]
    /// # impl Customer {
    /// #     #[handle] fn relocate(&self, c: Relocate) -> Result<Relocated, Infallible> { Ok(Relocated { street: c.street }) }
    /// #     #[handle] fn schedule(&self, _: ScheduleCheck) -> Result<CheckScheduled, Infallible> { Ok(CheckScheduled) }
    /// #     #[apply] fn relocated(&mut self, _: &Relocated) {}
    /// #     #[apply] fn scheduled(&mut self, _: &CheckScheduled) {}
    /// # }
    /// #[derive(Debug)]
    /// pub struct AddressChecks;
    ///
    /// #[policy]
    /// impl AddressChecks {
    ///     #[on]
    ///     fn relocated(&self, _: &Relocated, recorded: &RecordedEvent) -> Option<ScheduleCheck> {
    ///         Some(ScheduleCheck { id: recorded.aggregate_id.clone() })
    ///     }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let app = App::new(store.clone());
    /// let checks = app.policy(AddressChecks).start();
    /// let moved = app.execute(Relocate { id: "c-1".into(), street: "Main St 1".into() }).await?;
    /// checks.wait_for(moved.position, std::time::Duration::from_secs(5)).await?;
    /// let log = store.read_all(0, 10).await?;
    /// assert_eq!(log[1].name, "CheckScheduled");
    /// assert_eq!(log[1].metadata.causation_id, Some(log[0].event_id));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn policy<P: Policy>(&self, policy: P) -> PolicyBuilder<P> {
        PolicyBuilder {
            app: self.clone(),
            policy,
            park_rejected: false,
            lease: lease::DEFAULT,
        }
    }
}

/// A policy about to be started: [`App::policy`].
#[must_use = "a policy does nothing until it is started"]
pub struct PolicyBuilder<P> {
    app: App,
    policy: P,
    park_rejected: bool,
    lease: Duration,
}

impl<P: fmt::Debug> fmt::Debug for PolicyBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyBuilder")
            .field("policy", &self.policy)
            .field("park_rejected", &self.park_rejected)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<P: Policy> PolicyBuilder<P> {
    /// Parks an event whose command the aggregate rejected (with its
    /// aggregate's later events), instead of logging the rejection and going
    /// on: for policies whose commands must not be lost to a rule, to be
    /// retried after a look (`PolicyHandle::retry_parked`).
    pub fn park_rejected(mut self) -> Self {
        self.park_rejected = true;
        self
    }

    /// How long the runner's lease on the policy lasts without being renewed
    /// (5 s by default; renewed every fifth of it): one runner executes the
    /// policy at a time, across processes, and when its process dies another
    /// takes over after this. A runner that stops gives up its lease at once.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// Starts the runner on a task of its own and returns its handle. Dropping
    /// the handle leaves the runner running; [`PolicyHandle::stop`] stops it.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(self) -> PolicyHandle {
        let shared = Arc::new(Shared {
            app: self.app.clone(),
            policy: self.policy,
            park_rejected: self.park_rejected,
            parked: tokio::sync::Mutex::new(HashMap::new()),
            count: AtomicU64::new(0),
        });
        let sink = PolicySink {
            shared: Arc::clone(&shared),
            stored: StoredCheckpoint::new(P::NAME),
            lease: Lease::new(P::NAME, self.lease),
        };
        let control = runner::spawn(self.app, sink);
        let parking = PolicyParking {
            shared,
            control: Arc::clone(&control),
        };
        PolicyHandle {
            control,
            parking: Arc::new(parking),
        }
    }
}

/// A started policy: its progress, waiting until it has reacted, its parked
/// events.
#[derive(Clone)]
pub struct PolicyHandle {
    control: Arc<Control>,
    parking: Arc<dyn Parking>,
}

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl PolicyHandle {
    /// The runner's progress.
    pub fn status(&self) -> RunnerStatus {
        self.control.status()
    }

    /// Waits until the policy has reacted to the log up to `position` (its
    /// commands executed), at most `timeout`.
    pub async fn wait_for(
        &self,
        position: Option<u64>,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        self.control.wait_for(position, timeout).await
    }

    /// Stops the runner after the page it is reacting to, and waits until it
    /// has.
    pub async fn stop(&self) {
        self.control.stop().await;
    }

    /// The events parked so far (kept in the event store), in log order: an
    /// event the policy cannot decode, one whose command failed every attempt
    /// (or was rejected, with [`PolicyBuilder::park_rejected`]), and the later
    /// events of their aggregates.
    pub async fn parked(&self) -> Result<Vec<ParkedEvent>, StoreError> {
        self.parking.list().await
    }

    /// Reacts to the parked events again, in log order, aggregate by aggregate
    /// (after a fix), with the same idempotency keys: a command that had been
    /// executed before is not executed twice. An aggregate's first event that
    /// fails again stays parked with its new error, and so do its later ones.
    pub async fn retry_parked(&self) -> Result<Retried, StoreError> {
        self.parking.retry().await
    }

    /// Removes the parked event `event_id` without reacting to it; `false` if it
    /// was not parked. Its aggregate's later parked events stay parked.
    pub async fn skip_parked(&self, event_id: Uuid) -> Result<bool, StoreError> {
        self.parking.skip(event_id).await
    }
}

type Stream = (String, String);

fn stream_of(event: &RecordedEvent) -> Stream {
    (event.aggregate_type.clone(), event.aggregate_id.clone())
}

/// What a policy's runner and its handle share.
struct Shared<P> {
    app: App,
    policy: P,
    park_rejected: bool,
    /// The aggregates with parked events, and how many each: held while a page
    /// or a retry of the park runs, so the two never interleave.
    parked: tokio::sync::Mutex<HashMap<Stream, u64>>,
    /// The number of parked events.
    count: AtomicU64,
}

/// How reacting to an event went.
enum Outcome {
    Done,
    /// Park it now: trying again cannot help (it cannot be decoded, or its
    /// command was rejected and the policy parks rejections).
    Park(String),
    /// A command failed; it may succeed later.
    Failed(String),
}

impl<P: Policy> Shared<P> {
    /// Executes what `event` caused, in order.
    async fn react(&self, event: &RecordedEvent) -> Outcome {
        let mut reactions = Reactions::default();
        if let Err(kind) = self.policy.react(event, &mut reactions) {
            return Outcome::Park(DecodeError::at(&event.as_event_ref(), kind).to_string());
        }
        let without_keys = failpoint::broken("policy.without_keys");
        for (index, command) in reactions.into_commands().into_iter().enumerate() {
            let name = command.name();
            let key = (!without_keys).then(|| reaction_key(P::NAME, event.event_id, index));
            match command.execute(&self.app, key, event).await {
                Ok(Reacted::Done) => {}
                Ok(Reacted::Rejected(rejection)) if self.park_rejected => {
                    return Outcome::Park(format!("command `{name}` was rejected: {rejection}"));
                }
                Ok(Reacted::Rejected(rejection)) => tracing::warn!(
                    policy = P::NAME,
                    command = name,
                    event = %event.event_id,
                    position = event.position,
                    rejection,
                    "a policy's command was rejected"
                ),
                Err(CommandFailed(error)) => {
                    let mut message = format!("command `{name}` failed: {error}");
                    let mut source = error.source();
                    while let Some(cause) = source {
                        message = format!("{message}: {cause}");
                        source = cause.source();
                    }
                    return Outcome::Failed(message);
                }
            }
        }
        Outcome::Done
    }

    /// Parks `event` in the event store.
    async fn park(
        &self,
        parked: &mut HashMap<Stream, u64>,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), StoreError> {
        tracing::warn!(policy = P::NAME, position = event.position, %error, "event parked");
        // The stores keep text without NUL.
        let parked_event = ParkedEvent::from_event(event, error.replace('\0', "\u{fffd}"));
        self.app.store().park(P::NAME, &parked_event).await?;
        *parked.entry(stream_of(event)).or_default() += 1;
        self.count.store(parked.values().sum(), Ordering::Relaxed);
        Ok(())
    }

    /// Reads the park back from the store.
    async fn count_parked(
        &self,
        parked: &mut HashMap<Stream, u64>,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let events = self.app.store().parked(P::NAME).await?;
        parked.clear();
        for event in &events {
            let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
            *parked.entry(stream).or_default() += 1;
        }
        self.count.store(events.len() as u64, Ordering::Relaxed);
        Ok(events)
    }
}

/// Executes a policy's commands and keeps its checkpoint in the event store.
struct PolicySink<P> {
    shared: Arc<Shared<P>>,
    /// Its checkpoint, in the event store.
    stored: StoredCheckpoint,
    /// One runner of the policy at a time, across processes.
    lease: Lease,
}

impl<P: Policy> PolicySink<P> {
    async fn checkpoint(&mut self, to: u64) -> Result<(), Failure> {
        self.stored.move_to(self.shared.app.store(), to).await
    }
}

impl<P: Policy> Sink for PolicySink<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn events(&self) -> &'static [&'static str] {
        P::EVENTS
    }

    /// Takes the lease (or stands by while another runner holds it), and goes
    /// on from the checkpoint the last holder left.
    async fn start(&mut self) -> Result<Started, Failure> {
        self.lease.acquire(self.shared.app.store()).await?;
        let shared = &self.shared;
        let mut parked = shared.parked.lock().await;
        let started = self.stored.read(shared.app.store()).await?;
        let counted = shared.count_parked(&mut parked).await;
        counted.map_err(|error| Failure::retry(error, None))?;
        Ok(started)
    }

    /// Reacts to each event, then moves the checkpoint past the page. A crash
    /// in between executes the page's commands again after a restart, with the
    /// same keys: the store answers with the first execution's events. An event
    /// of an aggregate with parked events is parked behind them.
    async fn apply(&mut self, page: LogPage, last_attempt: bool) -> Result<(), Failure> {
        // The control of the idle-lease test renews only with events.
        let idle = page.events.is_empty() && failpoint::broken("runner.no_idle_renewal");
        if !idle {
            self.lease.renew(self.shared.app.store()).await?;
        }
        let shared = Arc::clone(&self.shared);
        let mut parked = shared.parked.lock().await;
        for (done, event) in page.events.iter().enumerate() {
            let error = if parked.contains_key(&stream_of(event)) {
                Some("parked behind an earlier parked event of its aggregate".to_owned())
            } else {
                match shared.react(event).await {
                    Outcome::Done => None,
                    Outcome::Park(error) => Some(error),
                    Outcome::Failed(error) if last_attempt => Some(error),
                    Outcome::Failed(error) => {
                        let error = format!(
                            "event `{}` at position {}: {error}",
                            event.name, event.position
                        );
                        let mut failure = Failure::retry_event(error);
                        // Past the events that were reacted to, so a retry starts here.
                        let reached = event.position - 1;
                        if done > 0 && self.checkpoint(reached).await.is_ok() {
                            failure.reached = Some(reached);
                            failure.applied = done as u64;
                        }
                        return Err(failure);
                    }
                }
            };
            if let Some(error) = error {
                let parked_now = shared.park(&mut parked, event, &error).await;
                parked_now.map_err(|error| Failure::retry(error, None))?;
            }
        }
        if !page.events.is_empty() {
            failpoint::hit("policy.before_checkpoint");
        }
        self.checkpoint(page.read_to).await
    }

    fn parked(&self) -> Option<u64> {
        Some(self.shared.count.load(Ordering::Relaxed))
    }

    fn renew_every(&self) -> Option<Duration> {
        Some(self.lease.renew_every())
    }

    async fn release(&mut self) {
        self.lease.release(self.shared.app.store()).await;
    }
}

/// The dead-letter operations of a policy's handle.
struct PolicyParking<P> {
    shared: Arc<Shared<P>>,
    control: Arc<Control>,
}

impl<P: Policy> PolicyParking<P> {
    async fn retry_parked(&self) -> Result<Retried, StoreError> {
        let shared = &self.shared;
        let mut parked = shared.parked.lock().await;
        let events = shared.count_parked(&mut parked).await?;
        let mut failed: Vec<Stream> = Vec::new();
        let mut applied = 0;
        for parked_event in events {
            let stream = (
                parked_event.aggregate_type.clone(),
                parked_event.aggregate_id.clone(),
            );
            if failed.contains(&stream) {
                continue;
            }
            let event = shared.app.store().read_event(parked_event.event_id).await?;
            let event = event.ok_or_else(|| StoreError::Corrupt {
                position: parked_event.position,
                what: format!(
                    "parked event {} is not in the event store",
                    parked_event.event_id
                ),
            })?;
            match shared.react(&event).await {
                Outcome::Done => {
                    shared.app.store().unpark(P::NAME, event.position).await?;
                    applied += 1;
                }
                Outcome::Park(error) | Outcome::Failed(error) => {
                    shared.park(&mut parked, &event, &error).await?;
                    failed.push(stream);
                }
            }
        }
        let left = shared.count_parked(&mut parked).await?.len() as u64;
        self.control.set_parked(left);
        Ok(Retried {
            applied,
            parked: left,
        })
    }

    async fn skip_parked(&self, event_id: Uuid) -> Result<bool, StoreError> {
        let shared = &self.shared;
        let mut parked = shared.parked.lock().await;
        let events = shared.count_parked(&mut parked).await?;
        let Some(event) = events.iter().find(|e| e.event_id == event_id) else {
            return Ok(false);
        };
        let skipped = shared.app.store().unpark(P::NAME, event.position).await?;
        let left = shared.count_parked(&mut parked).await?.len() as u64;
        self.control.set_parked(left);
        Ok(skipped)
    }
}

impl<P: Policy> Parking for PolicyParking<P> {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ParkedEvent>, StoreError>> {
        Box::pin(self.shared.app.store().parked(P::NAME))
    }

    fn retry(&self) -> BoxFuture<'_, Result<Retried, StoreError>> {
        Box::pin(self.retry_parked())
    }

    fn skip(&self, event_id: Uuid) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.skip_parked(event_id))
    }
}
