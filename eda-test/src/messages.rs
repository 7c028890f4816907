//! Messages of the customers service, built by hand as its relay would
//! publish them, for consumer tests: their binaries hold only the consumer's
//! copies of the events.

use std::collections::VecDeque;

use eda::bus::{Acknowledge, BusError, Message, Subscription};
use eda::{Metadata, RecordedEvent};

/// `name`'s registration, in aggregate `customer`, as schema `version`: its
/// payload has a name, an email and a phone.
pub fn registered(customer: &str, name: &str, version: u32) -> Message {
    let payload = format!(r#"{{"name":"{name}","email":"{name}@example.com","phone":"1"}}"#);
    let event = RecordedEvent {
        event_id: eda::new_event_id(),
        aggregate_type: "Customer".into(),
        aggregate_id: customer.into(),
        version: 1,
        position: 1,
        name: "CustomerRegistered".into(),
        event_version: version,
        payload,
        metadata: Metadata::default(),
        recorded_at: Default::default(),
    };
    Message::of(event)
}

/// A message of an event the consumers have no `#[on]` method for.
pub fn other(customer: &str) -> Message {
    let mut message = registered(customer, "x", 1);
    message.event.name = "CustomerRelocated".into();
    message.event.payload = "{}".into();
    message
}

/// A subscription that delivers each of its messages twice, as a bus does
/// after a consumer crashed before acknowledging.
pub struct Twice {
    messages: VecDeque<Message>,
}

impl Twice {
    /// Each of `messages` twice in a row.
    pub fn new<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Twice {
        let messages = messages
            .into_iter()
            .flat_map(|m| [m.clone(), m.clone()])
            .collect();
        Twice { messages }
    }
}

/// A message [`Twice`] delivered.
pub struct Delivered(Message);

impl Acknowledge for Delivered {
    fn message(&self) -> &Message {
        &self.0
    }

    async fn ack(self) -> Result<(), BusError> {
        Ok(())
    }
}

impl Subscription for Twice {
    type Delivery = Delivered;

    async fn next(&mut self) -> Result<Delivered, BusError> {
        match self.messages.pop_front() {
            Some(message) => Ok(Delivered(message)),
            None => std::future::pending().await,
        }
    }
}
