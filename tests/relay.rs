//! The outbox relay (`App::relay`) and the in-process bus (`LocalBus`): only
//! public events leave, in log order, with their envelope, at their subject;
//! a restarted relay goes on from its checkpoint; a bus that fails now and then
//! still ends with every public event exactly once, in order; durable
//! consumers of the bus get their messages in order and again until they
//! acknowledge them.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eda::bus::{BusError, Message};
use eda::prelude::*;
use eda::{Bus, LocalBus, RecordedEvent};

const WAIT: Duration = Duration::from_secs(60);

/// State transfer: the event carries what readers keep.
#[event(public)]
#[derive(Debug, Clone)]
pub struct CustomerRegistered {
    pub name: String,
    pub email: String,
}

/// Notification: the customer moved (readers ask where to).
#[event(public, subject = "customers.relocated")]
#[derive(Debug, Clone)]
pub struct CustomerRelocated {}

/// Private: never leaves the service.
#[event]
#[derive(Debug, Clone)]
pub struct NoteAdded {
    pub text: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct Register {
    #[aggregate_id]
    pub id: String,
    pub name: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct Relocate {
    #[aggregate_id]
    pub id: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct AddNote {
    #[aggregate_id]
    pub id: String,
}

#[derive(Debug, Default)]
pub struct Customer;

#[aggregate(error = std::convert::Infallible)]
impl Customer {
    #[handle]
    fn register(&self, c: Register) -> Result<CustomerRegistered, std::convert::Infallible> {
        Ok(CustomerRegistered {
            email: format!("{}@example.com", c.name),
            name: c.name,
        })
    }

    #[handle]
    fn relocate(&self, _: Relocate) -> Result<CustomerRelocated, std::convert::Infallible> {
        Ok(CustomerRelocated {})
    }

    #[handle]
    fn note(&self, _: AddNote) -> Result<NoteAdded, std::convert::Infallible> {
        Ok(NoteAdded {
            text: "called".into(),
        })
    }

    #[apply]
    fn registered(&mut self, _: &CustomerRegistered) {}

    #[apply]
    fn relocated(&mut self, _: &CustomerRelocated) {}

    #[apply]
    fn noted(&mut self, _: &NoteAdded) {}
}

async fn register(app: &App, id: &str) -> u64 {
    let register = Register {
        id: id.into(),
        name: id.into(),
    };
    app.execute(register).await.unwrap().position.unwrap()
}

/// The public events of `store`'s log, in order.
async fn public_events(store: &MemoryStore) -> Vec<RecordedEvent> {
    let log = store.read_all(0, 10_000).await.unwrap();
    log.into_iter().filter(|e| e.name != "NoteAdded").collect()
}

#[test]
fn the_registry_knows_which_events_are_public() {
    // (Other public events of linked test helpers may be listed too.)
    let public = eda::registry().public_events();
    assert!(public.contains(&"CustomerRegistered"), "{public:?}");
    assert!(public.contains(&"CustomerRelocated"), "{public:?}");
    assert!(!public.contains(&"NoteAdded"), "private: {public:?}");
}

#[tokio::test]
async fn only_public_events_leave_in_log_order_with_their_envelope_and_subject() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let bus = LocalBus::new();
    let relay = app.relay(bus.clone()).start();

    register(&app, "c-1").await;
    let correlation = eda::new_event_id();
    app.execute(AddNote { id: "c-1".into() })
        .correlation_id(correlation)
        .await
        .unwrap();
    app.execute(Relocate { id: "c-1".into() })
        .correlation_id(correlation)
        .await
        .unwrap();
    let last = register(&app, "c-2").await;
    relay.wait_for(Some(last), WAIT).await.unwrap();

    let messages = bus.messages();
    let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "Customer.CustomerRegistered",
            "customers.relocated",
            "Customer.CustomerRegistered"
        ]
    );
    let published: Vec<RecordedEvent> = messages.into_iter().map(|m| m.event).collect();
    assert_eq!(
        published,
        public_events(&store).await,
        "the stored events, as stored"
    );
    assert_eq!(published[1].metadata.correlation_id, Some(correlation));
    relay.stop().await;
}

