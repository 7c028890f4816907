//! Crash safety of PostgreSQL read models: a projector process catching up on
//! 20,000 events is killed at named crash points (after the handlers ran,
//! before the commit; right after the commit) and with SIGKILL at random
//! moments, five times each, restarting after each; the read model then equals
//! a clean full rebuild, with every event applied exactly once. The control
//! keeps the checkpoint in a transaction of its own (`EDA_BROKEN`), crashes
//! between the two commits, and must show events applied twice.
//!
//! The child is this test binary itself, started with `--ignored --exact child`;
//! the events are in the test's schema, each read model in a schema of its own.
//! Needs `EDA_TEST_POSTGRES_URL`.

#![cfg(unix)]
#![allow(missing_docs)]

use std::process::{Child, ExitStatus};
use std::time::Duration;

use eda::prelude::*;
use eda::tokio_postgres::Client;
use eda::{PostgresOptions, PostgresStore};
use eda_test::crash::{self, crash_at};
use eda_test::ledger::{self, LedgerRows};
use eda_test::ledger_pg::{self, LedgerPg};
use eda_test::postgres::TestDb;

const ACCOUNTS: usize = 200;
const DEPOSITS: usize = 99;
const EVENTS: usize = ACCOUNTS * (DEPOSITS + 1);

/// The child: projects the whole log into the read schema, then exits.
#[tokio::test]
#[ignore = "started by the crash tests"]
async fn child() {
    let (Ok(url), Ok(events), Ok(read), Ok(head)) = (
        std::env::var("EDA_CRASH_URL"),
        std::env::var("EDA_CRASH_EVENTS"),
        std::env::var("EDA_CRASH_READ"),
        std::env::var("EDA_CRASH_HEAD"),
    ) else {
        return;
    };
    let options = PostgresOptions::new().schema(events);
    let store = PostgresStore::connect_with(&url, options).await;
    let app = App::new(store.expect("connect to the events"));
    let builder = app.project(LedgerPg).postgres(&url).schema(read);
    let projection = builder.start().await.expect("start");
    let head = head.parse().unwrap();
    projection
        .wait_for(Some(head), Duration::from_secs(300))
        .await
        .expect("caught up");
}

struct Log {
    db: TestDb,
    client: Client,
    /// The positions of the events, in order.
    positions: Vec<u64>,
    rebuilt: LedgerRows,
}

impl Log {
    /// 20,000 events, and the ledger a clean run builds from them.
    async fn new() -> Option<Log> {
        let db = TestDb::new().await?;
        assert_eq!(
            ledger::fill(&db.store, ACCOUNTS, DEPOSITS).await,
            EVENTS as u64
        );
        let client = db.connect().await;
        let rows = client
            .query("SELECT position FROM eda_events ORDER BY position", &[])
            .await
            .unwrap();
        let positions: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        let mut log = Log {
            db,
            client,
            positions,
            rebuilt: LedgerRows::default(),
        };
        let clean = log.read_schema("clean").await;
        assert!(log.run_child(&clean, &[]).success());
        log.rebuilt = log.rows(&clean).await;
        assert_eq!(log.rebuilt.applications.len(), EVENTS);
        Some(log)
    }

    /// A read model's schema, with the ledger's tables.
    async fn read_schema(&self, name: &str) -> String {
        let schema = self.db.other_schema(name);
        ledger_pg::create(&self.client, &schema).await.unwrap();
        schema
    }

    async fn rows(&self, schema: &str) -> LedgerRows {
        ledger_pg::read(&self.client, schema).await.unwrap()
    }

    /// The ledger's checkpoint in `schema` (0 before its first commit).
    async fn checkpoint(&self, schema: &str) -> u64 {
        let query = format!("SELECT position FROM {schema}.eda_projections WHERE name = 'ledger'");
        let row = self.client.query_opt(&query, &[]).await.ok().flatten();
        row.map_or(0, |row| row.get::<_, i64>(0) as u64)
    }

