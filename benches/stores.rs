//! Command throughput on the durable stores, against a raw driver loop doing the
//! same writes in the same process. Run with `cargo bench --bench stores`
//! (SQLite), and `EDA_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo bench --bench stores --features postgres` for PostgreSQL too.
//!
//! Bank domain, 1,000 accounts x (1 open + 9 deposits) = 10,000 commands through
//! `App::execute`: sequentially, and from 16 concurrent callers on different
//! accounts. On PostgreSQL also: one account with 10,000 events, then 1,000 more
//! commands with the cache off and `snapshot_every = 100`.

#![allow(missing_docs)]

#[path = "../examples/domain/bank.rs"]
mod bank;

use std::time::{Duration, Instant};

use bank::{DepositMoney, OpenAccount};
use eda::prelude::*;
use eda::{SqliteOptions, Synchronous};

const ACCOUNTS: usize = 1_000;
const DEPOSITS: usize = 9;
const COMMANDS: usize = ACCOUNTS * (1 + DEPOSITS);
const CALLERS: usize = 16;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("eda store benchmark: {COMMANDS} commands per run (1,000 accounts x 10), commands/s");
    // EDA_BENCH_ONLY=normal runs SQLite NORMAL alone (for profiling).
    let only_normal = std::env::var("EDA_BENCH_ONLY").is_ok_and(|only| only == "normal");
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        if !only_normal || synchronous == Synchronous::Normal {
            rt.block_on(sqlite(synchronous));
        }
    }
    #[cfg(feature = "postgres")]
    match std::env::var("EDA_BENCH_POSTGRES_URL") {
        Ok(url) => rt.block_on(postgres::run(&url)),
        Err(_) => println!("PostgreSQL: skipped (set EDA_BENCH_POSTGRES_URL)"),
    }
}

fn report(name: &str, commands: usize, time: Duration, raw: Option<Duration>) {
    let per_second = commands as f64 / time.as_secs_f64();
    print!("{name:<58} {per_second:>9.0} commands/s");
    if let Some(raw) = raw {
        let raw_per_second = commands as f64 / raw.as_secs_f64();
        print!(
            "  (raw loop {raw_per_second:.0}/s, ratio {:.2})",
            per_second / raw_per_second
        );
    }
    println!();
}

/// 10,000 commands through `app`, from `callers` tasks on disjoint accounts.
async fn bank(app: &App, callers: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            for account in (caller..ACCOUNTS).step_by(callers) {
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

async fn sqlite(synchronous: Synchronous) {
    let label = match synchronous {
        Synchronous::Full => "FULL",
        _ => "NORMAL",
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = raw_sqlite(&dir.path().join("raw.db"), label);
    let open = |name: &str| {
        SqliteStore::open_with(
            dir.path().join(name),
            SqliteOptions::new().synchronous(synchronous),
        )
    };
    let sequential = bank(&App::new(open("seq.db").await.expect("open")), 1).await;
    report(
        &format!("SQLite {label}, sequential"),
        COMMANDS,
        sequential,
        Some(raw),
    );
    let concurrent = bank(&App::new(open("conc.db").await.expect("open")), CALLERS).await;
    report(
        &format!("SQLite {label}, {CALLERS} concurrent callers (group commit)"),
        COMMANDS,
        concurrent,
        Some(raw),
    );
}

/// The same writes as eda's append, one transaction per command, straight
/// through rusqlite: read the version, insert the event, upsert the version.
fn raw_sqlite(path: &std::path::Path, synchronous: &str) -> Duration {
    let mut connection = rusqlite::Connection::open(path).expect("open");
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
    let start = Instant::now();
    for account in 0..ACCOUNTS {
        let id = format!("acc-{account}");
        for version in 1..=(1 + DEPOSITS) as i64 {
            let tx = connection
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

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use eda::PostgresOptions;

    const LONG: usize = 10_000;
    const TAIL: usize = 1_000;

    pub async fn run(url: &str) {
        let schema = format!("eda_bench_{}", std::process::id());
        let raw = raw(url).await;
        let store = PostgresStore::connect_with(url, PostgresOptions::new().schema(&schema))
            .await
            .expect("connect");
        let sequential = bank(&App::new(store.clone()), 1).await;
        report("PostgreSQL, sequential", COMMANDS, sequential, Some(raw.0));
        let schema2 = format!("{schema}_c");
        let store2 = PostgresStore::connect_with(url, PostgresOptions::new().schema(&schema2))
            .await
            .expect("connect");
        let concurrent = bank(&App::new(store2), CALLERS).await;
        report(
            &format!("PostgreSQL, {CALLERS} concurrent callers"),
            COMMANDS,
            concurrent,
            Some(raw.1),
        );
        long_stream(url, &format!("{schema}_l")).await;
        drop_schemas(
            url,
            &[
                &schema,
                &schema2,
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
        let uncached = App::builder(store).cache_capacity(0).build().expect("app");
        let start = Instant::now();
        for _ in 0..TAIL {
            uncached
                .execute(snap::Deposit { id: "long".into() })
                .await
                .expect("deposit");
        }
        report(
            "PostgreSQL, 10,000-event stream, no cache, snapshot_every = 100",
            TAIL,
            start.elapsed(),
            None,
        );
    }

    /// The same one-statement append eda sends, through tokio-postgres directly:
    /// one transaction per command. (sequential, 16 concurrent) durations.
    async fn raw(url: &str) -> (Duration, Duration) {
        let schema = format!("eda_bench_{}_raw", std::process::id());
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
        let mut durations = Vec::new();
        for (round, callers) in [(0, 1), (1, CALLERS)] {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for caller in 0..callers {
                let (url, schema) = (url.to_owned(), schema.clone());
                tasks.push(tokio::spawn(async move {
                    let client = connect(&url).await;
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
                    for account in (caller..ACCOUNTS).step_by(callers) {
                        let id = format!("acc-{round}-{account}");
                        for version in 1..=(1 + DEPOSITS) as i64 {
                            let inserted = client
                                .execute(&statement, &[&id, &version, &eda::Uuid::now_v7()])
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
            durations.push(start.elapsed());
        }
        (durations[0], durations[1])
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
