//! The read side: projection runners catching up on 100,000 events, against raw
//! loops in the same process that do the same reads and writes, and the latency
//! of read-your-writes while they follow the log live. Run with
//! `cargo bench --bench read_side`.
//!
//! 1. Catch-up into an in-memory projection (balances by account in a `HashMap`)
//!    from a `MemoryStore`, against a loop that reads the same pages with
//!    `read_all_of` and decodes each event into the same map.
//! 2. Catch-up into the `Ledger` SQLite read model, a fresh file of its own, from a
//!    `SqliteStore` file, against a loop that reads the same pages and writes the
//!    same rows with the runner's pragmas, one transaction per page.
//! 3. Live: 10,000 sequential deposits, each timed from `execute` returning to
//!    `wait_for` of its position returning; `Ledger` on a `SqliteStore`, and the
//!    in-memory projection on a `MemoryStore`.
//! 4. With feature `postgres` and `EDA_BENCH_POSTGRES_URL` set: catch-up into
//!    the `LedgerPg` PostgreSQL read model, a fresh schema of its own, from a
//!    `PostgresStore`, against a loop that reads the same pages and writes the
//!    same rows with the same statement, one transaction per page; and live, as
//!    in 3, `LedgerPg` on a `PostgresStore`.
//! 5. Live, the commands executed by another `App` on another store opened on
//!    the same database (as another process would be): the runner is woken by
//!    its store's signal, not by its own `App`; `Ledger` on SQLite (the file's
//!    `PRAGMA data_version`, watched every 2 ms) and, with PostgreSQL,
//!    `LedgerPg` (`LISTEN`/`NOTIFY`).
//!
//! The events are the bank's, 10,000 accounts x (1 opening + 9 deposits),
//! appended straight to the store by `eda_test::ledger::fill`. As in the other
//! benches, eda and the raw loop take turns: an untimed turn each first, whose
//! results must be equal, then `EDA_BENCH_ROUNDS` rounds (default 10) of one full
//! catch-up each, the raw loop first in even rounds. The report gives each side's
//! median rate over the rounds, the median and range of the rounds' ratios, and
//! the ratio of the total times. `EDA_BENCH_ONLY=memory`, `=sqlite`, `=postgres`
//! (catch-up) or `=live` (every live scenario) runs one scenario.

#![allow(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eda::prelude::*;
use eda::rusqlite::{Connection, TransactionBehavior};
use eda::{Event, ProjectionHandle, RecordedEvent, SqliteOptions, SqliteSynchronous};
use eda_test::bank::{AccountOpened, DepositMoney, MoneyDeposited, MoneyWithdrawn, OpenAccount};
use eda_test::ledger::{self, Ledger};

mod common;
use common::{report, report_latency, take_turns, watch_steal};

const ACCOUNTS: usize = 10_000;
const DEPOSITS: usize = 9;
const EVENTS: u64 = (ACCOUNTS * (1 + DEPOSITS)) as u64;
/// The live latency's targets.
const LIVE_TARGET: &str = "median <= 2 ms, p99 <= 20 ms";
/// The names the raw loops read, those the projections handle.
const NAMES: &[&str] = &[
    AccountOpened::NAME,
    MoneyDeposited::NAME,
    MoneyWithdrawn::NAME,
];
/// The runners' page size.
const PAGE: usize = 512;
const LIVE_COMMANDS: usize = 10_000;
const LIVE_ACCOUNTS: usize = 4;
const WAIT: Duration = Duration::from_secs(60);

/// Balances by account, in memory.
#[derive(Debug, Default)]
struct Balances(HashMap<String, i64>);

#[projection]
impl Balances {
    #[on]
    fn opened(&mut self, _: &AccountOpened, recorded: &RecordedEvent) {
        self.add(&recorded.aggregate_id, 0);
    }

    #[on]
    fn deposited(&mut self, e: &MoneyDeposited, recorded: &RecordedEvent) {
        self.add(&recorded.aggregate_id, e.amount as i64);
    }

