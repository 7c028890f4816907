//! Services on NATS JetStream: the relay publishing a service's public events,
//! a consumer applying them to a SQLite read model with its inbox, and the
//! latency between the two, against raw async-nats loops in the same process
//! that do the same work. Run with
//! `cargo bench --bench services --features sqlite,nats`.
//!
//! 1. Relay: `app.relay(NatsBus)` catching up on 100,000 public events
//!    (`CustomerRegistered`) from a `MemoryStore`, timed from `start()` until
//!    `wait_for` of the last position returns; against a loop that reads the
//!    same pages with `read_all_of` and publishes each event with the same
//!    subject, headers and payload, awaiting its JetStream ack before the
//!    next, as the relay does (but moving no checkpoint). Each round publishes
//!    to a fresh stream (a service name of its own), so de-duplication skips
//!    nothing; the relay's checkpoint is set back to 0 between rounds. After
//!    each raw turn, the same loop publishing a whole page before awaiting its
//!    acks (in order) runs too, for reference: what awaiting each ack costs.
//! 2. Consumer: `eda::bus::consume` applying 20,000 messages from a
//!    `NatsSubscription` to a SQLite read model (one insert per message, in
//!    the transaction of its inbox record), a fresh durable consumer and a
//!    fresh file per round, timed from `subscribe` until the status says all
//!    are applied; against a loop on a pull consumer with the same settings
//!    that decodes each message, commits the inbox record and the row in one
//!    transaction on the same pragmas, then double-acks.
//! 3. End-to-end latency: 5,000 sequential commands, each timed from
//!    `execute` returning to the consumer's status counting it applied (its
//!    transaction committed), with the relay and the consumer following live.
//!
//! As in the other benches, eda and the raw loop take turns: an untimed turn
//! each first, whose results must be equal, then `EDA_BENCH_ROUNDS` rounds
//! (default 5: a relay round is some seconds a side) of one full run each, the
//! raw loop first in even rounds. The report gives each side's median rate over
//! the rounds, the median and range of the rounds' ratios, and the ratio of the
//! total times. `EDA_BENCH_ONLY=relay`, `=consumer` or `=latency` runs one
//! scenario.
//!
//! The bench runs a `nats-server` of its own (on `PATH` or in `/usr/sbin`), on
//! a free port with a temporary store, so no stream is left behind; with
//! `EDA_BENCH_NATS_URL` set it uses that server instead (and deletes the
//! streams it made).

#![allow(missing_docs)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eda::bus::{self, NatsBus};
use eda::prelude::*;
use eda::rusqlite::{self, Connection, Transaction, TransactionBehavior};
use eda::RecordedEvent;
use eda_test::nats::async_nats::jetstream::{self, consumer, stream};
use eda_test::nats::async_nats::{self, HeaderMap};
use eda_test::nats::NatsServer;
use futures_util::StreamExt;

mod common;
use common::{report, report_latency, report_reference, take_turns, watch_steal};

const RELAY_EVENTS: u64 = 100_000;
const CONSUMER_MESSAGES: u64 = 20_000;
const LATENCY_COMMANDS: usize = 5_000;
/// The relay's page size (the runners' `BATCH`).
const PAGE: usize = 512;
/// The relay's checkpoint (and lease) name in the store.
const RELAY: &str = "eda.relay";
const WAIT: Duration = Duration::from_secs(120);

#[event(public)]
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRegistered {
    pub name: String,
    pub email: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct Register {
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
            name: format!("Customer {}", c.id),
            email: format!("{}@example.com", c.id),
        })
    }

    #[apply]
    fn registered(&mut self, _: &CustomerRegistered) {}
}

const CREATE_CUSTOMERS: &str = "CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL
) STRICT";
const INSERT_CUSTOMER: &str = "INSERT INTO customers (id, name, email) VALUES (?1, ?2, ?3)";

/// The consumer's read model: a row per customer.
#[derive(Debug, Default)]
pub struct Customers;

