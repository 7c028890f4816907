//! Between services, with processes killed mid-way (feature `nats`, a
//! `nats-server` of the test's own): a relay killed between publishing a page
//! and moving its checkpoint, 10 times, leaves every public event in the
//! stream once (the re-published ones dropped by their `Nats-Msg-Id`); a
//! consumer killed between applying a message and acknowledging it, 10 times,
//! leaves every event applied once, in order (the redelivered ones dropped by
//! its inbox). The controls (`EDA_BROKEN`) publish without `Nats-Msg-Id`,
//! and must leave events in the stream twice, and consume without the inbox,
//! and must apply some events twice.
//!
//! The children are this test binary itself, started with `--ignored --exact
//! child`; `EDA_CHILD` says which role.

#![cfg(unix)]
#![allow(missing_docs)]

use std::path::Path;
use std::time::Duration;

use eda::bus::{self, NatsBus};
use eda::prelude::*;
use eda::Metadata;
use eda_test::nats::NatsServer;
use eda_test::services::{applications, create, distinct, Mailing};

/// Two pages and a half of the relay's reads.
const EVENTS: u64 = 1_200;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent"))
}

/// The child: a relay until every event is published, or a consumer until
/// every event is applied.
#[tokio::test]
#[ignore = "started by the crash tests"]
async fn child() {
    let Ok(role) = std::env::var("EDA_CHILD") else {
        return;
    };
    // A killed consumer's message comes again after a second.
    let bus = NatsBus::connect(&env("EDA_CHILD_NATS"), "members")
        .await
        .expect("connect")
        .ack_wait(Duration::from_secs(1));
    let wait = Duration::from_secs(120);
    match role.as_str() {
        "relay" => {
            let store = SqliteStore::open(env("EDA_CHILD_EVENTS")).await.unwrap();
            let app = App::new(store);
            // A killed child's lease expires soon: the next one takes over.
            let relay = app.relay(bus).lease(Duration::from_millis(300)).start();
            relay.wait_for(Some(EVENTS), wait).await.expect("published");
        }
        "consumer" => {
            let subscription = bus.subscribe("mailing", "members", ">").await.unwrap();
            let path = env("EDA_CHILD_READ");
            create(Path::new(&path));
            let mailing = bus::consume("mailing", Mailing, subscription)
                .database(&path)
                .start()
                .await
                .unwrap();
            let consumed = mailing
                .wait_until(wait, |_| distinct(Path::new(&path)) >= EVENTS)
                .await;
            consumed.expect("consumed");
        }
        other => panic!("no role {other}"),
    }
}

fn run_child(role: &str, server: &NatsServer, dir: &Path, env: &[(&str, String)]) -> bool {
    let mut command = eda_test::crash::child(env.iter().map(|(k, v)| (*k, v.as_str())));
    command
        .env("EDA_CHILD", role)
        .env("EDA_CHILD_NATS", server.url())
        .env("EDA_CHILD_EVENTS", dir.join("events.db"))
        .env("EDA_CHILD_READ", dir.join("mailing.db"));
    command.status().unwrap().success()
}

/// The events in `dir`'s store: `EVENTS` registrations, their ids in order.
async fn fill(dir: &Path) -> Vec<String> {
    let store = SqliteStore::open(dir.join("events.db")).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        let id = format!("m-{n}");
        let stream = eda::StreamId {
            aggregate_type: "Member",
            aggregate_id: &id,
        };
        let registered = eda_test::new_event("MemberJoined", r#"{"name":"ada"}"#);
        ids.push(registered.event_id.to_string());
        store
            .append(stream, 0, vec![registered], &Metadata::default())
            .await
            .unwrap();
    }
    store.close().await.unwrap();
    ids
}

/// A server with `EVENTS` events in `dir`'s store: their ids in order.
async fn set_up() -> Option<(NatsServer, tempfile::TempDir, Vec<String>)> {
    let server = NatsServer::start()?;
    let dir = tempfile::tempdir().unwrap();
    let ids = fill(dir.path()).await;
    Some((server, dir, ids))
}

/// Kills 10 relays between publishing a page and its checkpoint (with
/// `broken`), then runs one to the end.
fn crash_relays(server: &NatsServer, dir: &Path, broken: Option<&str>) {
    for round in 0..10 {
        // Before the first page's checkpoint five times; then past it, and
        // before the second page's checkpoint five times.
        let after = if round == 5 { "2" } else { "1" };
        let mut env = vec![
            ("EDA_FAILPOINT", "relay.before_checkpoint".to_owned()),
            ("EDA_FAILPOINT_AFTER", after.to_owned()),
        ];
        env.extend(broken.map(|broken| ("EDA_BROKEN", broken.to_owned())));
        assert!(
            !run_child("relay", server, dir, &env),
            "relay round {round} did not crash"
        );
    }
    let env: Vec<_> = broken
        .map(|b| ("EDA_BROKEN", b.to_owned()))
        .into_iter()
        .collect();
    assert!(run_child("relay", server, dir, &env), "the relay finishes");
}

/// Kills 10 consumers between applying a message and acknowledging it (with
/// `broken`), then runs one to the end: the ids applied, in order.
fn crash_consumers(server: &NatsServer, dir: &Path, broken: Option<&str>) -> Vec<String> {
    for round in 0..10 {
        let after = rand::random::<u32>() % 100 + 1;
        let mut env = vec![
            ("EDA_FAILPOINT", "consumer.before_ack".to_owned()),
            ("EDA_FAILPOINT_AFTER", after.to_string()),
        ];
        env.extend(broken.map(|broken| ("EDA_BROKEN", broken.to_owned())));
        assert!(
            !run_child("consumer", server, dir, &env),
            "consumer round {round} did not crash"
        );
    }
    let env: Vec<_> = broken
        .map(|b| ("EDA_BROKEN", b.to_owned()))
        .into_iter()
        .collect();
    assert!(
        run_child("consumer", server, dir, &env),
        "the consumer finishes"
    );
    applications(&dir.join("mailing.db"))
}

async fn stream_messages(server: &NatsServer) -> u64 {
    eda_test::nats::stream_messages(&server.url(), "members").await
}

#[tokio::test]
async fn relays_and_consumers_killed_ten_times_each_publish_and_apply_every_event_once() {
    let Some((server, dir, ids)) = set_up().await else {
        return;
    };
    crash_relays(&server, dir.path(), None);
    assert_eq!(
        stream_messages(&server).await,
        EVENTS,
        "each event in the stream once"
    );
    let applied = crash_consumers(&server, dir.path(), None);
    assert_eq!(applied, ids, "every event applied once, in order");
}

#[tokio::test]
async fn control_relays_without_message_ids_publish_events_twice() {
    let Some((server, dir, _)) = set_up().await else {
        return;
    };
    crash_relays(&server, dir.path(), Some("bus.without_msg_id"));
    let messages = stream_messages(&server).await;
    assert!(
        messages > EVENTS,
        "without Nats-Msg-Id, re-published pages stay in the stream: {messages} messages of {EVENTS} events"
    );
}

#[tokio::test]
async fn control_consumers_without_the_inbox_apply_events_twice() {
    let Some((server, dir, ids)) = set_up().await else {
        return;
    };
    crash_relays(&server, dir.path(), None);
    let applied = crash_consumers(&server, dir.path(), Some("consumer.without_inbox"));
    assert!(
        applied.len() > ids.len(),
        "without the inbox, redelivered messages are applied again: {} applications of {} events",
        applied.len(),
        ids.len()
    );
}
