//! Event notification with queries between services: the customers service
//! publishes `CustomerRelocated` without the address (a notification), and
//! the shipping service asks for the address (`customers.address`) through a
//! timeout and a circuit breaker. While the customers service does not
//! answer, the breaker opens and the consumer stops calling, holding the
//! relocations back (`keep_trying`); once it answers again, the consumer
//! catches up with every relocation. Run on `LocalBus` and, with
//! `EDA_TEST_NATS_URL`, on NATS request-reply.

#![allow(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda::bus::{self, BusError, Queries, Query, Subscription};
use eda::prelude::*;
use eda::resilience::{BreakerState, CircuitBreaker, Resilience, ResilienceError};
use eda::rusqlite::{self, Transaction};
use eda::serde::{Deserialize, Serialize};
use eda::{Bus, LocalBus, RecordedEvent};

const WAIT: Duration = Duration::from_secs(30);

/// State transfer: the registration carries the address.
#[event(public)]
#[derive(Debug, Clone)]
pub struct CustomerRegistered {
    pub address: String,
}

/// Notification: the customer moved; where to is the customers service's.
#[event(public)]
#[derive(Debug, Clone)]
pub struct CustomerRelocated {}

#[command]
#[derive(Debug, Clone)]
pub struct Register {
    #[aggregate_id]
    pub id: String,
    pub address: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct Relocate {
    #[aggregate_id]
    pub id: String,
}

#[derive(Debug, Default)]
pub struct Customer;

#[aggregate(error = std::convert::Infallible)]
impl Customer {
    #[handle]
    fn register(&self, c: Register) -> Result<CustomerRegistered, std::convert::Infallible> {
        Ok(CustomerRegistered { address: c.address })
    }

    #[handle]
    fn relocate(&self, _: Relocate) -> Result<CustomerRelocated, std::convert::Infallible> {
        Ok(CustomerRelocated {})
    }

    #[apply]
    fn registered(&mut self, _: &CustomerRegistered) {}

    #[apply]
    fn relocated(&mut self, _: &CustomerRelocated) {}
}

/// The customers service's query: a customer's current address.
#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "eda::serde")]
pub struct Address {
    pub customer: String,
}

impl Query for Address {
    const NAME: &'static str = "customers.address";
    type Answer = Option<String>;
}

type Ask = dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send>>
    + Send
    + Sync;

/// The shipping service's read model: each customer's address.
pub struct Shipping {
    ask: Arc<Ask>,
}

impl std::fmt::Debug for Shipping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipping").finish_non_exhaustive()
    }
}

#[projection(name = "shipping")]
impl Shipping {
    #[on]
    fn registered(
        &mut self,
        e: &CustomerRegistered,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO addresses (customer, address, moves) VALUES (?1, ?2, 0)",
            (&recorded.aggregate_id, &e.address),
        )?;
        Ok(())
    }

    /// Asks for the new address: the method runs on a blocking thread, where
    /// it may wait for the query on the runtime.
    #[on]
    fn relocated(
        &mut self,
        _: &CustomerRelocated,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let asked = (self.ask)(recorded.aggregate_id.clone());
        let address = tokio::runtime::Handle::current().block_on(asked)?;
        let address = address.ok_or("the customers service does not know the customer")?;
        tx.execute(
            "UPDATE addresses SET address = ?2, moves = moves + 1 WHERE customer = ?1",
            (&recorded.aggregate_id, &address),
        )?;
        Ok(())
    }
}

