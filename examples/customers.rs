//! Three services, told as a short story: `cargo run --example customers`.
//!
//! - **customers** (event-sourced, a SQLite store) registers customers and
//!   relocates them. Its relay publishes the public events; it answers the
//!   query `customers.address`.
//! - **mailing** keeps only each customer's name and email: its copy of
//!   `CustomerRegistered` has just those fields (event-carried state transfer).
//! - **shipping** keeps each customer's address. `CustomerRelocated` only says
//!   that a customer moved (event notification): shipping asks customers for
//!   the new address, through a timeout and a circuit breaker.
//!
//! Midway, customers stops answering: shipping's breaker opens, the move is
//! held back, and shipping catches up once customers answers again.
//!
//! In one process on `LocalBus` by default; over NATS JetStream with
//! `EDA_NATS_URL=nats://127.0.0.1:4222` (and `--features nats`), where each
//! service may also run as its own process: `cargo run --features nats
//! --example customers -- mailing` (or `shipping`, then `customers`).

#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda::bus::{self, BusError, Queries, Query, Subscription};
use eda::prelude::*;
use eda::resilience::{CircuitBreaker, Resilience};
use eda::rusqlite::{self, Transaction};
use eda::serde::{Deserialize, Serialize};
use eda::{Bus, LocalBus, RecordedEvent};

// ---- customers: the events it owns and publishes ---------------------------

/// Carries what readers keep (state transfer).
#[event(public)]
#[derive(Debug, Clone)]
pub struct CustomerRegistered {
    pub name: String,
    pub email: String,
    pub address: String,
}

/// Says only that the customer moved (notification): ask where to.
#[event(public)]
#[derive(Debug, Clone)]
pub struct CustomerRelocated {}

#[command]
#[derive(Debug, Clone)]
pub struct RegisterCustomer {
    #[aggregate_id]
    pub id: String,
    pub name: String,
    pub email: String,
    pub address: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct RelocateCustomer {
    #[aggregate_id]
    pub id: String,
    pub address: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    #[error("no such customer")]
    NotRegistered,
    #[error("the customer already lives there")]
    SameAddress,
}

#[derive(Debug, Default)]
pub struct Customer {
    address: Option<String>,
}

#[aggregate(error = CustomerError)]
impl Customer {
    #[handle]
    fn register(&self, c: RegisterCustomer) -> Result<CustomerRegistered, CustomerError> {
        Ok(CustomerRegistered {
            name: c.name,
            email: c.email,
            address: c.address,
        })
    }

    #[handle]
    fn relocate(&self, c: RelocateCustomer) -> Result<CustomerRelocated, CustomerError> {
        match &self.address {
            None => Err(CustomerError::NotRegistered),
            Some(current) if *current == c.address => Err(CustomerError::SameAddress),
            Some(_) => Ok(CustomerRelocated {}),
        }
    }

    #[apply]
    fn registered(&mut self, e: &CustomerRegistered) {
        self.address = Some(e.address.clone());
    }

    #[apply]
    fn relocated(&mut self, _: &CustomerRelocated) {}
}

/// customers' query: a customer's current address.
#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "eda::serde")]
pub struct Address {
    pub customer: String,
}

impl Query for Address {
    const NAME: &'static str = "customers.address";
    type Answer = Option<String>;
}

// ---- mailing: its copy of the event, with only what it keeps ---------------

#[event(name = "CustomerRegistered", copy)]
#[derive(Debug)]
pub struct Registered {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Default)]
pub struct MailingList;

#[projection(name = "mailing_list")]
impl MailingList {
    #[on]
    fn registered(
        &mut self,
        e: &Registered,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO recipients (customer, name, email) VALUES (?1, ?2, ?3)",
            (&recorded.aggregate_id, &e.name, &e.email),
        )?;
        println!("  mailing:   {} <{}> joins the list", e.name, e.email);
        Ok(())
    }
}

// ---- shipping: addresses, asked for on every move ---------------------------

#[event(name = "CustomerRegistered", copy)]
#[derive(Debug)]
pub struct RegisteredAt {
    pub address: String,
}

#[event(name = "CustomerRelocated", copy)]
#[derive(Debug)]
pub struct Moved {}

/// Asks customers for an address, through the resilience policies.
type AskAddress = Arc<dyn Fn(String) -> Result<Option<String>, String> + Send + Sync>;