    #[on]
    fn withdrawn(&mut self, e: &MoneyWithdrawn, recorded: &RecordedEvent) {
        self.add(&recorded.aggregate_id, -(e.amount as i64));
    }
}

impl Balances {
    fn add(&mut self, account: &str, amount: i64) {
        match self.0.get_mut(account) {
            Some(balance) => *balance += amount,
            None => {
                self.0.insert(account.to_owned(), amount);
            }
        }
    }
}

/// What `event` adds to its account's balance: the raw loops' decoding.
fn amount(event: &RecordedEvent) -> i64 {
    let (version, payload) = (event.event_version, event.payload.as_str());
    match event.name.as_str() {
        AccountOpened::NAME => AccountOpened::decode(version, payload).map(|_| 0),
        MoneyDeposited::NAME => MoneyDeposited::decode(version, payload).map(|e| e.amount as i64),
        MoneyWithdrawn::NAME => {
            MoneyWithdrawn::decode(version, payload).map(|e| -(e.amount as i64))
        }
        other => panic!("event `{other}` was not asked for"),
    }
    .expect("decode")
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
        .unwrap_or(10);
    let only = std::env::var("EDA_BENCH_ONLY").unwrap_or_default();
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "eda read-side benchmark: catch-up on {EVENTS} events in {rounds} rounds, eda and the raw \
         loop taking turns (medians of the rounds); live latency over {LIVE_COMMANDS} commands"
    );
    rt.block_on(async {
        if only.is_empty() || only == "memory" {
            watch_steal(memory_catch_up(rounds)).await;
        }
        if only.is_empty() || only == "sqlite" {
            watch_steal(sqlite_catch_up(dir.path(), rounds)).await;
        }
        #[cfg(feature = "postgres")]
        let postgres = std::env::var("EDA_BENCH_POSTGRES_URL").ok();
        #[cfg(feature = "postgres")]
        if let (Some(url), true) = (&postgres, only.is_empty() || only == "postgres") {
            watch_steal(postgres::catch_up(url, rounds)).await;
        }
        if only.is_empty() || only == "live" {
            watch_steal(live_sqlite(dir.path())).await;
            watch_steal(live_memory()).await;
            #[cfg(feature = "postgres")]
            if let Some(url) = &postgres {
                watch_steal(postgres::live(url)).await;
            }
            watch_steal(live_sqlite_elsewhere(dir.path())).await;
            #[cfg(feature = "postgres")]
            if let Some(url) = &postgres {
                watch_steal(postgres::live_elsewhere(url)).await;
            }
        }
    });
    #[cfg(feature = "postgres")]
    if std::env::var("EDA_BENCH_POSTGRES_URL").is_err() {
        println!("PostgreSQL: skipped (set EDA_BENCH_POSTGRES_URL)");
    }
}

async fn memory_catch_up(rounds: usize) {
    let store = MemoryStore::new();
    assert_eq!(ledger::fill(&store, ACCOUNTS, DEPOSITS).await, EVENTS);
    let app = App::new(store.clone());
    let (eda, raw) = (eda_memory(&app).await.1, raw_memory(&store).await.1 .0);
    assert!(eda == raw, "the projection and the raw loop disagree");
    let (eda, raw) = take_turns(
        rounds,
        async |_| eda_memory(&app).await.0,
        async |_| raw_memory(&store).await.0,
    )
    .await;
    report(
        "1. catch-up, in-memory projection (MemoryStore)",
        EVENTS,
        "events",
        &eda,
        &raw,
        "ratio >= 0.5",
    );
}

/// A catch-up from 0 by a new runner of `Balances`: its time and its state.
async fn eda_memory(app: &App) -> (Duration, HashMap<String, i64>) {
    let start = Instant::now();
    let balances = app.project(Balances::default()).start();
    balances
        .wait_for(Some(EVENTS), WAIT)
        .await
        .expect("catch-up");
    let time = start.elapsed();
    balances.stop().await;
    (time, balances.read(|b| b.0.clone()))
}