fn addresses(path: &Path) -> HashMap<String, (String, i64)> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut statement = connection
        .prepare("SELECT customer, address, moves FROM addresses")
        .unwrap();
    let rows = statement
        .query_map((), |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// The customers service's side: its current addresses, answered on `bus`
/// until the returned handle is dropped.
async fn answering<B: Queries>(
    bus: &B,
    current: &Arc<Mutex<HashMap<String, String>>>,
) -> bus::Answering {
    let current = Arc::clone(current);
    bus::answer(bus, move |query: Address| {
        let address = current.lock().unwrap().get(&query.customer).cloned();
        async move { Ok::<_, String>(address) }
    })
    .await
    .unwrap()
}

async fn producer_down_then_back<B, S>(bus: B, subscription: S)
where
    B: Bus + Queries + Clone,
    S: Subscription,
{
    let store = MemoryStore::new();
    let app = App::new(store);
    let relay = app.relay(bus.clone()).start();
    let current: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let answers = answering(&bus, &current).await;

    // The shipping service: the query through a timeout and a breaker that
    // opens after 3 failures, for 300 ms; the calls that pass the breaker
    // are counted.
    let breaker = CircuitBreaker::new("customers")
        .failure_threshold(3)
        .break_duration(Duration::from_millis(300));
    let policy = Arc::new(
        Resilience::<BusError>::new()
            .circuit_breaker(breaker.clone())
            .timeout(Duration::from_millis(500)),
    );
    let calls = Arc::new(AtomicU32::new(0));
    let (asker, counted) = (bus.clone(), Arc::clone(&calls));
    let ask: Arc<Ask> = Arc::new(move |customer| {
        let (asker, counted, policy) = (asker.clone(), Arc::clone(&counted), Arc::clone(&policy));
        Box::pin(async move {
            let answered = policy
                .call(|| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (asker, customer) = (asker.clone(), customer.clone());
                    async move { bus::ask(&asker, &Address { customer }).await }
                })
                .await;
            answered.map_err(|error: ResilienceError<BusError>| error.to_string())
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shipping.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE addresses (customer TEXT PRIMARY KEY, address TEXT, moves INTEGER)",
        )
        .unwrap();
    let shipping = bus::consume("shipping", Shipping { ask }, subscription)
        .keep_trying()
        .database(&path)
        .start()
        .await
        .unwrap();

    let mut moves = 0;
    let relocate = async |customer: &str, moves: &mut u64| {
        *moves += 1;
        let address = format!("{customer}, street {moves}");
        current.lock().unwrap().insert(customer.to_owned(), address);
        app.execute(Relocate {
            id: customer.into(),
        })
        .await
        .unwrap();
    };
    for customer in ["c-1", "c-2", "c-3"] {
        let address = format!("{customer}, first street");
        current
            .lock()
            .unwrap()
            .insert(customer.into(), address.clone());
        app.execute(Register {
            id: customer.into(),
            address,
        })
        .await
        .unwrap();
    }
    relocate("c-1", &mut moves).await;
    shipping
        .wait_until(WAIT, |s| s.applied == 4)
        .await
        .expect("applied while the producer answers");

    // The customers service stops answering.
    drop(answers);
    for i in 0..10 {
        relocate(["c-1", "c-2", "c-3"][i % 3], &mut moves).await;
    }
    let mut opened = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        opened |= breaker.state() == BreakerState::Open;
    }
    assert!(opened, "the breaker opened");
    let status = shipping.status();
    assert_eq!(
        status.applied, 4,
        "nothing applied while the producer is down"
    );
    assert_eq!(status.parked, 0, "held back, not parked");
    assert!(status.retrying.is_some(), "{status:?}");
    // 1.5 s down, the breaker open for 300 ms after 3 failures: about 3 calls
    // and a probe per break, not a call per retry.
    let while_down = calls.load(Ordering::SeqCst) - 1;
    let tries = shipping.status();
    assert!(
        while_down <= 3 + 1500 / 300 + 2,
        "{while_down} calls passed the breaker while it was open ({tries:?})"
    );

    // Back: the consumer catches up, every relocation applied.
    let answers = answering(&bus, &current).await;
    shipping
        .wait_until(WAIT, |s| s.applied == 3 + moves)
        .await
        .unwrap_or_else(|| panic!("caught up: {:?}", shipping.status()));
    let shipped = addresses(&path);
    let current = current.lock().unwrap().clone();
    for (customer, address) in &current {
        assert_eq!(&shipped[customer].0, address, "{customer}");
    }
    let moved: i64 = shipped.values().map(|(_, moves)| moves).sum();
    assert_eq!(moved as u64, moves, "every relocation applied once");
    assert_eq!(breaker.state(), BreakerState::Closed);
    drop(answers);
    shipping.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_local_bus_the_breaker_opens_while_the_producer_is_down_and_the_consumer_catches_up()
{
    let bus = LocalBus::new();
    let subscription = bus.subscribe("shipping", ["Customer.>"]);
    producer_down_then_back(bus, subscription).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_the_breaker_opens_while_the_producer_is_down_and_the_consumer_catches_up() {
    let Some(url) = eda_test::nats::url() else {
        return;
    };
    let service = format!("customers{}q", std::process::id());
    let bus = eda::bus::NatsBus::connect(&url, &service).await.unwrap();
    let subscription = bus
        .subscribe("shipping", &service, "Customer.>")
        .await
        .unwrap();
    producer_down_then_back(bus, subscription).await;
    eda_test::nats::delete_stream(&url, &service).await;
}
