//! Instances of a consuming service sharing the work of one producer's NATS
//! stream (`NatsBus::subscribe_partitioned`) into one PostgreSQL read model:
//! every message is applied once, each aggregate's in their order, both
//! instances apply some, and a message one instance parks holds back its
//! aggregate's later ones whichever instance gets them. The controls
//! (`EDA_BROKEN`): scattering an aggregate's messages over the partitions
//! loses their order; consumers that do not see the parks apply messages
//! behind them.
//!
//! Needs `EDA_TEST_POSTGRES_URL` and `EDA_TEST_NATS_URL`.

#![allow(missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eda::bus::{self, ConsumerHandle, NatsBus, NatsSubscription};
use eda::prelude::*;
use eda::{Bus, PostgresBatch, RecordedEvent};
use eda_test::messages::registered;
use eda_test::postgres::TestDb;

const CUSTOMERS: usize = 40;
const VERSIONS: u64 = 25;
const MESSAGES: u64 = CUSTOMERS as u64 * VERSIONS;

#[event(name = "CustomerRegistered", copy)]
#[derive(Debug)]
pub struct Registered {
    pub name: String,
}

/// Records each application with the instance that made it; the first
/// message of customer `poison` fails in the database.
#[derive(Debug)]
pub struct Recorder {
    instance: i32,
}

#[projection(name = "recorder")]
impl Recorder {
    #[on]
    async fn registered(
        &mut self,
        _: &Registered,
        recorded: &RecordedEvent,
        tx: &PostgresBatch<'_>,
    ) -> Result<(), eda::tokio_postgres::Error> {
        let poison = recorded.aggregate_id == "poison" && recorded.version == 1;
        let event_id = (!poison).then_some(recorded.event_id);
        tx.queue(
            "INSERT INTO applications (event_id, customer, version, instance)
             VALUES ($1, $2, $3, $4)",
            (
                event_id,
                recorded.aggregate_id.clone(),
                recorded.version as i64,
                self.instance,
            ),
        );
        Ok(())
    }
}

/// A producer name no other run uses on the shared server.
fn producer() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let next = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("shared{}x{next}", std::process::id())
}

async fn instance(
    db: &TestDb,
    schema: &str,
    instance: i32,
    subscription: NatsSubscription,
) -> ConsumerHandle<Recorder> {
    bus::consume("mailing", Recorder { instance }, subscription)
        .postgres(&db.url)
        .schema(schema)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_partitions_and_keep_each_aggregates_order() {
    let Some(url) = eda_test::nats::url() else {
        return;
    };
    let Some(db) = TestDb::new().await else {
        return;
    };
    let producer = producer();
    let schema = db.other_schema("mailing");
    let client = db.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE {schema}.applications (seq bigserial, event_id uuid NOT NULL,
                 customer text NOT NULL, version bigint NOT NULL, instance int NOT NULL);"
        ))
        .await
        .unwrap();
    let bus = NatsBus::connect(&url, &producer).await.unwrap();
    let mut instances = Vec::new();
    for number in 0..2 {
        let subscription = bus
            .subscribe_partitioned("mailing", &producer, "Customer.>")
            .await
            .unwrap();
        instances.push(instance(&db, &schema, number, subscription).await);
    }

    // As a relay publishes: the customers' messages interleaved, each
    // customer's in order.
    let customers: Vec<String> = (1..CUSTOMERS)
        .map(|i| format!("c-{i}"))
        .chain(["poison".to_owned()])
        .collect();
    let mut poison = Vec::new();
    let mut position = 0;
    for version in 1..=VERSIONS {
        for customer in &customers {
            let mut message = registered(customer, "n", 1);
            position += 1;
            (message.event.version, message.event.position) = (version, position);
            if customer == "poison" {
                poison.push(position);
            }
            bus.publish(&message).await.unwrap();
        }
    }

    let handled = || -> u64 { instances.iter().map(|i| i.status().handled()).sum() };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while handled() < MESSAGES {
        assert!(
            std::time::Instant::now() < deadline,
            "handled {} of {MESSAGES}",
            handled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let query = format!(
        "SELECT event_id, customer, version, instance FROM {schema}.applications ORDER BY seq"
    );
    let rows = client.query(&query, &[]).await.unwrap();
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut ids = HashSet::new();
    let mut by_instance = [0; 2];
    for row in &rows {
        let id: eda::Uuid = row.get(0);
        assert!(ids.insert(id), "{id} applied twice");
        versions.entry(row.get(1)).or_default().push(row.get(2));
        by_instance[row.get::<_, i32>(3) as usize] += 1;
    }
    println!("applied by each instance: {by_instance:?}");
    assert_eq!(rows.len() as u64, MESSAGES - VERSIONS, "all but poison's");
    let in_order: Vec<i64> = (1..=VERSIONS as i64).collect();
    for (customer, applied) in &versions {
        assert_eq!(
            applied, &in_order,
            "customer {customer}'s messages in order"
        );
    }
    assert!(
        by_instance.iter().all(|&n| n > 0),
        "both instances did some of the work: {by_instance:?}"
    );
    // Poison's first message was parked by one instance; its later ones were
    // parked behind it by whichever instance got them.
    let parked = instances[0].parked().await.unwrap();
    let parked: Vec<u64> = parked.iter().map(|p| p.position).collect();
    assert_eq!(parked, poison, "poison's messages, parked in order");

    for instance in instances {
        instance.stop().await;
    }
    eda_test::nats::delete_stream(&url, &producer).await;
    db.drop_schema().await;
}

/// The control of the test above: with an aggregate's messages scattered over
/// the partitions (by event id), instances and partitions apply them out of
/// order, and the test must fail.
#[test]
fn control_messages_scattered_over_partitions_lose_their_order() {
    let missing = ["EDA_TEST_POSTGRES_URL", "EDA_TEST_NATS_URL"]
        .iter()
        .any(|name| std::env::var_os(name).is_none());
    if !cfg!(feature = "failpoints") || missing {
        eprintln!("skipped: the control needs the `failpoints` feature, EDA_TEST_POSTGRES_URL and EDA_TEST_NATS_URL");
        return;
    }
    assert!(eda_test::crash::fails_when_broken(
        "instances_share_the_partitions_and_keep_each_aggregates_order",
        "bus.partition_by_event",
    ));
}

/// The control of the parks the instances share: a consumer that does not see
/// the parked messages of an aggregate applies its later ones, and the test
/// must fail.
#[test]
fn control_parks_unseen_let_later_messages_through() {
    let missing = ["EDA_TEST_POSTGRES_URL", "EDA_TEST_NATS_URL"]
        .iter()
        .any(|name| std::env::var_os(name).is_none());
    if !cfg!(feature = "failpoints") || missing {
        eprintln!("skipped: the control needs the `failpoints` feature, EDA_TEST_POSTGRES_URL and EDA_TEST_NATS_URL");
        return;
    }
    assert!(eda_test::crash::fails_when_broken(
        "instances_share_the_partitions_and_keep_each_aggregates_order",
        "consumer.parks_unseen",
    ));
}