/// The same pages read and decoded into the same map by hand.
async fn raw_memory(store: &MemoryStore) -> (Duration, Balances) {
    let start = Instant::now();
    let mut balances = Balances::default();
    let mut after = 0;
    while after < EVENTS {
        let page = store.read_all_of(after, PAGE, NAMES).await.expect("read");
        for event in &page.events {
            balances.add(&event.aggregate_id, amount(event));
        }
        after = page.read_to;
    }
    (start.elapsed(), balances)
}

async fn sqlite_catch_up(dir: &Path, rounds: usize) {
    // NORMAL only to fill the log faster: reading it is the same either way.
    let options = SqliteOptions::new().synchronous(SqliteSynchronous::Normal);
    let store = SqliteStore::open_with(dir.join("events.db"), options)
        .await
        .expect("open");
    assert_eq!(ledger::fill(&store, ACCOUNTS, DEPOSITS).await, EVENTS);
    let app = App::new(store.clone());
    let (eda, raw) = (read_model(dir, "eda-check"), read_model(dir, "raw-check"));
    eda_sqlite(&app, &eda).await;
    raw_sqlite(&store, &raw).await;
    let rows = ledger::read(&eda).expect("read");
    assert!(rows.applications.len() as u64 == EVENTS && rows.applied_twice() == 0);
    assert!(
        rows == ledger::read(&raw).expect("read"),
        "the read models differ"
    );
    let (eda, raw) = take_turns(
        rounds,
        async |round| eda_sqlite(&app, &read_model(dir, &format!("eda-{round}"))).await,
        async |round| raw_sqlite(&store, &read_model(dir, &format!("raw-{round}"))).await,
    )
    .await;
    report(
        "2. catch-up, SQLite read model (Ledger, own file)",
        EVENTS,
        "events",
        &eda,
        &raw,
        ">= 50,000/s",
    );
}

/// A fresh read database for the ledger, named `name` in `dir`.
fn read_model(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.db"));
    ledger::create(&path).expect("create");
    path
}

/// A catch-up from 0 by a new runner of `Ledger` into `path`: start, until
/// `wait_for` returns.
async fn eda_sqlite(app: &App, path: &Path) -> Duration {
    let start = Instant::now();
    let ledger = app
        .project(Ledger)
        .database(path)
        .start()
        .await
        .expect("start");
    ledger.wait_for(Some(EVENTS), WAIT).await.expect("catch-up");
    let time = start.elapsed();
    ledger.stop().await;
    time
}

/// The same pages read, decoded and written as `Ledger`'s rows by hand: the
/// runner's pragmas, a transaction per page (but no checkpoint).
async fn raw_sqlite(store: &SqliteStore, path: &Path) -> Duration {
    let start = Instant::now();
    let mut connection = Connection::open(path).expect("open");
    connection
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .expect("pragmas");
    let mut after = 0;
    while after < EVENTS {
        let page = store.read_all_of(after, PAGE, NAMES).await.expect("read");
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        for event in &page.events {
            ledger::add(&tx, event, amount(event)).expect("insert");
        }
        tx.commit().expect("commit");
        after = page.read_to;
    }
    start.elapsed()
}

async fn live_sqlite(dir: &Path) {
    let store = SqliteStore::open(dir.join("live.db")).await.expect("open");
    let app = App::new(store);
    let path = read_model(dir, "live-ledger");
    let ledger = app
        .project(Ledger)
        .database(&path)
        .start()
        .await
        .expect("start");
    let latencies = live(&app, &ledger).await;
    report_latency(
        "3. live, Ledger on SqliteStore (FULL)",
        latencies,
        LIVE_TARGET,
    );
}

