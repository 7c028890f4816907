//! Crash safety of SQLite read models: a projector process catching up on 20,000
//! events is killed at named crash points (after the handlers ran, before the
//! commit; right after the commit) and with SIGKILL at random moments, five
//! times each, restarting after each; the read model then equals a clean full
//! rebuild, with every event applied exactly once. The control keeps the
//! checkpoint in a transaction of its own (`EDA_BROKEN`), crashes between the two
//! commits, and must show events applied twice.
//!
//! The child is this test binary itself, started with `--ignored --exact child`.

#![cfg(unix)]
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use eda::prelude::*;
use eda_test::crash::{self, crash_at};
use eda_test::ledger::{self, Ledger, LedgerRows};

const ACCOUNTS: usize = 200;
const DEPOSITS: usize = 99;
const EVENTS: u64 = (ACCOUNTS * (DEPOSITS + 1)) as u64;
/// The lease of every runner here, unless `EDA_CRASH_LEASE_MS` says otherwise.
const LEASE: Duration = Duration::from_millis(300);

/// The child: projects the whole log into the read database, then exits.
#[tokio::test]
#[ignore = "started by the crash tests"]
async fn child() {
    let (Ok(events), Ok(read)) = (
        std::env::var("EDA_CRASH_EVENTS"),
        std::env::var("EDA_CRASH_READ"),
    ) else {
        return;
    };
    let app = App::new(SqliteStore::open(&events).await.expect("open the events"));
    // A crashed child's lease expires soon: the next one takes over quickly.
    let lease = std::env::var("EDA_CRASH_LEASE_MS").map_or(LEASE, |ms| {
        Duration::from_millis(ms.parse().expect("milliseconds"))
    });
    let projection = app
        .project(Ledger)
        .database(&read)
        .lease(lease)
        .start()
        .await
        .expect("start");
    projection
        .wait_for(Some(EVENTS), Duration::from_secs(300))
        .await
        .expect("caught up");
}

/// Starts a child with `env`.
fn spawn_child(events: &Path, read: &Path, env: &[(&str, String)]) -> Child {
    let mut command = crash::child(env.iter().cloned());
    command.env("EDA_CRASH_EVENTS", events);
    command.env("EDA_CRASH_READ", read).spawn().unwrap()
}

/// Runs a child with `env` to its end.
fn run_child(events: &Path, read: &Path, env: &[(&str, String)]) -> ExitStatus {
    spawn_child(events, read, env).wait().unwrap()
}

/// The ledger's checkpoint in the read database (0 before its first commit).
fn checkpoint(read: &Path) -> u64 {
    let connection = rusqlite::Connection::open(read).unwrap();
    let position: Option<i64> = connection
        .query_row(
            "SELECT position FROM eda_projections WHERE name = 'ledger'",
            (),
            |row| row.get(0),
        )
        .ok();
    position.unwrap_or(0) as u64
}

struct Log {
    _dir: tempfile::TempDir,
    events: PathBuf,
    rebuilt: LedgerRows,
}

impl Log {
    /// 20,000 events, and the ledger a clean run builds from them.
    async fn new() -> Log {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.db");
        let store = SqliteStore::open(&events).await.unwrap();
        assert_eq!(ledger::fill(&store, ACCOUNTS, DEPOSITS).await, EVENTS);
        store.close().await.unwrap();
        let clean = dir.path().join("clean.db");
        ledger::create(&clean).unwrap();
        assert!(run_child(&events, &clean, &[]).success());
        let rebuilt = ledger::read(&clean).unwrap();
        assert_eq!(rebuilt.applications.len() as u64, EVENTS);
        Log {
            events,
            rebuilt,
            _dir: dir,
        }
    }

    fn read_db(&self, name: &str) -> PathBuf {
        let path = self.events.with_file_name(format!("{name}.db"));
        ledger::create(&path).unwrap();
        path
    }