pub struct Shipping {
    ask: AskAddress,
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
        e: &RegisteredAt,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO addresses (customer, address) VALUES (?1, ?2)",
            (&recorded.aggregate_id, &e.address),
        )?;
        println!(
            "  shipping:  {} lives at {}",
            recorded.aggregate_id, e.address
        );
        Ok(())
    }

    #[on]
    fn moved(
        &mut self,
        _: &Moved,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let customer = &recorded.aggregate_id;
        let address = match (self.ask)(customer.clone()) {
            Ok(address) => address.ok_or("customers does not know the customer")?,
            Err(error) => {
                println!("  shipping:  {customer} moved, but asking customers failed: {error}");
                return Err(error.into());
            }
        };
        tx.execute(
            "UPDATE addresses SET address = ?2 WHERE customer = ?1",
            (customer, &address),
        )?;
        println!("  shipping:  {customer} moved: asked customers, now at {address}");
        Ok(())
    }
}

// ---- the story --------------------------------------------------------------

type Error = Box<dyn std::error::Error>;

/// The customers service's state as its query answers it.
type Addresses = Arc<Mutex<HashMap<String, String>>>;

async fn answer_addresses<B: Queries>(
    bus: &B,
    addresses: &Addresses,
) -> Result<bus::Answering, BusError> {
    let addresses = Arc::clone(addresses);
    bus::answer(bus, move |query: Address| {
        let address = addresses.lock().unwrap().get(&query.customer).cloned();
        async move { Ok::<_, String>(address) }
    })
    .await
}

/// The shipping service's way of asking: a 500 ms timeout, and a breaker that
/// opens after 3 failures for 1 s. The `#[on]` method runs on a blocking
/// thread: it waits for the answer on the runtime.
fn ask_address<B: Queries + Clone>(bus: &B) -> AskAddress {
    let policy = Arc::new(
        Resilience::<BusError>::new()
            .circuit_breaker(
                CircuitBreaker::new("customers")
                    .failure_threshold(3)
                    .break_duration(Duration::from_secs(1)),
            )
            .timeout(Duration::from_millis(500)),
    );
    let bus = bus.clone();
    Arc::new(move |customer: String| {
        let asked = policy.call(|| {
            let (bus, customer) = (bus.clone(), customer.clone());
            async move { bus::ask(&bus, &Address { customer }).await }
        });
        let answer = tokio::runtime::Handle::current().block_on(asked);
        answer.map_err(|error| error.to_string())
    })
}

fn read_db(dir: &std::path::Path, file: &str, table: &str) -> Result<std::path::PathBuf, Error> {
    let path = dir.join(file);
    rusqlite::Connection::open(&path)?.execute_batch(table)?;
    Ok(path)
}

async fn mailing<S: Subscription>(
    dir: &std::path::Path,
    subscription: S,
) -> Result<bus::ConsumerHandle<MailingList>, Error> {
    let path = read_db(
        dir,
        "mailing.db",
        "CREATE TABLE IF NOT EXISTS recipients (customer TEXT PRIMARY KEY, name TEXT, email TEXT)",
    )?;
    Ok(bus::consume("mailing", MailingList, subscription)
        .database(path)
        .start()
        .await?)
}

async fn shipping<B: Queries + Clone, S: Subscription>(
    dir: &std::path::Path,
    bus: &B,
    subscription: S,
) -> Result<bus::ConsumerHandle<Shipping>, Error> {
    let path = read_db(
        dir,
        "shipping.db",
        "CREATE TABLE IF NOT EXISTS addresses (customer TEXT PRIMARY KEY, address TEXT)",
    )?;
    let shipping = Shipping {
        ask: ask_address(bus),
    };
    // A move is held back while customers does not answer, not parked.
    Ok(bus::consume("shipping", shipping, subscription)
        .keep_trying()
        .database(path)
        .start()
        .await?)
}

