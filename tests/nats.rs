//! Services on NATS JetStream (`NatsBus`, feature `nats`): the relay publishes
//! a service's public events to its stream, and a consumer in another service
//! applies each once, with its inbox; across a broker killed and restarted
//! twice while publishing, every event arrives, once.
//!
//! The first test uses the shared server (`EDA_TEST_NATS_URL`); the others
//! start a `nats-server` of their own on a free port, which they kill and
//! restart. Without either, they print that they skipped.

#![allow(missing_docs)]

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use eda::bus::RelayHandle;
use eda::bus::{self, ConsumerHandle, Message, NatsBus, NatsSubscription};
use eda::prelude::*;
use eda::Bus;
use eda_test::nats::NatsServer;
use eda_test::services::{applications, create, Join, Mailing};

/// A service name no other run uses on the shared server.
fn service() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "members{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn consumer(path: &Path, subscription: NatsSubscription) -> ConsumerHandle<Mailing> {
    create(path);
    bus::consume("mailing", Mailing, subscription)
        .database(path)
        .start()
        .await
        .unwrap()
}

/// Lets `members` join: the whole log's event ids, in order, and the last
/// position.
async fn register(
    app: &App,
    store: &MemoryStore,
    members: std::ops::Range<usize>,
) -> (Vec<String>, u64) {
    let (mut last, count) = (0, members.end);
    for i in members {
        let joined = app
            .execute(Join {
                id: format!("m-{i}"),
            })
            .await;
        last = joined.unwrap().position.unwrap();
    }
    let log = store.read_all(0, count + 1).await.unwrap();
    let ids = log.iter().map(|e| e.event_id.to_string()).collect();
    (ids, last)
}

#[tokio::test]
async fn the_relay_publishes_to_jetstream_and_a_consumer_applies_each_event_once() {
    let Some(url) = eda_test::nats::url() else {
        return;
    };
    let service = service();
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let bus = NatsBus::connect(&url, &service).await.unwrap();
    let relay = app.relay(bus.clone()).start();
    let (ids, last) = register(&app, &store, 0..200).await;
    relay
        .wait_for(Some(last), Duration::from_secs(30))
        .await
        .unwrap();
    // Published again (a relay that crashed before its checkpoint): the
    // stream drops it by its id.
    let first = store.read_all(0, 1).await.unwrap().remove(0);
    bus.publish(&Message::of(first)).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailing.db");
    let subscription = bus.subscribe("mailing", &service, ">").await.unwrap();
    let mailing = consumer(&path, subscription).await;
    let status = mailing
        .wait_until(Duration::from_secs(30), |s| s.handled() >= 200)
        .await
        .expect("every message handled");
    assert_eq!((status.applied, status.duplicates), (200, 0));
    assert_eq!(applications(&path), ids, "each once, in order");
    mailing.stop().await;
    relay.stop().await;
    eda_test::nats::delete_stream(&url, &service).await;
}

/// Waits until `relay` has published past `position`.
async fn until_published(relay: &RelayHandle, position: u64) {
    let waited = relay
        .wait_for(Some(position), Duration::from_secs(60))
        .await;
    waited.expect("the relay goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_twice_loses_nothing_and_duplicates_nothing() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    const EVENTS: usize = 10_000;
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let (ids, last) = register(&app, &store, 0..EVENTS).await;
    let bus = NatsBus::connect(&server.url(), "members")
        .await
        .unwrap()
        .publish_timeout(Duration::from_secs(1));
    let relay = app.relay(bus.clone()).start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailing.db");
    let subscription = bus.subscribe("mailing", "members", ">").await.unwrap();
    let mailing = consumer(&path, subscription).await;

    until_published(&relay, last / 4).await;
    server.restart();
    let checkpoint = relay.status().checkpoint;
    until_published(&relay, checkpoint + last / 4).await;
    server.restart();
    until_published(&relay, last).await;

    let status = mailing
        .wait_until(Duration::from_secs(120), |s| s.applied >= EVENTS as u64)
        .await
        .unwrap_or_else(|| panic!("every message handled: {:?}", mailing.status()));
    let applied = applications(&path);
    assert_eq!(applied.len(), EVENTS, "{status:?}");
    assert_eq!(applied, ids, "each once, in order");
    // Deliveries whose acknowledgement died with the broker came again, and
    // the inbox dropped them.
    println!(
        "delivered again and dropped by the inbox: {}",
        status.duplicates
    );
    mailing.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_while_publishing_times_out_then_takes_every_event_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    const EVENTS: usize = 3_000;
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let (_, published) = register(&app, &store, 0..EVENTS / 5).await;
    let bus = NatsBus::connect(&server.url(), "members")
        .await
        .unwrap()
        .publish_timeout(Duration::from_millis(500));
    let relay = app.relay(bus.clone()).start();
    until_published(&relay, published).await;
    server.pause();
    // The rest join while the broker is paused: their publications time out,
    // and the relay retries.
    let (ids, last) = register(&app, &store, EVENTS / 5..EVENTS).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = relay.status();
        if matches!(status.state, eda::RunnerState::Retrying { .. }) {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not retrying: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.checkpoint < last,
        "the relay cannot finish while the broker is paused"
    );
    // Paused for several seconds in all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.resume();
    until_published(&relay, last).await;
    relay.stop().await;

    assert_eq!(
        eda_test::nats::stream_messages(&server.url(), "members").await,
        EVENTS as u64,
        "nothing missing, nothing stored twice"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailing.db");
    let subscription = bus.subscribe("mailing", "members", ">").await.unwrap();
    let mailing = consumer(&path, subscription).await;
    mailing
        .wait_until(Duration::from_secs(60), |s| s.applied >= EVENTS as u64)
        .await
        .expect("every message applied");
    assert_eq!(applications(&path), ids);
    mailing.stop().await;
}