    /// Five crashes of `env`'s kind, then a run to the end: the rows it leaves.
    fn crash_five_times(
        &self,
        name: &str,
        env: impl Fn() -> Vec<(&'static str, String)>,
    ) -> LedgerRows {
        let read = self.read_db(name);
        for round in 0..5 {
            let status = run_child(&self.events, &read, &env());
            assert!(!status.success(), "{name}: round {round} did not crash");
        }
        assert!(run_child(&self.events, &read, &[]).success());
        ledger::read(&read).unwrap()
    }

    fn assert_rebuilt(&self, name: &str, rows: &LedgerRows) {
        rows.assert_rebuilt(name, &self.rebuilt);
    }
}

/// At most 8 of the 40 batches per crash, so five crashes never finish the log.
const CRASH_WITHIN: u32 = 8;

#[tokio::test]
async fn crashes_at_named_points_apply_every_event_once() {
    let log = Log::new().await;
    for point in ["projection.before_commit", "projection.after_commit"] {
        let rows = log.crash_five_times(point, crash_at(point, CRASH_WITHIN));
        log.assert_rebuilt(point, &rows);
    }
}

/// SIGKILL once the checkpoint has passed a random position in the first half
/// of the log: somewhere inside a batch, never after the last one.
#[tokio::test]
async fn sigkill_at_random_moments_applies_every_event_once() {
    let log = Log::new().await;
    let read = log.read_db("sigkill");
    for round in 0..5u64 {
        let from = checkpoint(&read);
        // Half the log stays ahead of every kill, so that however late this
        // process sees the checkpoint pass the target, the child is not done.
        let last = EVENTS / 2;
        assert!(from < last, "round {round}: the runs got too far");
        // Within this round's share of what is left, so five rounds fit.
        let share = (last - from) / (5 - round);
        let target = from + 1 + rand::random::<u64>() % share;
        let mut child = spawn_child(&log.events, &read, &[]);
        while checkpoint(&read) < target {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL
        assert!(
            !child.wait().unwrap().success(),
            "round {round}: killed after the end"
        );
    }
    assert!(run_child(&log.events, &read, &[]).success());
    log.assert_rebuilt("sigkill", &ledger::read(&read).unwrap());
}

/// Control: with the checkpoint committed apart from the writes, a crash
/// between the two commits applies the last batch again after the restart.
#[tokio::test]
async fn control_a_checkpoint_apart_from_the_writes_applies_events_twice() {
    let log = Log::new().await;
    let point = "projection.between_commits";
    let crash = crash_at(point, CRASH_WITHIN);
    let rows = log.crash_five_times("control", || {
        let mut env = crash();
        env.push(("EDA_BROKEN", "projection.checkpoint_apart".to_owned()));
        env
    });
    assert!(
        rows.applied_twice() > 0,
        "the control applied nothing twice"
    );
}

/// Two instances: a child holds the read model and is killed mid-catch-up while
/// this process runs the same projection on standby; this one takes over once
/// the child's lease expires, goes on from the child's last commit, and the read
/// model equals a clean rebuild, every event applied once.
#[tokio::test]
async fn a_standby_instance_takes_over_from_a_killed_holder() {
    let log = Log::new().await;
    let read = log.read_db("two");
    // A lease that outlasts any page however loaded the machine, so the
    // holder keeps it for as long as it runs.
    let lease = [("EDA_CRASH_LEASE_MS", "3000".to_owned())];
    let mut holder = spawn_child(&log.events, &read, &lease);
    while checkpoint(&read) < 512 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let app = App::new(SqliteStore::open(&log.events).await.unwrap());
    let standby = app.project(Ledger).database(&read).lease(LEASE);
    let standby = standby.start().await.unwrap();
    eda_test::read_models::until("the second instance on standby", || {
        eda_test::read_models::is_standby(&standby.status().state)
    })
    .await;
    let target = EVENTS / 2;
    while checkpoint(&read) < target {
        std::thread::sleep(Duration::from_millis(1));
    }
    holder.kill().unwrap(); // SIGKILL
    assert!(!holder.wait().unwrap().success(), "killed after the end");
    assert_eq!(
        standby.status().applied,
        0,
        "it stood by while the holder ran"
    );
    let left_off = checkpoint(&read);
    standby
        .wait_for(Some(EVENTS), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(standby.status().applied, EVENTS - left_off);
    log.assert_rebuilt("two instances", &ledger::read(&read).unwrap());
}