/// The customers service: registers and relocates, publishes, answers; goes
/// down (stops answering) for a while in the middle, and answers for `linger`
/// at the end.
async fn customers<B: Bus + Queries + Clone>(
    dir: &std::path::Path,
    bus: &B,
    pause: Duration,
    linger: Duration,
) -> Result<(), Error> {
    let app = App::new(SqliteStore::open(dir.join("customers.db")).await?);
    let relay = app.relay(bus.clone()).start();
    let addresses: Addresses = Arc::default();
    let answering = answer_addresses(bus, &addresses).await?;
    for (id, name, address) in [("ada", "Ada", "1 Main St"), ("bob", "Bob", "2 Oak Ave")] {
        addresses.lock().unwrap().insert(id.into(), address.into());
        let email = format!("{id}@example.com");
        println!("customers: {name} registers ({email}, {address})");
        app.execute(RegisterCustomer {
            id: id.into(),
            name: name.into(),
            email,
            address: address.into(),
        })
        .await?;
    }
    tokio::time::sleep(pause).await;
    let relocate = async |id: &str, address: &str| -> Result<(), Error> {
        addresses.lock().unwrap().insert(id.into(), address.into());
        println!("customers: {id} moves to {address}");
        app.execute(RelocateCustomer {
            id: id.into(),
            address: address.into(),
        })
        .await?;
        Ok(())
    };
    relocate("ada", "5 Elm St").await?;
    tokio::time::sleep(pause).await;
    println!("customers: -- stops answering queries (its events are still published) --");
    drop(answering);
    relocate("bob", "9 Pine Rd").await?;
    tokio::time::sleep(pause * 3).await;
    println!("customers: -- answers again --");
    let _answering = answer_addresses(bus, &addresses).await?;
    tokio::time::sleep(linger).await;
    let status = relay.status();
    println!(
        "customers: relay published up to position {}",
        status.checkpoint
    );
    relay.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let role = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let dir = std::env::temp_dir().join(format!("eda-customers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pause = Duration::from_millis(700);
    #[cfg(feature = "nats")]
    if let Ok(url) = std::env::var("EDA_NATS_URL") {
        println!("three services over NATS JetStream at {url} (role: {role})");
        let bus = bus::NatsBus::connect(&url, "customers").await?;
        let run = |seconds| tokio::time::sleep(Duration::from_secs(seconds));
        match role.as_str() {
            // Long enough for shipping's breaker to let a probe through.
            "customers" => customers(&dir, &bus, pause, Duration::from_secs(5)).await?,
            "mailing" => {
                let subscription = bus
                    .subscribe("mailing", "customers", "Customer.CustomerRegistered")
                    .await?;
                let _mailing = mailing(&dir, subscription).await?;
                run(30).await;
            }
            "shipping" => {
                let subscription = bus.subscribe("shipping", "customers", "Customer.>").await?;
                let _shipping = shipping(&dir, &bus, subscription).await?;
                run(30).await;
            }
            _ => {
                let mailing_sub = bus
                    .subscribe("mailing", "customers", "Customer.CustomerRegistered")
                    .await?;
                let shipping_sub = bus.subscribe("shipping", "customers", "Customer.>").await?;
                story(&dir, &bus, mailing_sub, shipping_sub, pause).await?;
            }
        }
        std::fs::remove_dir_all(&dir)?;
        return Ok(());
    }
    println!(
        "three services in one process on LocalBus (EDA_NATS_URL and --features nats: over NATS)"
    );
    let bus = LocalBus::new();
    let (mailing_sub, shipping_sub) = (
        bus.subscribe("mailing", ["Customer.CustomerRegistered"]),
        bus.subscribe("shipping", ["Customer.>"]),
    );
    story(&dir, &bus, mailing_sub, shipping_sub, pause).await?;
    std::fs::remove_dir_all(&dir)?;
    if role != "all" {
        println!("(roles need EDA_NATS_URL and --features nats)");
    }
    Ok(())
}

/// All three services in this process.
async fn story<B, S1, S2>(
    dir: &std::path::Path,
    bus: &B,
    mailing_sub: S1,
    shipping_sub: S2,
    pause: Duration,
) -> Result<(), Error>
where
    B: Bus + Queries + Clone,
    S1: Subscription,
    S2: Subscription,
{
    let mailing = mailing(dir, mailing_sub).await?;
    let shipping = shipping(dir, bus, shipping_sub).await?;
    customers(dir, bus, pause, pause * 2).await?;
    // Two registrations and two moves.
    let caught_up = shipping.wait_until(Duration::from_secs(10), |s| s.applied >= 4);
    if caught_up.await.is_none() {
        println!("shipping has not caught up yet");
    }
    let (mailed, shipped) = (mailing.status(), shipping.status());
    println!(
        "mailing applied {} messages (it subscribes to registrations only); shipping applied {}, parked {}",
        mailed.applied, shipped.applied, shipped.parked
    );
    mailing.stop().await;
    shipping.stop().await;
    Ok(())
}