/// As [`live_sqlite`], the commands executed by another `App` on another store
/// opened on the same file: the runner hears of them from its store's
/// thread watching the file.
async fn live_sqlite_elsewhere(dir: &Path) {
    let path = dir.join("live-elsewhere.db");
    let reader = App::new(SqliteStore::open(&path).await.expect("open"));
    let writer = App::new(SqliteStore::open(&path).await.expect("open"));
    let read_model = read_model(dir, "live-elsewhere-ledger");
    let ledger = reader
        .project(Ledger)
        .database(&read_model)
        .start()
        .await
        .expect("start");
    let latencies = live(&writer, &ledger).await;
    report_latency(
        "5. live, Ledger on SqliteStore, writer elsewhere",
        latencies,
        LIVE_TARGET,
    );
}

async fn live_memory() {
    let app = App::new(MemoryStore::new());
    let balances = app.project(Balances::default()).start();
    let latencies = live(&app, &balances).await;
    report_latency(
        "3. live, in-memory projection on MemoryStore",
        latencies,
        LIVE_TARGET,
    );
}

/// Opens a few accounts, then deposits on them in turn, one command at a time:
/// the time from each `execute` returning to `projection` having applied it.
async fn live<P>(app: &App, projection: &ProjectionHandle<P>) -> Vec<Duration> {
    let accounts: Vec<String> = (0..LIVE_ACCOUNTS).map(|i| format!("live-{i}")).collect();
    for account in &accounts {
        let open = OpenAccount {
            account: account.clone(),
            owner: "owner".into(),
        };
        let opened = app.execute(open).await.expect("open");
        projection
            .wait_for(opened.position, WAIT)
            .await
            .expect("wait");
    }
    let mut latencies = Vec::with_capacity(LIVE_COMMANDS);
    for account in accounts.iter().cycle().take(LIVE_COMMANDS) {
        let deposit = DepositMoney {
            account: account.clone(),
            amount: 1,
        };
        let committed = app.execute(deposit).await.expect("deposit");
        let start = Instant::now();
        projection
            .wait_for(committed.position, WAIT)
            .await
            .expect("wait");
        latencies.push(start.elapsed());
    }
    latencies
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use eda::tokio_postgres::types::ToSql;
    use eda::tokio_postgres::{self, Client, NoTls};
    use eda::{PostgresOptions, PostgresStore};
    use eda_test::ledger_pg::{self, LedgerPg};

    async fn connect(url: &str) -> Client {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }

    async fn store(url: &str, schema: &str) -> PostgresStore {
        PostgresStore::connect_with(url, PostgresOptions::new().schema(schema))
            .await
            .expect("connect")
    }

    async fn drop_schemas(client: &Client, prefix: &str) {
        let schemas = client
            .query(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                &[&prefix],
            )
            .await
            .expect("schemas");
        for row in schemas {
            let schema: String = row.get(0);
            client
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .expect("drop");
        }
    }

    pub async fn catch_up(url: &str, rounds: usize) {
        let schema = format!("eda_bench_read_{}", std::process::id());
        let client = connect(url).await;
        let store = store(url, &schema).await;
        assert_eq!(ledger::fill(&store, ACCOUNTS, DEPOSITS).await, EVENTS);
        // Positions are transaction ids (shifted): the last one, not the count.
        let last: i64 = client
            .query_one(
                &format!("SELECT max(position) FROM {schema}.eda_events"),
                &[],
            )
            .await
            .expect("last position")
            .get(0);
        let last = last as u64;
        let app = App::new(store.clone());
        let read_model = async |name: &str| {
            let read_schema = format!("{schema}_{name}");
            ledger_pg::create(&client, &read_schema)
                .await
                .expect("create");
            read_schema
        };
        let (eda, raw) = (read_model("eda_check").await, read_model("raw_check").await);
        eda_postgres(&app, url, &eda, last).await;
        raw_postgres(&store, url, &raw, last).await;
        let rows = ledger_pg::read(&client, &eda).await.expect("read");
        assert!(rows.applications.len() as u64 == EVENTS && rows.applied_twice() == 0);
        assert!(
            rows == ledger_pg::read(&client, &raw).await.expect("read"),
            "the read models differ"
        );
        let (eda, raw) = take_turns(
            rounds,
            async |round| {
                let read_schema = read_model(&format!("eda_{round}")).await;
                eda_postgres(&app, url, &read_schema, last).await
            },
            async |round| {
                let read_schema = read_model(&format!("raw_{round}")).await;
                raw_postgres(&store, url, &read_schema, last).await
            },
        )
        .await;
        report(
            "4. catch-up, PostgreSQL read model (LedgerPg, own schema)",
            EVENTS,
            "events",
            &eda,
            &raw,
            ">= 20,000/s",
        );
        drop_schemas(&client, &schema).await;
    }

    /// A catch-up from 0 by a new runner of `LedgerPg` into `schema`: start,
    /// until `wait_for` returns.
    async fn eda_postgres(app: &App, url: &str, schema: &str, last: u64) -> Duration {
        let start = Instant::now();
        let ledger = app
            .project(LedgerPg)
            .postgres(url)
            .schema(schema)
            .start()
            .await
            .expect("start");
        ledger.wait_for(Some(last), WAIT).await.expect("catch-up");
        let time = start.elapsed();
        ledger.stop().await;
        time
    }

    /// The same pages read, decoded and written as `LedgerPg`'s rows by hand,
    /// with its statement: a connection of its own, the statement prepared
    /// once, a transaction per page with its statements pipelined (but no
    /// checkpoint).
    async fn raw_postgres(store: &PostgresStore, url: &str, schema: &str, last: u64) -> Duration {
        let start = Instant::now();
        let mut client = connect(url).await;
        client
            .batch_execute(&format!("SET search_path = {schema}"))
            .await
            .expect("search path");
        let add = client.prepare(ledger_pg::ADD).await.expect("prepare");
        let mut after = 0;
        while after < last {
            let page = store.read_all_of(after, PAGE, NAMES).await.expect("read");
            let tx = client.transaction().await.expect("begin");
            let params: Vec<_> = page
                .events
                .iter()
                .map(|event| ledger_pg::params(event, amount(event)))
                .collect();
            let inserts = params.iter().map(|(account, amount, id, position)| {
                let params: [&(dyn ToSql + Sync); 4] = [account, amount, id, position];
                tx.execute_raw(&add, params)
            });
            for inserted in futures_util::future::join_all(inserts).await {
                inserted.expect("insert");
            }
            tx.commit().await.expect("commit");
            after = page.read_to;
        }
        start.elapsed()
    }

    /// `LedgerPg` on the store its commands go to, in a schema of its own.
    pub async fn live(url: &str) {
        let name = "3. live, LedgerPg on PostgresStore";
        live_in(url, "eda_bench_live", false, name).await;
    }

    /// As [`live`], the commands executed by another `App` on another store on
    /// the same schema: the runner hears of them by `LISTEN`.
    pub async fn live_elsewhere(url: &str) {
        let name = "5. live, LedgerPg on PostgresStore, writer elsewhere";
        live_in(url, "eda_bench_elsewhere", true, name).await;
    }

    /// `LedgerPg`'s live latency in a schema named after `prefix`, the
    /// commands executed by its own `App` or, `elsewhere`, by another on
    /// another store.
    async fn live_in(url: &str, prefix: &str, elsewhere: bool, name: &str) {
        let schema = format!("{prefix}_{}", std::process::id());
        let client = connect(url).await;
        let reader = App::new(store(url, &schema).await);
        let writer = match elsewhere {
            true => App::new(store(url, &schema).await),
            false => reader.clone(),
        };
        let read_schema = format!("{schema}_ledger");
        ledger_pg::create(&client, &read_schema)
            .await
            .expect("create");
        let ledger = reader
            .project(LedgerPg)
            .postgres(url)
            .schema(&read_schema)
            .start()
            .await
            .expect("start");
        let latencies = super::live(&writer, &ledger).await;
        report_latency(name, latencies, LIVE_TARGET);
        ledger.stop().await;
        drop_schemas(&client, &schema).await;
    }
}
