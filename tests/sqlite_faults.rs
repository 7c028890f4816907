//! Fault tests of `SqliteStore` at named crash points (feature `failpoints`), in the
//! manner of Jepsen: a child process appends and reports each call as `ok` once
//! acknowledged; it dies at the armed point, leaving one call `unknown`. The
//! checker then requires every `ok` append stored exactly once, every append
//! all-or-nothing and nothing that was never sent. The control arms a point that
//! acknowledges before committing (the bug switched on): the checker must object.

#![cfg(unix)]
#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use eda::prelude::*;
use eda::Metadata;
use eda_test::appends::{batch, check, PER_APPEND, STREAM};

/// The child: appends until the armed point kills it, reporting `eda-sent n` before and
/// `eda-ack n` after each append.
#[tokio::test]
#[ignore = "started by the fault tests"]
async fn child() {
    let Ok(path) = std::env::var("EDA_FAULT_DB") else {
        return;
    };
    let store = SqliteStore::open(&path).await.expect("open");
    let mut out = std::io::stdout();
    for n in 0u64.. {
        let events = batch(n);
        writeln!(out, "eda-sent {n}")
            .and_then(|()| out.flush())
            .expect("report");
        store
            .append(STREAM, n * PER_APPEND, events, &Metadata::default())
            .await
            .expect("append");
        writeln!(out, "eda-ack {n}")
            .and_then(|()| out.flush())
            .expect("report");
    }
}

/// What the child reported: acknowledged appends, and the one in flight.
struct History {
    ok: BTreeSet<u64>,
    unknown: Option<u64>,
}

fn run_child(path: &std::path::Path, failpoint: &str, after: u32) -> History {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDA_FAULT_DB", path)
        .env("EDA_FAILPOINT", failpoint)
        .env("EDA_FAILPOINT_AFTER", after.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut ok, mut sent) = (BTreeSet::new(), BTreeSet::new());
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((_, n)) = line.split_once("eda-sent ") {
            sent.insert(n.parse::<u64>().unwrap());
        } else if let Some((_, n)) = line.split_once("eda-ack ") {
            ok.insert(n.parse::<u64>().unwrap());
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must die at the failpoint");
    let unknown: Vec<u64> = sent.difference(&ok).copied().collect();
    assert!(
        unknown.len() <= 1,
        "one call at most is in flight: {unknown:?}"
    );
    assert!(ok.len() >= 5, "the child appended before it died: {ok:?}");
    History {
        ok,
        unknown: unknown.first().copied(),
    }
}

#[tokio::test]
async fn a_crash_before_the_commit_loses_only_the_unacknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("before.db");
    let history = run_child(&path, "sqlite.before_commit", 20);
    let stored = check(&path, &history.ok, history.unknown).await.unwrap();
    let unknown = history.unknown.expect("the append being committed");
    assert!(
        !stored.contains_key(&unknown),
        "nothing of an uncommitted append is stored"
    );
}

#[tokio::test]
async fn a_crash_after_the_commit_keeps_the_unacknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("after.db");
    let history = run_child(&path, "sqlite.after_commit", 20);
    let stored = check(&path, &history.ok, history.unknown).await.unwrap();
    let unknown = history
        .unknown
        .expect("the append committed but not acknowledged");
    assert_eq!(
        stored.get(&unknown),
        Some(&PER_APPEND),
        "a committed append is kept whole"
    );
}

/// Control: a store that acknowledges before committing loses an acknowledged
/// append at the crash, and the checker says so.
#[tokio::test]
async fn control_acknowledging_before_the_commit_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.db");
    let history = run_child(&path, "sqlite.ack_before_commit", 20);
    let verdict = check(&path, &history.ok, history.unknown).await;
    let violation = verdict.expect_err("the checker must report the lost acknowledged append");
    assert!(violation.contains("is missing"), "{violation}");
}