    /// Starts a child projecting into `read`, with `env`.
    fn spawn_child(&self, read: &str, env: &[(&str, String)]) -> Child {
        let mut command = crash::child(env.iter().cloned());
        command
            .env("EDA_CRASH_URL", &self.db.url)
            .env("EDA_CRASH_EVENTS", &self.db.schema)
            .env("EDA_CRASH_READ", read)
            .env("EDA_CRASH_HEAD", self.positions.last().unwrap().to_string());
        command.spawn().unwrap()
    }

    /// Runs a child with `env` to its end.
    fn run_child(&self, read: &str, env: &[(&str, String)]) -> ExitStatus {
        self.spawn_child(read, env).wait().unwrap()
    }

    /// Five crashes of `env`'s kind, then a run to the end: the rows it leaves.
    async fn crash_five_times(
        &self,
        name: &str,
        env: impl Fn() -> Vec<(&'static str, String)>,
    ) -> LedgerRows {
        let read = self.read_schema(name).await;
        for round in 0..5 {
            let status = self.run_child(&read, &env());
            assert!(!status.success(), "{name}: round {round} did not crash");
        }
        assert!(self.run_child(&read, &[]).success());
        self.rows(&read).await
    }

    fn assert_rebuilt(&self, name: &str, rows: &LedgerRows) {
        rows.assert_rebuilt(name, &self.rebuilt);
    }
}

/// At most 8 of the 40 batches per crash, so five crashes never finish the log.
const CRASH_WITHIN: u32 = 8;

#[tokio::test]
async fn crashes_at_named_points_apply_every_event_once() {
    let Some(log) = Log::new().await else {
        return;
    };
    for point in ["projection.before_commit", "projection.after_commit"] {
        let name = point.replace('.', "_");
        let rows = log
            .crash_five_times(&name, crash_at(point, CRASH_WITHIN))
            .await;
        log.assert_rebuilt(point, &rows);
    }
    log.db.drop_schema().await;
}

/// SIGKILL once the checkpoint has passed a random event in the first half of
/// the log: somewhere inside a batch, never after the last one.
#[tokio::test]
async fn sigkill_at_random_moments_applies_every_event_once() {
    let Some(log) = Log::new().await else {
        return;
    };
    let read = log.read_schema("sigkill").await;
    let done = |checkpoint: u64| log.positions.partition_point(|p| *p <= checkpoint);
    for round in 0..5 {
        let from = done(log.checkpoint(&read).await);
        // Half the log stays ahead of every kill, so that however late this
        // process sees the checkpoint pass the target, the child is not done.
        let last = EVENTS / 2;
        assert!(from < last, "round {round}: the runs got too far");
        // Within this round's share of what is left, so five rounds fit.
        let share = (last - from) / (5 - round);
        let target = log.positions[from + rand::random::<u32>() as usize % share];
        let mut child = log.spawn_child(&read, &[]);
        while log.checkpoint(&read).await < target {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        child.kill().unwrap(); // SIGKILL
        assert!(
            !child.wait().unwrap().success(),
            "round {round}: killed after the end"
        );
    }
    assert!(log.run_child(&read, &[]).success());
    log.assert_rebuilt("sigkill", &log.rows(&read).await);
    log.db.drop_schema().await;
}

/// Control: with the checkpoint committed apart from the writes, a crash
/// between the two commits applies the last batch again after the restart.
#[tokio::test]
async fn control_a_checkpoint_apart_from_the_writes_applies_events_twice() {
    let Some(log) = Log::new().await else {
        return;
    };
    let crash = crash_at("projection.between_commits", CRASH_WITHIN);
    let rows = log
        .crash_five_times("control", || {
            let mut env = crash();
            env.push(("EDA_BROKEN", "projection.checkpoint_apart".to_owned()));
            env
        })
        .await;
    assert!(
        rows.applied_twice() > 0,
        "the control applied nothing twice"
    );
    eprintln!(
        "control: {} events applied twice after crashes between the commits",
        rows.applied_twice()
    );
    log.db.drop_schema().await;
}
