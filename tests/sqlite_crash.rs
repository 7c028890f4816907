//! Crash safety of `SqliteStore`: a child process appends in a loop and is killed
//! with SIGKILL; after reopening, every append it acknowledged is there exactly
//! once, each append is all-or-nothing, nothing unsent is stored, and the store
//! opens cleanly. The control runs a child that reports each append before making
//! it (acknowledging too early): the checker must find an acknowledged append
//! missing.
//!
//! The child is this test binary itself, started with `--ignored --exact child`.

#![cfg(unix)]
#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use eda::prelude::*;
use eda::Metadata;
use eda_test::appends::{batch, check, PER_APPEND, STREAM};

/// The child: appends forever, printing `eda-ack <append number>` after each
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
            writeln!(stdout, "eda-ack {n}")
                .and_then(|()| stdout.flush())
                .expect("report");
        }
        store
            .append(STREAM, n * PER_APPEND, batch(n), &Metadata::default())
            .await
            .expect("append");
        if !early {
            writeln!(stdout, "eda-ack {n}")
                .and_then(|()| stdout.flush())
                .expect("report");
        }
    }
}

/// Runs a child on `path` until it has acknowledged `target` appends, then kills
/// it with SIGKILL. Returns every append it acknowledged before it died.
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
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // A line the kill cut short parses as nothing, or as an earlier number.
    let read = |line: std::io::Result<String>, acknowledged: &mut BTreeSet<u64>| {
        let line = line.unwrap_or_default();
        if let Some(n) = line
            .split_once("eda-ack ")
            .and_then(|(_, n)| n.parse().ok())
        {
            acknowledged.insert(n);
        }
    };
    for line in lines.by_ref() {
        read(line, &mut acknowledged);
        if acknowledged.len() >= target {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        acknowledged.len() >= target,
        "the child stopped before it was killed"
    );
    // The child went on appending until the kill landed: what it acknowledged
    // meanwhile is still in the pipe, and counts as acknowledged.
    for line in lines {
        read(line, &mut acknowledged);
    }
    acknowledged
}

#[tokio::test]
async fn appends_acknowledged_before_sigkill_survive() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let path = dir.path().join(format!("crash-{round}.db"));
        let acknowledged = run_and_kill(&path, 100 + round * 37, false);
        // The child sends in order: at most the append after the last acknowledged
        // one was in flight.
        let in_flight = acknowledged.last().map_or(0, |n| n + 1);
        if let Err(e) = check(&path, &acknowledged, Some(in_flight)).await {
            panic!(
                "{e}; acknowledged {:?}..{:?}",
                acknowledged.first(),
                acknowledged.last()
            );
        }
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
        let in_flight = acknowledged.last().map_or(0, |n| n + 1);
        if let Err(violation) = check(&path, &acknowledged, Some(in_flight)).await {
            assert!(violation.contains("is missing"), "{violation}");
            return;
        }
    }
    panic!("the checker never caught an append acknowledged before it was made");
}
