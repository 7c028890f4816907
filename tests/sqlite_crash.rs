//! Crash safety of `SqliteStore`: a child process appends in a loop and is killed
//! with SIGKILL; after reopening, every append it acknowledged is there exactly
//! once, each append is all-or-nothing, and the store opens cleanly.
//!
//! The child is this test binary itself, started with `--ignored --exact child`.

#![cfg(all(feature = "sqlite", unix))]
#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
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
/// acknowledged append. Only runs when the parent starts it.
#[tokio::test]
#[ignore = "started by appends_acknowledged_before_sigkill_survive"]
async fn child() {
    let Ok(path) = std::env::var("EDA_CRASH_DB") else {
        return;
    };
    let store = SqliteStore::open(&path).await.expect("open");
    let mut stdout = std::io::stdout();
    for n in 0.. {
        store
            .append(STREAM, n * PER_APPEND, batch(n), &Metadata::default())
            .await
            .expect("append");
        writeln!(stdout, "ok {n}")
            .and_then(|()| stdout.flush())
            .expect("report");
    }
}

#[tokio::test]
async fn appends_acknowledged_before_sigkill_survive() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let path = dir.path().join(format!("crash-{round}.db"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EDA_CRASH_DB", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let target = 100 + round * 37;
        let mut acknowledged = BTreeSet::new();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("ok ") {
                acknowledged.insert(n.parse::<u64>().unwrap());
            }
            if acknowledged.len() >= target {
                break;
            }
        }
        assert_eq!(
            acknowledged.len(),
            target,
            "the child stopped before it was killed"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = SqliteStore::open(&path)
            .await
            .expect("the store opens cleanly after a kill");
        let events = store.read_stream(STREAM, 0).await.unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "versions without gaps"
        );
        // Per append: how many of its events are stored.
        let mut parts: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        for event in &events {
            let payload: serde_json::Value = serde_json::from_str(&event.payload).unwrap();
            *parts
                .entry(payload["append"].as_u64().unwrap())
                .or_default() += 1;
        }
        for n in &acknowledged {
            assert_eq!(
                parts.get(n),
                Some(&PER_APPEND),
                "acknowledged append {n} is stored once, whole"
            );
        }
        let last_acknowledged = acknowledged.last().copied().unwrap_or(0);
        for (n, count) in &parts {
            assert_eq!(*count, PER_APPEND, "append {n} is all-or-nothing");
            assert!(*n <= last_acknowledged + 1, "append {n} was never sent");
        }
    }
}