#[projection(name = "customers")]
impl Customers {
    #[on]
    fn registered(
        &mut self,
        e: &CustomerRegistered,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(INSERT_CUSTOMER, (&recorded.aggregate_id, &e.name, &e.email))?;
        Ok(())
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rounds: usize = std::env::var("EDA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(5);
    let only = std::env::var("EDA_BENCH_ONLY").unwrap_or_default();
    // The shared server if asked for, else one of the bench's own.
    let (url, _server) = match std::env::var("EDA_BENCH_NATS_URL") {
        Ok(url) => (url, None),
        Err(_) => match NatsServer::start() {
            Some(server) => (server.url(), Some(server)),
            None => {
                println!("NATS: skipped (no nats-server to run; or set EDA_BENCH_NATS_URL)");
                return;
            }
        },
    };
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "eda services benchmark (NATS JetStream at {url}): relay catch-up on {RELAY_EVENTS} \
         events and consumer on {CONSUMER_MESSAGES} messages in {rounds} rounds, eda and the raw \
         loop taking turns (medians of the rounds); end-to-end latency over {LATENCY_COMMANDS} \
         commands"
    );
    rt.block_on(async {
        let nats = Nats::connect(&url).await;
        if only.is_empty() || only == "relay" {
            watch_steal(relay(&nats, rounds)).await;
        }
        if only.is_empty() || only == "consumer" {
            watch_steal(consume(&nats, dir.path(), rounds)).await;
        }
        if only.is_empty() || only == "latency" {
            watch_steal(latency(&nats, dir.path())).await;
        }
    });
}

/// The server: its URL, a JetStream context of the bench's own (for the raw
/// loops and for cleaning up), and a prefix for names no other run uses.
struct Nats {
    url: String,
    jetstream: jetstream::Context,
    prefix: String,
}

impl Nats {
    async fn connect(url: &str) -> Nats {
        Nats {
            url: url.to_owned(),
            jetstream: jetstream::new(client(url).await),
            prefix: format!("bench{}", std::process::id()),
        }
    }

