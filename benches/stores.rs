//! Command throughput on the durable stores, against a raw driver loop doing the
//! same writes in the same process. Run with `cargo bench --bench stores`
//! (SQLite), and `EDA_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo bench --bench stores --features postgres` for PostgreSQL too.
//!
//! Bank domain, 1,000 accounts x (1 open + 9 deposits) = 10,000 commands through
//! `App::execute`: sequentially, and from 16 concurrent callers on different
//! accounts. On PostgreSQL also: one account with 10,000 events, then 1,000 more
//! commands with the cache off and `snapshot_every = 100`.
//!
//! The disks of small virtual machines change speed from one second to the next,
//! so eda and the raw loop take turns: `EDA_BENCH_ROUNDS` rounds (default 10) of
//! 1,000 accounts / rounds each, the raw loop first in even rounds and eda first in
//! odd ones. The report gives each side's rate over all rounds, the ratio of the
//! two, and the median and range of the per-round ratios.
//!
//! `EDA_BENCH_ONLY=normal` runs SQLite NORMAL only (and PostgreSQL when its URL is
//! set), `=postgres` skips SQLite, and `=long` runs PostgreSQL's long stream alone.

#![allow(missing_docs)]

use std::ops::Range;
use std::time::{Duration, Instant};

use eda::prelude::*;
use eda::{SqliteOptions, SqliteSynchronous};
use eda_test::bank::{DepositMoney, OpenAccount};

const ACCOUNTS: usize = 1_000;
const DEPOSITS: usize = 9;
const COMMANDS: usize = ACCOUNTS * (1 + DEPOSITS);
const CALLERS: usize = 16;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rounds: usize = std::env::var("EDA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0 && ACCOUNTS.is_multiple_of(r))
        .unwrap_or(10);
    println!(
        "eda store benchmark: {COMMANDS} commands per scenario (1,000 accounts x 10) in {rounds} rounds, \
         eda and the raw loop taking turns"
    );
    // EDA_BENCH_ONLY=normal runs SQLite NORMAL (and PostgreSQL if asked for) alone;
    // EDA_BENCH_ONLY=postgres skips SQLite; EDA_BENCH_ONLY=long runs PostgreSQL's
    // long stream alone.
    let only = std::env::var("EDA_BENCH_ONLY").unwrap_or_default();
    for synchronous in [SqliteSynchronous::Full, SqliteSynchronous::Normal] {
        if only.is_empty() || (only == "normal" && synchronous == SqliteSynchronous::Normal) {
            rt.block_on(sqlite(synchronous, rounds));
        }
    }
    #[cfg(feature = "postgres")]
    match std::env::var("EDA_BENCH_POSTGRES_URL") {
        Ok(url) => rt.block_on(postgres::run(&url, rounds, only == "long")),
        Err(_) => println!("PostgreSQL: skipped (set EDA_BENCH_POSTGRES_URL)"),
    }
}

/// The accounts of each round.
fn round_accounts(rounds: usize) -> impl Iterator<Item = Range<usize>> {
    let per_round = ACCOUNTS / rounds;
    (0..rounds).map(move |round| round * per_round..(round + 1) * per_round)
}

/// Runs `eda` and `raw` on each round's accounts in turns; their times per round.
async fn take_turns(
    rounds: usize,
    mut eda: impl AsyncFnMut(Range<usize>) -> Duration,
    mut raw: impl AsyncFnMut(Range<usize>) -> Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut eda_times, mut raw_times) = (Vec::new(), Vec::new());
    for (round, accounts) in round_accounts(rounds).enumerate() {
        if round % 2 == 0 {
            raw_times.push(raw(accounts.clone()).await);
            eda_times.push(eda(accounts).await);
        } else {
            eda_times.push(eda(accounts.clone()).await);
            raw_times.push(raw(accounts).await);
        }
    }
    (eda_times, raw_times)
}

fn per_second(commands: usize, time: Duration) -> f64 {
    commands as f64 / time.as_secs_f64()
}

