//! [`LocalBus`]: the bus of services in one process.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use super::query::{Answering, Handler, Queries};
use super::{subject_matches, Acknowledge, Bus, BusError, Message, Subscription};
use crate::projection::lock;

/// How long a delivered message may stay unacknowledged before it is
/// delivered again, by default.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The in-process bus, the embedded default (nothing to run): it keeps every
/// message published to it, in order, drops a message whose id it has seen,
/// and delivers to durable consumers by name, one message at a time in
/// publication order, until each is acknowledged.
///
/// A consumer's position lives as long as the bus: a subscription under the
/// same name, after the one before was dropped, goes on from the first
/// message it did not acknowledge (delivering again the one it had not
/// acknowledged). Clones share one bus.
///
/// ```
/// use eda::bus::{LocalBus, Message};
/// # use eda::Bus;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let bus = LocalBus::new();
/// let mut mailing = bus.subscribe("mailing", ["Customer.>"]);
/// # let event = eda::RecordedEvent { event_id: eda::new_event_id(), aggregate_type: "Customer".into(),
/// #     aggregate_id: "c-1".into(), version: 1, position: 1, name: "CustomerRegistered".into(),
/// #     event_version: 1, payload: "{}".into(), metadata: Default::default(), recorded_at: Default::default() };
/// bus.publish(&Message::of(event)).await?;
/// let delivery = mailing.next().await;
/// assert_eq!(delivery.message().subject, "Customer.CustomerRegistered");
/// delivery.ack();
/// # Ok::<(), eda::bus::BusError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken on every publication and acknowledgement.
    changed: Notify,
    /// The queries answered, by name: the answerer's number, its handler.
    answering: Mutex<HashMap<String, (u64, Handler)>>,
    answerers: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    log: Vec<Message>,
    ids: HashSet<Uuid>,
    consumers: HashMap<String, Consumer>,
}

/// A durable consumer's position.
struct Consumer {
    patterns: Vec<String>,
    /// The index in the log of the first message it has not acknowledged.
    next: usize,
    /// The message delivered and not acknowledged yet: its index, and when.
    in_flight: Option<(usize, Instant)>,
    /// Which subscription holds the consumer (a newer one takes it over).
    holder: u64,
}

impl fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("LocalBus")
            .field("messages", &state.log.len())
            .field("consumers", &state.consumers.len())
            .finish()
    }
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Every message published so far, in order (duplicates dropped).
    pub fn messages(&self) -> Vec<Message> {
        self.state().log.clone()
    }

    /// Subscribes the durable consumer `name` to the subjects matching
    /// `patterns` (NATS-style: `*` one token, a last `>` the rest). The first
    /// subscription under a name starts at the bus's first message; a later
    /// one takes the consumer over from the one before (which then receives
    /// nothing more) and goes on where it stopped, delivering again the
    /// message it had not acknowledged.
    pub fn subscribe<S: Into<String>>(
        &self,
        name: &str,
        patterns: impl IntoIterator<Item = S>,
    ) -> LocalSubscription {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        let mut state = self.state();
        let consumer = state
            .consumers
            .entry(name.to_owned())
            .or_insert_with(|| Consumer {
                patterns: Vec::new(),
                next: 0,
                in_flight: None,
                holder: 0,
            });
        consumer.patterns = patterns;
        consumer.in_flight = None;
        consumer.holder += 1;
        let holder = consumer.holder;
        drop(state);
        self.inner.changed.notify_waiters();
        LocalSubscription {
            bus: self.clone(),
            name: name.to_owned(),
            holder,
            ack_wait: ACK_WAIT,
        }
    }
}

impl Bus for LocalBus {
    async fn publish(&self, message: &Message) -> Result<(), BusError> {
        let mut state = self.state();
        if state.ids.insert(message.event.event_id) {
            state.log.push(message.clone());
            drop(state);
            self.inner.changed.notify_waiters();
        }
        Ok(())
    }
}

/// A durable consumer's subscription to a [`LocalBus`]: [`next`](Self::next)
/// delivers its messages one at a time, in publication order.
pub struct LocalSubscription {
    bus: LocalBus,
    name: String,
    holder: u64,
    ack_wait: Duration,
}

