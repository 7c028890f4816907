//! A consumer into a PostgreSQL read model (`consume(..).postgres(url)`): its
//! methods queue their statements in the `PostgresBatch`; the inbox shares
//! each message's transaction. A message delivered twice is applied once (the
//! control, without the inbox, applies it twice); a message whose statement
//! fails in the database is retried, then parked with its aggregate's later
//! messages while others flow on, and a retry after the fix drains them.
//! Needs `EDA_TEST_POSTGRES_URL`.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eda::bus::{self, ConsumerHandle, Message, Subscription};
use eda::prelude::*;
use eda::tokio_postgres::Client;
use eda::{Bus, LocalBus, PostgresBatch, RecordedEvent};
use eda_test::messages::{registered, Twice};
use eda_test::postgres::TestDb;

const WAIT: Duration = Duration::from_secs(60);

#[event(name = "CustomerRegistered", copy)]
#[derive(Debug)]
pub struct Registered {
    pub name: String,
}

/// A customer named "poison" fails in the database while `FIXED` is false.
static FIXED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Default)]
pub struct Mailing;

#[projection(name = "mailing")]
impl Mailing {
    #[on]
    async fn registered(
        &mut self,
        e: &Registered,
        recorded: &RecordedEvent,
        tx: &PostgresBatch<'_>,
    ) -> Result<(), eda::tokio_postgres::Error> {
        let poison = e.name == "poison" && !FIXED.load(Ordering::SeqCst);
        let event_id = (!poison).then_some(recorded.event_id);
        tx.queue(
            "INSERT INTO applications (event_id) VALUES ($1)",
            (event_id,),
        );
        Ok(())
    }
}

async fn applications(client: &Client, schema: &str) -> Vec<eda::Uuid> {
    let query = format!("SELECT event_id FROM {schema}.applications ORDER BY seq");
    let rows = client.query(&query, &[]).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

async fn start<S: Subscription>(
    db: &TestDb,
    schema: &str,
    subscription: S,
) -> ConsumerHandle<Mailing> {
    let client = db.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.applications (seq bigserial, event_id uuid NOT NULL);"
        ))
        .await
        .unwrap();
    bus::consume("mailing", Mailing, subscription)
        .postgres(&db.url)
        .schema(schema)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_message_delivered_twice_is_applied_once() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let schema = db.other_schema("mailing");
    let messages: Vec<Message> = (0..50)
        .map(|i| registered(&format!("c-{i}"), &format!("n{i}"), 1))
        .collect();
    let consumer = start(&db, &schema, Twice::new(&messages)).await;
    let status = consumer
        .wait_until(WAIT, |status| status.handled() == 100)
        .await
        .expect("every delivery handled");
    assert_eq!((status.applied, status.duplicates), (50, 50));
    let ids: Vec<eda::Uuid> = messages.iter().map(|m| m.event.event_id).collect();
    let client = db.connect().await;
    assert_eq!(
        applications(&client, &schema).await,
        ids,
        "each once, in order"
    );
    consumer.stop().await;
    db.drop_schema().await;
}

/// The control of the test above: without the inbox, the second delivery is
/// applied again.
#[test]
fn control_without_the_inbox_a_message_delivered_twice_is_applied_twice() {
    if !cfg!(feature = "failpoints") || std::env::var_os("EDA_TEST_POSTGRES_URL").is_none() {
        eprintln!("skipped: the control needs the `failpoints` feature and EDA_TEST_POSTGRES_URL");
        return;
    }
    assert!(eda_test::crash::fails_when_broken(
        "a_message_delivered_twice_is_applied_once",
        "consumer.without_inbox",
    ));
}

#[tokio::test]
async fn a_message_failing_in_the_database_parks_its_aggregates_later_ones_until_the_fix() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let schema = db.other_schema("mailing");
    let bus = LocalBus::new();
    let poison = registered("c-1", "poison", 1);
    let others = registered("c-2", "bob", 1);
    let behind = registered("c-1", "ann", 1);
    for message in [&poison, &others, &behind] {
        bus.publish(message).await.unwrap();
    }
    let consumer = start(&db, &schema, bus.subscribe("mailing", [">"])).await;
    let status = consumer
        .wait_until(WAIT, |status| status.handled() == 3)
        .await
        .expect("every message handled");
    assert_eq!((status.applied, status.parked), (1, 2));
    let client = db.connect().await;
    assert_eq!(
        applications(&client, &schema).await,
        [others.event.event_id]
    );
    let parked = consumer.parked().await.unwrap();
    let ids: Vec<_> = parked.iter().map(|p| p.event_id).collect();
    assert_eq!(ids, [poison.event.event_id, behind.event.event_id]);
    assert!(
        parked[0].error.contains("null value"),
        "{}",
        parked[0].error
    );
    consumer.stop().await;

    // The park survives a restart; the fix drains it in order.
    let consumer = start(&db, &schema, bus.subscribe("mailing", [">"])).await;
    assert_eq!(consumer.status().parked, 2);
    FIXED.store(true, Ordering::SeqCst);
    let retried = consumer.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (2, 0));
    assert_eq!(
        applications(&client, &schema).await,
        [
            others.event.event_id,
            poison.event.event_id,
            behind.event.event_id
        ]
    );
    consumer.stop().await;
    db.drop_schema().await;
}
