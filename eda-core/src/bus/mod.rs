//! Between services: the events a service publishes, and the bus that carries
//! them.
//!
//! An event marked `#[event(public)]` leaves its service; the others never
//! do. The event store is the outbox: a [relay](crate::App::relay) tails the
//! global log after a checkpoint of its own and publishes each public event to
//! a [`Bus`], with the event's id as the message's id, then moves its
//! checkpoint. A crash between the two publishes the page again after the
//! restart: the bus drops a message whose id it has seen. Nothing committed is
//! left unpublished, and each aggregate's events are published in their order.
//!
//! [`LocalBus`] is the in-process bus (the embedded default: nothing to run);
//! `NatsBus` (feature `nats`) is NATS JetStream. A consumer in another service
//! ([`consume`]) applies the messages of a [`Subscription`] to a read model of
//! its own, with an inbox that drops the messages delivered again; it may ask
//! the producer about its current state ([`ask`], [`answer`]).

use std::fmt;
use std::future::Future;

use crate::envelope::RecordedEvent;

mod consumer;
mod local;
#[cfg(feature = "nats")]
mod nats;
mod query;
mod relay;

#[cfg(feature = "postgres")]
pub use consumer::PostgresConsumerBuilder;
#[cfg(feature = "sqlite")]
pub use consumer::SqliteConsumerBuilder;
pub use consumer::{consume, ConsumerBuilder, ConsumerHandle, ConsumerStatus};
pub use local::{Delivery, LocalBus, LocalSubscription};
#[cfg(feature = "nats")]
pub use nats::{NatsBus, NatsDelivery, NatsSubscription};
pub use query::{
    answer, ask, ask_within, AnswerFuture, Answering, Handler, Queries, Query, ASK_TIMEOUT,
};
pub use relay::{RelayBuilder, RelayHandle};

/// A published event: the stored event as its service recorded it (payload,
/// envelope, metadata with correlation and causation ids), and the subject it
/// was published at.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Where it was published: `#[event(public, subject = "...")]`, or
    /// `{aggregate type}.{event name}`.
    pub subject: String,
    /// The event. Its `event_id` is the message's id, by which the bus drops
    /// duplicates; its `position` is in the producer's log.
    pub event: RecordedEvent,
}

impl Message {
    /// The message of `event`, at its registered subject.
    pub fn of(event: RecordedEvent) -> Message {
        Message {
            subject: subject_of(&event),
            event,
        }
    }
}

/// The subject of a public event: its registered one, or `{aggregate
/// type}.{event name}`.
pub fn subject_of(event: &RecordedEvent) -> String {
    let registered = crate::registry::registry().latest(&event.name);
    match registered.and_then(|registration| registration.subject) {
        Some(subject) => subject.to_owned(),
        None => format!("{}.{}", event.aggregate_type, event.name),
    }
}

/// Whether `subject` matches `pattern`, NATS-style: tokens separated by `.`,
/// `*` matching one token, a last `>` matching one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(found)) if token == found => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Why the bus did not take or deliver a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus could not be reached, or did not answer in time: trying again
    /// later may succeed.
    #[error("the bus is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The bus refused the message or the subscription.
    #[error("the bus refused {what}: {reason}")]
    Refused {
        /// What it refused.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// A durable consumer's subscription: its messages, one after another, until
/// each is acknowledged.
pub trait Subscription: Send + 'static {
    /// A delivered message.
    type Delivery: Acknowledge;

    /// The next message; an error if the bus failed (try again later).
    fn next(&mut self) -> impl Future<Output = Result<Self::Delivery, BusError>> + Send;
}

/// A delivered message, to acknowledge once it is handled (or it is delivered
/// again).
pub trait Acknowledge: Send + 'static {
    /// The message.
    fn message(&self) -> &Message;

    /// Acknowledges it: the consumer moves past it.
    fn ack(self) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// Carries messages between services: [`LocalBus`] in one process, `NatsBus`
/// (feature `nats`) over NATS JetStream.
///
/// `publish` returns once the bus has stored the message (its
/// acknowledgement), and drops (successfully) a message whose id it has seen.
pub trait Bus: fmt::Debug + Send + Sync + 'static {
    /// Publishes `message`, waiting for the bus to store it.
    fn publish(&self, message: &Message) -> impl Future<Output = Result<(), BusError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subjects_match_as_nats_matches_them() {
        let cases = [
            ("customers.registered", "customers.registered", true),
            ("customers.registered", "customers.relocated", false),
            ("customers.*", "customers.registered", true),
            ("customers.*", "customers.registered.eu", false),
            ("customers.>", "customers.registered.eu", true),
            ("customers.>", "customers", false),
            (">", "anything.at.all", true),
            ("*.registered", "customers.registered", true),
            ("customers", "customers.registered", false),
        ];
        for (pattern, subject, matches) in cases {
            assert_eq!(
                subject_matches(pattern, subject),
                matches,
                "{pattern} / {subject}"
            );
        }
    }
}