impl fmt::Debug for LocalSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSubscription")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LocalSubscription {
    /// How long a delivered message may stay unacknowledged before it is
    /// delivered again (30 s by default).
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// The next message for this consumer, once there is one: the first it has
    /// not acknowledged, if that is not in flight (or has been for longer than
    /// the ack wait). Waits forever while another subscription holds the
    /// consumer.
    pub async fn next(&mut self) -> Delivery {
        loop {
            let changed = self.bus.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait =
                {
                    let mut state = self.bus.state();
                    let State { log, consumers, .. } = &mut *state;
                    // Consumers are never removed once subscribed.
                    let consumer = consumers
                        .get_mut(&self.name)
                        .expect("a subscribed consumer");
                    if consumer.holder != self.holder {
                        None
                    } else {
                        match consumer.in_flight {
                            Some((_, at)) if at.elapsed() < self.ack_wait => {
                                Some(self.ack_wait - at.elapsed())
                            }
                            _ => {
                                let found = log.iter().enumerate().skip(consumer.next).find(
                                    |(_, message)| {
                                        consumer.patterns.iter().any(|pattern| {
                                            subject_matches(pattern, &message.subject)
                                        })
                                    },
                                );
                                if let Some((index, message)) = found {
                                    consumer.in_flight = Some((index, Instant::now()));
                                    return Delivery {
                                        bus: self.bus.clone(),
                                        name: self.name.clone(),
                                        holder: self.holder,
                                        index,
                                        message: message.clone(),
                                    };
                                }
                                None
                            }
                        }
                    }
                };
            match wait {
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, changed).await;
                }
                None => changed.await,
            }
        }
    }
}

/// A message delivered to a consumer: [`ack`](Self::ack) it once it is
/// handled, or it is delivered again.
pub struct Delivery {
    bus: LocalBus,
    name: String,
    holder: u64,
    index: usize,
    message: Message,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("consumer", &self.name)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Acknowledges the message: the consumer moves past it. Ignored if
    /// another subscription took the consumer over meanwhile (it delivers the
    /// message again).
    pub fn ack(self) {
        let mut state = self.bus.state();
        let Some(consumer) = state.consumers.get_mut(&self.name) else {
            return;
        };
        if consumer.holder == self.holder
            && consumer
                .in_flight
                .is_some_and(|(index, _)| index == self.index)
        {
            consumer.next = self.index + 1;
            consumer.in_flight = None;
        }
        drop(state);
        self.bus.inner.changed.notify_waiters();
    }
}

impl Subscription for LocalSubscription {
    type Delivery = Delivery;

    async fn next(&mut self) -> Result<Delivery, BusError> {
        Ok(LocalSubscription::next(self).await)
    }
}

impl Acknowledge for Delivery {
    fn message(&self) -> &Message {
        Delivery::message(self)
    }

    async fn ack(self) -> Result<(), BusError> {
        Delivery::ack(self);
        Ok(())
    }
}

/// Queries answered in the process: by the handler registered last under the
/// query's name.
impl Queries for LocalBus {
    async fn request(
        &self,
        name: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, BusError> {
        let handler = {
            let answering = lock(&self.inner.answering);
            answering.get(name).map(|(_, handler)| Arc::clone(handler))
        };
        let handler = handler
            .ok_or_else(|| BusError::Unavailable(format!("nobody answers `{name}`").into()))?;
        tokio::time::timeout(timeout, handler(request))
            .await
            .map_err(|_| {
                BusError::Unavailable(format!("`{name}` was not answered in {timeout:?}").into())
            })
    }

    async fn serve(&self, name: &str, handler: Handler) -> Result<Answering, BusError> {
        let number = self
            .inner
            .answerers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut answering = lock(&self.inner.answering);
        answering.insert(name.to_owned(), (number, handler));
        let (inner, name) = (Arc::clone(&self.inner), name.to_owned());
        Ok(Answering::new(move || {
            let mut answering = lock(&inner.answering);
            if answering.get(&name).is_some_and(|(n, _)| *n == number) {
                answering.remove(&name);
            }
        }))
    }
}