    /// A service (stream) name of this run.
    fn service(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    async fn delete(&self, service: &str) {
        self.jetstream
            .delete_stream(service)
            .await
            .expect("delete stream");
    }

    async fn messages(&self, service: &str) -> u64 {
        let mut stream = self.jetstream.get_stream(service).await.expect("stream");
        stream.info().await.expect("info").state.messages
    }
}

async fn client(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.expect("connect to NATS")
}

/// The stream `NatsBus::connect` creates for `service`.
async fn create_stream(jetstream: &jetstream::Context, service: &str) -> stream::Stream {
    let config = stream::Config {
        name: service.to_owned(),
        subjects: vec![format!("{service}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    };
    jetstream
        .get_or_create_stream(config)
        .await
        .expect("create stream")
}

/// Registers `count` customers named `{prefix}-{i}`: the last position.
async fn register(app: &App, prefix: &str, count: u64) -> u64 {
    let mut last = 0;
    for i in 0..count {
        let registered = app.execute(Register {
            id: format!("{prefix}-{i}"),
        });
        last = registered
            .await
            .expect("register")
            .position
            .expect("stored");
    }
    last
}

async fn relay(nats: &Nats, rounds: usize) {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let last = register(&app, "c", RELAY_EVENTS).await;
    let (eda, raw) = (
        nats.service("relay-eda-check"),
        nats.service("relay-raw-check"),
    );
    eda_relay(&app, &store, nats, &eda, last).await;
    raw_relay(&store, nats, &raw, last, Acks::EachInTurn).await;
    assert_eq!(nats.messages(&eda).await, RELAY_EVENTS);
    assert_eq!(nats.messages(&raw).await, RELAY_EVENTS);
    let (eda_stream, raw_stream) = (
        nats.jetstream.get_stream(&eda).await.expect("stream"),
        nats.jetstream.get_stream(&raw).await.expect("stream"),
    );
    for sequence in [1, RELAY_EVENTS / 2, RELAY_EVENTS] {
        let eda_message = eda_stream.get_raw_message(sequence).await.expect("get");
        let raw_message = raw_stream.get_raw_message(sequence).await.expect("get");
        let tail = |subject: &str, service: &str| subject[service.len()..].to_owned();
        assert_eq!(
            tail(&eda_message.subject, &eda),
            tail(&raw_message.subject, &raw)
        );
        assert!(eda_message.headers == raw_message.headers, "headers differ");
        assert_eq!(eda_message.payload, raw_message.payload);
    }
    nats.delete(&eda).await;
    nats.delete(&raw).await;
    // After each raw turn, the same loop pipelined a page at a time: not
    // compared with the relay, a measure of what awaiting each ack costs.
    let mut pipelined = Vec::new();
    let (eda, raw) = take_turns(
        rounds,
        async |round| {
            let service = nats.service(&format!("relay-eda-{round}"));
            let time = eda_relay(&app, &store, nats, &service, last).await;
            nats.delete(&service).await;
            time
        },
        async |round| {
            let service = nats.service(&format!("relay-raw-{round}"));
            let time = raw_relay(&store, nats, &service, last, Acks::EachInTurn).await;
            nats.delete(&service).await;
            let service = nats.service(&format!("relay-pipelined-{round}"));
            let piped = raw_relay(&store, nats, &service, last, Acks::AfterThePage).await;
            assert_eq!(nats.messages(&service).await, RELAY_EVENTS);
            nats.delete(&service).await;
            pipelined.push(piped);
            time
        },
    )
    .await;
    report(
        "1. relay to JetStream (MemoryStore, ack per event)",
        RELAY_EVENTS,
        "events",
        &eda,
        &raw,
        "ratio >= 0.7",
    );
    report_reference(
        "   reference: raw loop, acks awaited per page",
        RELAY_EVENTS,
        "events",
        &pipelined,
        &raw,
    );
}

/// How a raw relay loop awaits JetStream's acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acks {
    /// Each message's before the next is published, as the relay does.
    EachInTurn,
    /// A page's messages all published, then their acks awaited in order.
    AfterThePage,
}

/// A catch-up from 0 by a new relay publishing to `service`'s fresh stream:
/// `start()`, until `wait_for(last)` returns.
async fn eda_relay(
    app: &App,
    store: &MemoryStore,
    nats: &Nats,
    service: &str,
    last: u64,
) -> Duration {
    let bus = NatsBus::connect(&nats.url, service).await.expect("connect");
    if let Some(checkpoint) = store.read_checkpoint(RELAY).await.expect("checkpoint") {
        store
            .write_checkpoint(RELAY, Some(checkpoint), 0)
            .await
            .expect("reset the checkpoint");
    }
    let start = Instant::now();
    let relay = app.relay(bus).start();
    relay.wait_for(Some(last), WAIT).await.expect("published");
    let time = start.elapsed();
    relay.stop().await;
    time
}

/// The same pages read and published by hand to `service`'s fresh stream, on
/// a client of their own: the relay's subjects, headers and payloads, each
/// message's ack awaited before the next.
async fn raw_relay(
    store: &MemoryStore,
    nats: &Nats,
    service: &str,
    last: u64,
    acks: Acks,
) -> Duration {
    let jetstream = jetstream::new(client(&nats.url).await);
    create_stream(&jetstream, service).await;
    let (store, service) = (store.clone(), service.to_owned());
    on_worker(async move { publish_all(&store, &jetstream, &service, last, acks).await }).await
}

/// Runs `loop_` on a task of its own: on a worker thread, as the relay's and
/// the consumer's tasks are, so that the client's wake-ups do not cross to
/// `block_on`'s thread in the raw loops alone.
async fn on_worker(loop_: impl Future<Output = Duration> + Send + 'static) -> Duration {
    tokio::spawn(loop_).await.expect("the raw loop")
}

async fn publish_all(
    store: &MemoryStore,
    jetstream: &jetstream::Context,
    service: &str,
    last: u64,
    acks: Acks,
) -> Duration {
    let names = eda::registry().public_events();
    let start = Instant::now();
    let mut after = 0;
    let mut pending = Vec::with_capacity(PAGE);
    while after < last {
        let page = store.read_all_of(after, PAGE, names).await.expect("read");
        for event in &page.events {
            let subject = bus::subject_of(event);
            let headers = headers(event, &subject);
            let ack = jetstream
                .publish_with_headers(
                    format!("{service}.0.{subject}"),
                    headers,
                    event.payload.clone().into(),
                )
                .await
                .expect("publish");
            match acks {
                Acks::EachInTurn => {
                    ack.await.expect("ack");
                }
                Acks::AfterThePage => pending.push(ack),
            }
        }
        for ack in pending.drain(..) {
            ack.await.expect("ack");
        }
        after = page.read_to;
    }
    start.elapsed()
}

/// The headers `NatsBus` publishes an event with.
fn headers(event: &RecordedEvent, subject: &str) -> HeaderMap {
    let metadata = serde_json::to_string(&event.metadata).expect("metadata");
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
    headers.insert("Eda-Event-Id", event.event_id.to_string().as_str());
    headers.insert("Eda-Event", event.name.as_str());
    headers.insert(
        "Eda-Event-Version",
        event.event_version.to_string().as_str(),
    );
    headers.insert("Eda-Aggregate-Type", event.aggregate_type.as_str());
    headers.insert("Eda-Aggregate-Id", event.aggregate_id.as_str());
    headers.insert("Eda-Aggregate-Version", event.version.to_string().as_str());
    headers.insert("Eda-Position", event.position.to_string().as_str());
    headers.insert("Eda-Recorded-At", event.recorded_at.to_rfc3339().as_str());
    headers.insert("Eda-Metadata", metadata.as_str());
    headers.insert("Eda-Subject", subject);
    headers
}

async fn consume(nats: &Nats, dir: &Path, rounds: usize) {
    // The producer's stream, filled once by a relay.
    let producer = nats.service("customers");
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let last = register(&app, "m", CONSUMER_MESSAGES).await;
    let bus = NatsBus::connect(&nats.url, &producer)
        .await
        .expect("connect");
    let relay = app.relay(bus).start();
    relay.wait_for(Some(last), WAIT).await.expect("published");
    relay.stop().await;
    assert_eq!(nats.messages(&producer).await, CONSUMER_MESSAGES);
    // The consuming service's bus (its own stream stays empty).
    let consuming = nats.service("mailing");
    let bus = NatsBus::connect(&nats.url, &consuming)
        .await
        .expect("connect");
    let (eda, raw) = (read_model(dir, "eda-check"), read_model(dir, "raw-check"));
    eda_consume(&bus, &producer, "eda-check", &eda).await;
    raw_consume(nats, &producer, "raw-check", &raw).await;
    let rows = customers(&eda);
    assert_eq!(rows.len() as u64, CONSUMER_MESSAGES);
    assert!(rows == customers(&raw), "the read models differ");
    let (eda, raw) = take_turns(
        rounds,
        async |round| {
            let path = read_model(dir, &format!("eda-{round}"));
            eda_consume(&bus, &producer, &format!("eda-{round}"), &path).await
        },
        async |round| {
            let path = read_model(dir, &format!("raw-{round}"));
            raw_consume(nats, &producer, &format!("raw-{round}"), &path).await
        },
    )
    .await;
    report(
        "2. consumer, SQLite read model with its inbox",
        CONSUMER_MESSAGES,
        "msgs",
        &eda,
        &raw,
        "none set",
    );
    #[cfg(feature = "postgres")]
    match std::env::var("EDA_BENCH_POSTGRES_URL") {
        Ok(url) => postgres::consume(&bus, &producer, &url, rounds).await,
        Err(_) => println!(
            "{:<52} skipped (set EDA_BENCH_POSTGRES_URL, feature postgres)",
            "2. consumer, PostgreSQL read model with its inbox"
        ),
    }
    nats.delete(&producer).await;
    nats.delete(&consuming).await;
}

/// A fresh read database with the `customers` table, named `name` in `dir`.
fn read_model(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.db"));
    let connection = Connection::open(&path).expect("open");
    connection.execute_batch(CREATE_CUSTOMERS).expect("create");
    path
}

fn customers(path: &Path) -> Vec<(String, String, String)> {
    let connection = Connection::open(path).expect("open");
    let mut statement = connection
        .prepare("SELECT id, name, email FROM customers ORDER BY id")
        .expect("prepare");
    let rows = statement
        .query_map((), |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("query");
    rows.map(|row| row.expect("row")).collect()
}

/// A new durable consumer `name` on `producer`'s stream applying every message
/// into `path`: `subscribe`, until the status counts them all applied.
async fn eda_consume(bus: &NatsBus, producer: &str, name: &str, path: &Path) -> Duration {
    let start = Instant::now();
    let subscription = bus.subscribe(name, producer, ">").await.expect("subscribe");
    let consumer = bus::consume("customers", Customers, subscription)
        .database(path)
        .start()
        .await
        .expect("start");
    let status = consumer
        .wait_until(WAIT, |status| status.handled() >= CONSUMER_MESSAGES)
        .await
        .expect("consumed");
    let time = start.elapsed();
    consumer.stop().await;
    assert_eq!(status.applied, CONSUMER_MESSAGES, "{status:?}");
    time
}

const CREATE_INBOX: &str = "CREATE TABLE IF NOT EXISTS eda_inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) STRICT, WITHOUT ROWID";
const RECORD: &str = "INSERT INTO eda_inbox (consumer, event_id) VALUES (?1, ?2)
    ON CONFLICT DO NOTHING";

/// The same by hand: a pull consumer with the subscription's settings, each
/// message decoded, its inbox record and its row committed in one transaction
/// (the consumer's pragmas), then double-acked.
async fn raw_consume(nats: &Nats, producer: &str, name: &str, path: &Path) -> Duration {
    let jetstream = nats.jetstream.clone();
    let (producer, name, path) = (producer.to_owned(), name.to_owned(), path.to_owned());
    on_worker(async move { pull_all(&jetstream, &producer, &name, &path).await }).await
}

async fn pull_all(
    jetstream: &jetstream::Context,
    producer: &str,
    name: &str,
    path: &Path,
) -> Duration {
    let start = Instant::now();
    let stream = jetstream.get_stream(producer).await.expect("stream");
    let config = consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: format!("{producer}.>"),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending: 1,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(name, config)
        .await
        .expect("consumer");
    let mut connection = Connection::open(path).expect("open");
    connection
        .busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    connection.execute_batch(CREATE_INBOX).expect("inbox");
    let mut messages = consumer.messages().await.expect("messages");
    for _ in 0..CONSUMER_MESSAGES {
        let message = messages.next().await.expect("a message").expect("pulled");
        let headers = message.headers.as_ref().expect("headers");
        let header = |name: &str| headers.get(name).expect("header").as_str();
        let version = header("Eda-Event-Version").parse().expect("version");
        let payload = std::str::from_utf8(&message.payload).expect("UTF-8");
        let event = CustomerRegistered::decode(version, payload).expect("decode");
        let (id, customer) = (header("Nats-Msg-Id"), header("Eda-Aggregate-Id"));
        apply(&mut connection, id, customer, &event);
        message.double_ack().await.expect("ack");
    }
    start.elapsed()
}

/// The raw loop's transaction of one message: its inbox record, and its row
/// unless the record was there.
fn apply(connection: &mut Connection, event_id: &str, customer: &str, e: &CustomerRegistered) {
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    if tx.execute(RECORD, ("customers", event_id)).expect("inbox") == 1 {
        tx.execute(INSERT_CUSTOMER, (customer, &e.name, &e.email))
            .expect("insert");
    }
    tx.commit().expect("commit");
}

async fn latency(nats: &Nats, dir: &Path) {
    let service = nats.service("live");
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let bus = NatsBus::connect(&nats.url, &service)
        .await
        .expect("connect");
    let relay = app.relay(bus.clone()).start();
    let subscription = bus
        .subscribe("live", &service, ">")
        .await
        .expect("subscribe");
    let consumer = bus::consume("customers", Customers, subscription)
        .database(read_model(dir, "live"))
        .start()
        .await
        .expect("start");
    // Warm up: the first messages through the relay and the consumer.
    let warm = 10;
    register(&app, "warm", warm).await;
    consumer
        .wait_until(WAIT, |status| status.applied >= warm)
        .await
        .expect("warmed up");
    let mut latencies = Vec::with_capacity(LATENCY_COMMANDS);
    for i in 0..LATENCY_COMMANDS {
        app.execute(Register {
            id: format!("live-{i}"),
        })
        .await
        .expect("register");
        let start = Instant::now();
        let applied = warm + i as u64 + 1;
        consumer
            .wait_until(WAIT, |status| status.applied >= applied)
            .await
            .expect("applied");
        latencies.push(start.elapsed());
    }
    report_latency(
        "3. end to end, execute to applied by the consumer",
        latencies,
        "median <= 5 ms, p99 <= 50 ms",
    );
    consumer.stop().await;
    relay.stop().await;
    nats.delete(&service).await;
}

/// The consumer into a PostgreSQL read model (feature `postgres`,
/// `EDA_BENCH_POSTGRES_URL`): eda alone, a fresh schema and durable consumer
/// per round; one instance on one durable consumer, then one and two
/// instances on the partitions' consumers.
#[cfg(feature = "postgres")]
mod postgres {
    use std::time::{Duration, Instant};

    use eda::bus::{self, NatsBus};
    use eda::prelude::*;
    use eda::tokio_postgres::{self, NoTls};
    use eda::{PostgresBatch, RecordedEvent};

    use super::{CustomerRegistered, CONSUMER_MESSAGES, WAIT};

    /// A row per customer, queued in the batch.
    #[derive(Debug, Default)]
    pub struct CustomersPg;

    #[projection(name = "customers")]
    impl CustomersPg {
        #[on]
        async fn registered(
            &mut self,
            e: &CustomerRegistered,
            recorded: &RecordedEvent,
            tx: &PostgresBatch<'_>,
        ) -> Result<(), tokio_postgres::Error> {
            tx.queue(
                "INSERT INTO customers (id, name, email) VALUES ($1, $2, $3)",
                (
                    recorded.aggregate_id.clone(),
                    e.name.clone(),
                    e.email.clone(),
                ),
            );
            Ok(())
        }
    }

    /// How a round's consumer instances subscribe.
    #[derive(Clone, Copy)]
    enum Layout {
        /// One instance, one durable consumer: the stream's order.
        One,
        /// `n` instances sharing the partitions' durable consumers.
        Partitioned(usize),
    }

    pub async fn consume(bus: &NatsBus, producer: &str, url: &str, rounds: usize) {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        let layouts = [
            (
                "2. consumer, PostgreSQL read model with its inbox",
                Layout::One,
            ),
            (
                "   the same, partitioned, one instance",
                Layout::Partitioned(1),
            ),
            (
                "   the same, partitioned, two instances",
                Layout::Partitioned(2),
            ),
        ];
        let mut times = vec![Vec::new(); layouts.len()];
        for round in 0..rounds {
            for (layout, (_, how)) in layouts.iter().enumerate() {
                let run = format!("{}_{round}_{layout}", std::process::id());
                times[layout].push(consume_once(bus, producer, url, &client, &run, *how).await);
            }
        }
        for ((scenario, _), mut times) in layouts.into_iter().zip(times) {
            times.sort();
            let rate = |time: &Duration| CONSUMER_MESSAGES as f64 / time.as_secs_f64();
            println!(
                "{scenario:<52} {:>9.0} msgs/s  (median of {rounds}; {:.0}-{:.0})  target none set",
                rate(&times[times.len() / 2]),
                rate(&times[times.len() - 1]),
                rate(&times[0]),
            );
        }
    }

    /// Consumes the whole stream into a fresh schema with a fresh consumer
    /// name (`run`), laid out as `layout` says: the time it took.
    async fn consume_once(
        bus: &NatsBus,
        producer: &str,
        url: &str,
        client: &tokio_postgres::Client,
        run: &str,
        layout: Layout,
    ) -> Duration {
        let schema = format!("eda_bench_consumer_{run}");
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.customers (id text PRIMARY KEY, name text NOT NULL, email text NOT NULL);"
            ))
            .await
            .expect("create");
        let start = Instant::now();
        let name = format!("pg-{run}");
        let mut consumers = Vec::new();
        let instances = match layout {
            Layout::One => 1,
            Layout::Partitioned(instances) => instances,
        };
        for _ in 0..instances {
            let subscription = match layout {
                Layout::One => bus.subscribe(&name, producer, ">").await,
                Layout::Partitioned(_) => bus.subscribe_partitioned(&name, producer, ">").await,
            };
            let consumer = bus::consume("customers", CustomersPg, subscription.expect("subscribe"))
                .postgres(url)
                .schema(&schema)
                .start()
                .await
                .expect("start");
            consumers.push(consumer);
        }
        let deadline = Instant::now() + WAIT;
        let handled = || consumers.iter().map(|c| c.status().handled()).sum::<u64>();
        while handled() < CONSUMER_MESSAGES {
            assert!(Instant::now() < deadline, "consumed {} in time", handled());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let time = start.elapsed();
        let applied: u64 = consumers.iter().map(|c| c.status().applied).sum();
        assert_eq!(applied, CONSUMER_MESSAGES);
        for consumer in consumers {
            consumer.stop().await;
        }
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .expect("drop");
        time
    }
}