/// CPU time the hypervisor gave to other machines (`steal` in /proc/stat), in
/// clock ticks summed over all CPUs; `None` where there is no /proc/stat.
fn stolen_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()
}

/// Runs `scenario`, then prints how much of the machine was stolen meanwhile: a
/// run with much steal is noise, not a measurement.
async fn watch_steal(scenario: impl AsyncFnOnce()) {
    let (before, start) = (stolen_ticks(), Instant::now());
    scenario().await;
    if let (Some(before), Some(after)) = (before, stolen_ticks()) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // Linux reports /proc/stat in USER_HZ, 100 ticks per second.
        let stolen = (after - before) as f64 / 100.0 / cpus / start.elapsed().as_secs_f64();
        println!(
            "{:>60}",
            format!("(CPU stolen by the host meanwhile: {:.0}%)", stolen * 100.0)
        );
    }
}

fn report(name: &str, eda: &[Duration], raw: Option<&[Duration]>) {
    let rate = per_second(COMMANDS, eda.iter().sum());
    print!("{name:<58} {rate:>7.0}/s");
    if let Some(raw) = raw {
        let raw_rate = per_second(COMMANDS, raw.iter().sum());
        // Same commands per round on both sides: the ratio of rates is raw / eda time.
        let mut ratios: Vec<f64> = eda
            .iter()
            .zip(raw)
            .map(|(eda, raw)| raw.as_secs_f64() / eda.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        print!(
            "  raw loop {raw_rate:>6.0}/s  ratio {:.2} (rounds: median {:.2}, {:.2}-{:.2})",
            rate / raw_rate,
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        );
    }
    println!();
}

/// Each account of `accounts` opened and given 9 deposits through `app`, from
/// `callers` tasks on disjoint accounts.
async fn bank(app: &App, callers: usize, accounts: Range<usize>) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let app = app.clone();
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move {
            for account in (accounts.start + caller..accounts.end).step_by(callers) {
                let id = format!("acc-{account}");
                app.execute(OpenAccount {
                    account: id.clone(),
                    owner: "owner".into(),
                })
                .await
                .expect("open");
                for _ in 0..DEPOSITS {
                    app.execute(DepositMoney {
                        account: id.clone(),
                        amount: 10,
                    })
                    .await
                    .expect("deposit");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("caller");
    }
    start.elapsed()
}

async fn sqlite(synchronous: SqliteSynchronous, rounds: usize) {
    let label = match synchronous {
        SqliteSynchronous::Full => "FULL",
        _ => "NORMAL",
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut raw = RawSqlite::open(&dir.path().join("raw.db"), label);
    let open = async |name: &str| {
        let store = SqliteStore::open_with(
            dir.path().join(name),
            SqliteOptions::new().synchronous(synchronous),
        )
        .await
        .expect("open");
        App::new(store)
    };
    for (poll, name) in [
        (Duration::from_millis(1), "sequential"),
        (Duration::ZERO, "sequential, poll_for_reply(ZERO)"),
    ] {
        let store = SqliteStore::open_with(
            dir.path().join(format!("seq-{}.db", poll.as_micros())),
            SqliteOptions::new()
                .synchronous(synchronous)
                .poll_for_reply(poll),
        )
        .await
        .expect("open");
        let app = App::new(store);
        watch_steal(async || {
            let (sequential, raw_times) = take_turns(
                rounds,
                async |accounts| bank(&app, 1, accounts).await,
                async |accounts| raw.run(accounts),
            )
            .await;
            report(
                &format!("SQLite {label}, {name}"),
                &sequential,
                Some(&raw_times),
            );
        })
        .await;
    }
    // Against the same sequential raw loop: one writer is all SQLite has.
    let app = open("conc.db").await;
    watch_steal(async || {
        let (concurrent, raw_times) = take_turns(
            rounds,
            async |accounts| bank(&app, CALLERS, accounts).await,
            async |accounts| raw.run(accounts),
        )
        .await;
        report(
            &format!("SQLite {label}, {CALLERS} callers (group commit) vs sequential raw"),
            &concurrent,
            Some(&raw_times),
        );
    })
    .await;
}

/// The same writes as eda's append, one transaction per command, straight
/// through rusqlite on the calling thread: read the version, insert the event,
/// upsert the version.
struct RawSqlite {
    connection: rusqlite::Connection,
    /// Which round of accounts: the sequential and concurrent scenarios reuse them.
    pass: usize,
}

impl RawSqlite {
    fn open(path: &std::path::Path, synchronous: &str) -> RawSqlite {
        let connection = rusqlite::Connection::open(path).expect("open");
        connection
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
                 CREATE TABLE events (position INTEGER PRIMARY KEY AUTOINCREMENT, event_id BLOB NOT NULL UNIQUE,
                     aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL, version INTEGER NOT NULL,
                     name TEXT NOT NULL, event_version INTEGER NOT NULL, payload TEXT NOT NULL,
                     metadata TEXT NOT NULL, recorded_at INTEGER NOT NULL,
                     UNIQUE (aggregate_type, aggregate_id, version));
                 CREATE TABLE aggregates (aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL,
                     version INTEGER NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id)) WITHOUT ROWID;"
            ))
            .expect("schema");
        RawSqlite {
            connection,
            pass: 0,
        }
    }

    fn run(&mut self, accounts: Range<usize>) -> Duration {
        if accounts.start == 0 {
            self.pass += 1;
        }
        let start = Instant::now();
        for account in accounts {
            let id = format!("acc-{}-{account}", self.pass);
            for version in 1..=(1 + DEPOSITS) as i64 {
                let tx = self
                    .connection
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .expect("begin");
                let current: Option<i64> = tx
                    .prepare_cached("SELECT version FROM aggregates WHERE aggregate_type = ?1 AND aggregate_id = ?2")
                    .and_then(|mut s| {
                        rusqlite::OptionalExtension::optional(s.query_row(("Account", &id), |row| row.get(0)))
                    })
                    .expect("select");
                assert_eq!(current.unwrap_or(0), version - 1);
                tx.prepare_cached(
                    "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata, recorded_at)
                     VALUES (?1, 'Account', ?2, ?3, 'MoneyDeposited', 1, '{\"amount\":10}', '{\"command\":\"DepositMoney\"}', 0)",
                )
                .and_then(|mut s| s.execute((eda::Uuid::now_v7().as_bytes().as_slice(), &id, version)))
                .expect("insert");
                tx.prepare_cached(
                    "INSERT INTO aggregates VALUES ('Account', ?1, ?2)
                     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version",
                )
                .and_then(|mut s| s.execute((&id, version)))
                .expect("upsert");
                tx.commit().expect("commit");
            }
        }
        start.elapsed()
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use eda::PostgresOptions;
    use std::sync::Arc;

    const LONG: usize = 10_000;
    const TAIL: usize = 1_000;

    pub async fn run(url: &str, rounds: usize, long_only: bool) {
        let schema = format!("eda_bench_{}", std::process::id());
        if long_only {
            watch_steal(async || long_stream(url, &format!("{schema}_l")).await).await;
            drop_schemas(url, &[&format!("{schema}_l")]).await;
            return;
        }
        let raw = Raw::connect(url, &format!("{schema}_raw")).await;
        let app = |schema: String| async move {
            let store = PostgresStore::connect_with(url, PostgresOptions::new().schema(schema))
                .await
                .expect("connect");
            App::new(store)
        };
        for (callers, suffix) in [(1, "s"), (CALLERS, "c")] {
            let app = app(format!("{schema}_{suffix}")).await;
            watch_steal(async || {
                let (eda, raw_times) = take_turns(
                    rounds,
                    async |accounts| bank(&app, callers, accounts).await,
                    async |accounts| raw.run(callers, suffix, accounts).await,
                )
                .await;
                let name = if callers == 1 {
                    "PostgreSQL, sequential".to_owned()
                } else {
                    format!("PostgreSQL, {CALLERS} concurrent callers (raw: {CALLERS} connections)")
                };
                report(&name, &eda, Some(&raw_times));
            })
            .await;
        }
        watch_steal(async || long_stream(url, &format!("{schema}_l")).await).await;
        drop_schemas(
            url,
            &[
                &format!("{schema}_s"),
                &format!("{schema}_c"),
                &format!("{schema}_l"),
                &format!("{schema}_raw"),
            ],
        )
        .await;
    }

    async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    async fn drop_schemas(url: &str, schemas: &[&str]) {
        let client = connect(url).await;
        for schema in schemas {
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
                .expect("drop");
        }
    }

    /// One account with 10,000 events, then 1,000 more commands with the cache off,
    /// with and without snapshots.
    async fn long_stream(url: &str, schema: &str) {
        let store = PostgresStore::connect_with(url, PostgresOptions::new().schema(schema))
            .await
            .expect("connect");
        let app = App::new(store.clone());
        app.execute(snap::Open { id: "long".into() })
            .await
            .expect("open");
        for _ in 1..LONG {
            app.execute(snap::Deposit { id: "long".into() })
                .await
                .expect("deposit");
        }
        // Statistics as a server that has run a while has them: they show one
        // aggregate holding every event (see `after_version!` in the store).
        connect(url)
            .await
            .batch_execute(&format!(
                "ANALYZE {schema}.eda_events; ANALYZE {schema}.eda_snapshots"
            ))
            .await
            .expect("analyze");
        // The same commands with the cache on: appends only, for comparison.
        let start = Instant::now();
        for _ in 0..TAIL {
            app.execute(snap::Deposit { id: "long".into() })
                .await
                .expect("deposit");
        }
        let cached = start.elapsed();
        let uncached = App::builder(store).cache_capacity(0).build().expect("app");
        // In 10 rounds of 100, to show the spread: fsync times vary.
        let mut rounds = Vec::new();
        for _ in 0..10 {
            let start = Instant::now();
            for _ in 0..TAIL / 10 {
                uncached
                    .execute(snap::Deposit { id: "long".into() })
                    .await
                    .expect("deposit");
            }
            rounds.push(per_second(TAIL / 10, start.elapsed()));
        }
        let total = TAIL as f64
            / rounds
                .iter()
                .map(|rate| (TAIL / 10) as f64 / rate)
                .sum::<f64>();
        rounds.sort_by(f64::total_cmp);
        println!(
            "{:<58} {:>7.0}/s  (rounds of 100: median {:.0}/s, {:.0}-{:.0})",
            "PostgreSQL, 10,000-event stream, no cache, snapshot_every = 100",
            total,
            rounds[rounds.len() / 2],
            rounds[0],
            rounds[rounds.len() - 1]
        );
        println!(
            "{:<58} {:>7.0}/s",
            "  the same commands with the cache on (appends only)",
            per_second(TAIL, cached)
        );
        // Where that time goes: the loads alone (snapshot and tail, one round trip),
        // with the average tail of the run above: 50 events after the snapshot.
        for _ in 0..50 {
            app.execute(snap::Deposit { id: "long".into() })
                .await
                .expect("deposit");
        }
        let start = Instant::now();
        for _ in 0..TAIL {
            uncached
                .load::<snap::Long>(&"long".to_owned())
                .await
                .expect("load");
        }
        println!(
            "{:<58} {:>7.0}/s",
            "  the loads alone (snapshot + a tail of 50 events)",
            per_second(TAIL, start.elapsed())
        );
        // The floor of any read: one round trip doing nothing, through the driver.
        let client = connect(url).await;
        let nothing = client.prepare("SELECT 1").await.expect("prepare");
        let start = Instant::now();
        for _ in 0..TAIL {
            client.query_one(&nothing, &[]).await.expect("select");
        }
        println!(
            "{:<58} {:>7.0}/s",
            "  one round trip alone (SELECT 1 through tokio-postgres)",
            per_second(TAIL, start.elapsed())
        );
    }

    /// The same one-statement append eda sends, through tokio-postgres directly:
    /// one transaction per command, on 16 connections opened beforehand.
    struct Raw {
        connections: Arc<Vec<(tokio_postgres::Client, tokio_postgres::Statement)>>,
    }

    impl Raw {
        async fn connect(url: &str, schema: &str) -> Raw {
            let setup = connect(url).await;
            setup
                .batch_execute(&format!(
                    "CREATE SCHEMA {schema};
                     CREATE TABLE {schema}.events (position bigint PRIMARY KEY, event_id uuid NOT NULL UNIQUE,
                         aggregate_type text NOT NULL, aggregate_id text NOT NULL, version bigint NOT NULL,
                         name text NOT NULL, event_version integer NOT NULL, payload jsonb NOT NULL,
                         metadata jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),
                         UNIQUE (aggregate_type, aggregate_id, version));
                     CREATE TABLE {schema}.aggregates (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
                         version bigint NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id));"
                ))
                .await
                .expect("schema");
            let mut connections = Vec::new();
            for _ in 0..CALLERS {
                let client = connect(url).await;
                let statement = client
                    .prepare(&format!(
                        "WITH cas AS (
                             INSERT INTO {schema}.aggregates VALUES ('Account', $1, $2)
                             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = $2
                             WHERE {schema}.aggregates.version = $2 - 1 RETURNING version)
                         INSERT INTO {schema}.events (position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata)
                         SELECT (pg_current_xact_id()::text::bigint << 20) | 1, $3, 'Account', $1, $2, 'MoneyDeposited', 1,
                                '{{\"amount\":10}}'::jsonb, '{{\"command\":\"DepositMoney\"}}'::jsonb
                         FROM cas"
                    ))
                    .await
                    .expect("prepare");
                connections.push((client, statement));
            }
            Raw {
                connections: Arc::new(connections),
            }
        }

        /// `accounts` (named after `prefix`) from `callers` tasks, one connection each.
        async fn run(&self, callers: usize, prefix: &str, accounts: Range<usize>) -> Duration {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for caller in 0..callers {
                let connections = Arc::clone(&self.connections);
                let (accounts, prefix) = (accounts.clone(), prefix.to_owned());
                tasks.push(tokio::spawn(async move {
                    let (client, statement) = &connections[caller];
                    for account in (accounts.start + caller..accounts.end).step_by(callers) {
                        let id = format!("{prefix}-{account}");
                        for version in 1..=(1 + DEPOSITS) as i64 {
                            let inserted = client
                                .execute(statement, &[&id, &version, &eda::Uuid::now_v7()])
                                .await
                                .expect("append");
                            assert_eq!(inserted, 1);
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.expect("caller");
            }
            start.elapsed()
        }
    }

    /// The bank account again, taking a snapshot every 100 events.
    mod snap {
        use eda::prelude::*;

        #[command]
        #[derive(Debug, Clone)]
        pub struct Open {
            #[aggregate_id]
            pub id: String,
        }

        #[command]
        #[derive(Debug, Clone)]
        pub struct Deposit {
            #[aggregate_id]
            pub id: String,
        }

        #[event(name = "bench.Opened")]
        #[derive(Debug)]
        pub struct Opened;

        #[event(name = "bench.Deposited")]
        #[derive(Debug)]
        pub struct Deposited;

        #[derive(Debug, Default, eda::serde::Serialize, eda::serde::Deserialize)]
        #[serde(crate = "eda::serde")]
        pub struct Long {
            open: bool,
            balance: u64,
        }

        #[aggregate(error = std::convert::Infallible, snapshot_every = 100)]
        impl Long {
            #[handle]
            fn open(&self, _: Open) -> Result<Opened, std::convert::Infallible> {
                Ok(Opened)
            }
            #[handle]
            fn deposit(&self, _: Deposit) -> Result<Deposited, std::convert::Infallible> {
                Ok(Deposited)
            }
            #[apply]
            fn opened(&mut self, _: &Opened) {
                self.open = true;
            }
            #[apply]
            fn deposited(&mut self, _: &Deposited) {
                self.balance += 1;
            }
        }
    }
}
