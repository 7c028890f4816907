//! Crash safety of `SqliteStore`: a child process appends in a loop and is killed
//! with SIGKILL; after reopening, every append it acknowledged is there exactly
//! once, each append is all-or-nothing, nothing unsent is stored, and the store
//! opens cleanly. The control runs a child that reports each append before making
//! it (acknowledging too early): the checker must find an acknowledged append
//! missing.
//!
//! The child is this test binary itself, started with `--ignored --exact child`.

#![cfg(all(feature = "sqlite", unix))]
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use eda::prelude::*;
use eda::{Metadata, NewEvent, StreamId};

const STREAM: StreamId<'static> = StreamId {
    aggregate_type: "Crash",
    aggregate_id: "loop",
};
const PER_APPEND: u64 = 3;

fn batch(n: u64) -> Vec<NewEvent> {
    (0..PER_APPEND)
        .map(|i| NewEvent {
            event_id: eda::__private::new_event_id(),
            name: "Tick".into(),
            version: 1,
            payload: format!(r#"{{"append":{n},"part":{i}}}"#),
        })
        .collect()
}

/// The child: appends forever, printing `ok <append number>` after each
/// acknowledged append (before it, with `EDA_CRASH_EARLY_ACK`). Only runs when a
/// parent starts it.
#[tokio::test]
#[ignore = "started by the crash tests"]
async fn child() {
    let Ok(path) = std::env::var("EDA_CRASH_DB") else {
        return;
    };
    let early = std::env::var("EDA_CRASH_EARLY_ACK").is_ok();
    let store = SqliteStore::open(&path).await.expect("open");
    let mut stdout = std::io::stdout();
    for n in 0.. {
        if early {
            writeln!(stdout, "ok {n}")
                .and_then(|()| stdout.flush())
                .expect("report");
        }
        store
            .append(STREAM, n * PER_APPEND, batch(n), &Metadata::default())
            .await
            .expect("append");
        if !early {
            writeln!(stdout, "ok {n}")
                .and_then(|()| stdout.flush())
                .expect("report");
        }
    }
}

/// Runs a child on `path` until it has acknowledged `target` appends, then kills
/// it with SIGKILL. Returns the acknowledged appends.
fn run_and_kill(path: &Path, target: usize, early_ack: bool) -> BTreeSet<u64> {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--ignored",
            "--exact",
            "child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDA_CRASH_DB", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if early_ack {
        command.env("EDA_CRASH_EARLY_ACK", "1");
    }
    let mut child = command.spawn().unwrap();
    let mut acknowledged = BTreeSet::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("ok ") {
            acknowledged.insert(n.parse::<u64>().unwrap());
        }
        if acknowledged.len() >= target {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        acknowledged.len(),
        target,
        "the child stopped before it was killed"
    );
    acknowledged
}

/// Checks the store against what was acknowledged; `Err` names the violation.
async fn check(path: &Path, acknowledged: &BTreeSet<u64>) -> Result<(), String> {
    let store = SqliteStore::open(path)
        .await
        .map_err(|e| format!("the store does not open: {e}"))?;
    let events = store
        .read_stream(STREAM, 0)
        .await
        .map_err(|e| e.to_string())?;
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    if versions != (1..=versions.len() as u64).collect::<Vec<_>>() {
        return Err(format!("versions with gaps: {versions:?}"));
    }
    let mut parts: BTreeMap<u64, u64> = BTreeMap::new();
    for event in &events {
        let payload: serde_json::Value =
            serde_json::from_str(&event.payload).map_err(|e| e.to_string())?;
        *parts
            .entry(payload["append"].as_u64().unwrap_or(u64::MAX))
            .or_default() += 1;
    }
    for n in acknowledged {
        if parts.get(n) != Some(&PER_APPEND) {
            return Err(format!(
                "acknowledged append {n} is missing or partial: {:?}",
                parts.get(n)
            ));
        }
    }
    // The child sends appends in order, so at most the one after the last
    // acknowledged may be stored without an acknowledgement.
    let next = acknowledged.last().map_or(0, |n| n + 1);
    for (n, count) in &parts {
        if *count != PER_APPEND {
            return Err(format!(
                "append {n} is partly stored ({count} of {PER_APPEND} events)"
            ));
        }
        if *n > next {
            return Err(format!("append {n} was never sent but is stored"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn appends_acknowledged_before_sigkill_survive() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let path = dir.path().join(format!("crash-{round}.db"));
        let acknowledged = run_and_kill(&path, 100 + round * 37, false);
        check(&path, &acknowledged).await.unwrap();
    }
}

/// Control: a child that acknowledges before it appends loses acknowledged appends
/// to the kill, and the checker says so. (A run where the kill landed after the
/// early-acknowledged append committed would prove nothing, so up to 5 tries.)
#[tokio::test]
async fn control_acknowledging_before_appending_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    for attempt in 0..5 {
        let path = dir.path().join(format!("control-{attempt}.db"));
        let acknowledged = run_and_kill(&path, 50, true);
        if let Err(violation) = check(&path, &acknowledged).await {
            assert!(violation.contains("is missing"), "{violation}");
            return;
        }
    }
    panic!("the checker never caught an append acknowledged before it was made");
}