#[tokio::test]
async fn a_restarted_relay_goes_on_from_its_checkpoint() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let bus = LocalBus::new();
    let relay = app.relay(bus.clone()).start();
    let first = register(&app, "c-1").await;
    relay.wait_for(Some(first), WAIT).await.unwrap();
    relay.stop().await;

    register(&app, "c-2").await;
    let last = register(&app, "c-3").await;
    // A bus that counts what it is asked to publish: the new relay starts
    // after its checkpoint, so it never sees c-1's registration again.
    let counting = Counting::new(bus.clone(), u32::MAX);
    let relay = app.relay(counting.clone()).start();
    relay.wait_for(Some(last), WAIT).await.unwrap();
    assert_eq!(counting.asked.load(Ordering::SeqCst), 2);
    let published: Vec<RecordedEvent> = bus.messages().into_iter().map(|m| m.event).collect();
    assert_eq!(published, public_events(&store).await);
    relay.stop().await;
}

/// A bus in front of a `LocalBus` that is unavailable for every `fail_every`th
/// publication it is asked for.
#[derive(Debug, Clone)]
struct Counting {
    bus: LocalBus,
    fail_every: u32,
    asked: Arc<AtomicU32>,
}

impl Counting {
    fn new(bus: LocalBus, fail_every: u32) -> Self {
        Counting {
            bus,
            fail_every,
            asked: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl Bus for Counting {
    async fn publish(&self, message: &Message) -> Result<(), BusError> {
        let asked = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        if asked.is_multiple_of(self.fail_every) {
            return Err(BusError::Unavailable("the bus is down".into()));
        }
        self.bus.publish(message).await
    }
}

#[tokio::test]
async fn a_bus_that_fails_now_and_then_still_gets_every_public_event_once_in_order() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let bus = LocalBus::new();
    let flaky = Counting::new(bus.clone(), 3);
    let relay = app.relay(flaky.clone()).start();
    let mut last = 0;
    for i in 0..40 {
        last = register(&app, &format!("c-{i}")).await;
        if i % 4 == 0 {
            app.execute(Relocate {
                id: format!("c-{i}"),
            })
            .await
            .unwrap();
        }
        app.execute(AddNote {
            id: format!("c-{i}"),
        })
        .await
        .unwrap();
    }
    relay.wait_for(Some(last), WAIT).await.unwrap();
    let published: Vec<RecordedEvent> = bus.messages().into_iter().map(|m| m.event).collect();
    assert_eq!(published, public_events(&store).await);
    assert!(
        flaky.asked.load(Ordering::SeqCst) > published.len() as u32,
        "the bus failed, and the relay tried again"
    );
    relay.stop().await;
}

fn message(id: &str, subject: &str) -> Message {
    Message {
        subject: subject.into(),
        event: RecordedEvent {
            event_id: eda::new_event_id(),
            aggregate_type: "Customer".into(),
            aggregate_id: id.into(),
            version: 1,
            position: 1,
            name: "CustomerRegistered".into(),
            event_version: 1,
            payload: "{}".into(),
            metadata: Default::default(),
            recorded_at: Default::default(),
        },
    }
}

#[tokio::test]
async fn the_local_bus_drops_a_message_whose_id_it_has_seen() {
    let bus = LocalBus::new();
    let one = message("c-1", "customers.registered");
    bus.publish(&one).await.unwrap();
    bus.publish(&message("c-2", "customers.registered"))
        .await
        .unwrap();
    bus.publish(&one).await.unwrap();
    let messages = bus.messages();
    let ids: Vec<&str> = messages
        .iter()
        .map(|m| m.event.aggregate_id.as_str())
        .collect();
    assert_eq!(ids, ["c-1", "c-2"]);
}

#[tokio::test]
async fn a_durable_consumer_gets_its_subjects_in_order_and_again_until_it_acknowledges() {
    let bus = LocalBus::new();
    for (id, subject) in [
        ("c-1", "customers.registered"),
        ("c-1", "orders.placed"),
        ("c-2", "customers.registered"),
        ("c-1", "customers.relocated"),
    ] {
        bus.publish(&message(id, subject)).await.unwrap();
    }
    let mut mailing = bus.subscribe("mailing", ["customers.*"]);
    let first = mailing.next().await;
    assert_eq!(first.message().event.aggregate_id, "c-1");
    first.ack();
    let second = mailing.next().await;
    assert_eq!(
        (
            second.message().subject.as_str(),
            second.message().event.aggregate_id.as_str()
        ),
        ("customers.registered", "c-2")
    );
    // Not acknowledged: the consumer's next subscription gets it again.
    drop(second);
    drop(mailing);
    let mut mailing = bus.subscribe("mailing", ["customers.*"]);
    let again = mailing.next().await;
    assert_eq!(again.message().event.aggregate_id, "c-2");
    again.ack();
    let last = mailing.next().await;
    assert_eq!(last.message().subject, "customers.relocated");
    last.ack();
    // Nothing more: the next message waits for a publication.
    let waiting = tokio::time::timeout(Duration::from_millis(50), mailing.next()).await;
    assert!(waiting.is_err(), "no message is left");
    // Another consumer starts at the first message.
    let mut shipping = bus.subscribe("shipping", [">"]);
    assert_eq!(
        shipping.next().await.message().subject,
        "customers.registered"
    );
}

#[tokio::test]
async fn a_message_not_acknowledged_in_the_ack_wait_is_delivered_again() {
    let bus = LocalBus::new();
    bus.publish(&message("c-1", "customers.registered"))
        .await
        .unwrap();
    let mut mailing = bus
        .subscribe("mailing", ["customers.>"])
        .ack_wait(Duration::from_millis(100));
    let first = mailing.next().await;
    let id = first.message().event.event_id;
    let again = mailing.next().await;
    assert_eq!(again.message().event.event_id, id);
    // Either acknowledgement moves the consumer past it, once.
    first.ack();
    again.ack();
    bus.publish(&message("c-2", "customers.registered"))
        .await
        .unwrap();
    assert_eq!(mailing.next().await.message().event.aggregate_id, "c-2");
}

#[tokio::test]
async fn a_relay_behind_a_circuit_breaker_stops_calling_a_bus_that_keeps_failing() {
    use eda::resilience::{BreakerState, CircuitBreaker, Resilience};
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    register(&app, "c-1").await;
    let down = |bus: &LocalBus| Counting::new(bus.clone(), 1);
    let bus = LocalBus::new();
    let breaker = CircuitBreaker::new("bus")
        .failure_threshold(3)
        .break_duration(Duration::from_secs(60));
    let policy = Resilience::new().circuit_breaker(breaker.clone());
    let failing = down(&bus);
    let relay = app.relay(failing.clone()).policy(policy).start();
    // Without a breaker, the relay calls at every retry (the control).
    let unguarded = down(&bus);
    let control = App::new(MemoryStore::new());
    register(&control, "c-2").await;
    let control_relay = control.relay(unguarded.clone()).start();
    eda_test::read_models::until("the breaker open and the control calling again", || {
        breaker.state() == BreakerState::Open && unguarded.asked.load(Ordering::SeqCst) > 3
    })
    .await;
    // The relay behind the breaker retries meanwhile, as often as the control.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(
        failing.asked.load(Ordering::SeqCst),
        3,
        "no call while open"
    );
    assert!(
        unguarded.asked.load(Ordering::SeqCst) > 3,
        "the control keeps calling"
    );
    relay.stop().await;
    control_relay.stop().await;
}
