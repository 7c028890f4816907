//! Fault tests of `PostgresStore`: appenders whose connections are killed
//! (`pg_terminate_backend`) while they append. Each call is recorded as ok (acknowledged) or unknown (failed with
//! the connection: it may or may not have committed); every ok append must be
//! stored once and whole, every unknown one whole or not at all, nothing else. The
//! control appends the same events with one statement per event, the bug an
//! appender without a transaction would have: the kills must leave a partial append.
//! Needs `EDA_TEST_POSTGRES_URL`, as `postgres_store.rs`.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eda::prelude::*;
use eda::{Metadata, PostgresOptions, StreamId};
use eda_test::postgres::TestDb;

const PER_APPEND: usize = 3;
const APPENDERS: usize = 4;

#[derive(Default)]
struct History {
    ok: Vec<(String, u64)>,
    /// `OutcomeUnknown`: may be stored, whole.
    unknown: Vec<(String, u64)>,
    /// Any other error: must not be stored.
    failed: Vec<(String, u64)>,
}

fn batch(appender: usize, n: u64) -> Vec<eda::NewEvent> {
    (0..PER_APPEND)
        .map(|part| {
            eda_test::new_event(
                "Tick",
                &format!(r#"{{"appender":{appender},"n":{n},"part":{part}}}"#),
            )
        })
        .collect()
}

/// Kills every backend named `application` a few times per millisecond-ish,
/// until `stop` is set.
async fn killer(url: String, application: &'static str, stop: Arc<AtomicUsize>) {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    while stop.load(Ordering::SeqCst) == 0 {
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&application],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// Checks the store against the history; `Err` names the first violation.
async fn check(store: &PostgresStore, history: &History) -> Result<(), String> {
    let events = store
        .read_all(0, 1_000_000)
        .await
        .map_err(|e| e.to_string())?;
    let mut parts: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for event in &events {
        let payload: serde_json::Value =
            serde_json::from_str(&event.payload).map_err(|e| e.to_string())?;
        let n = payload["n"].as_u64().unwrap_or(u64::MAX);
        *parts.entry((event.aggregate_id.clone(), n)).or_default() += 1;
    }
    for key in &history.ok {
        if parts.get(key) != Some(&PER_APPEND) {
            return Err(format!(
                "acknowledged append {key:?} is missing or partial: {:?}",
                parts.get(key)
            ));
        }
    }
    for (key, count) in &parts {
        if *count != PER_APPEND {
            return Err(format!(
                "append {key:?} is partly stored ({count} of {PER_APPEND})"
            ));
        }
        if history.failed.contains(key) {
            return Err(format!(
                "append {key:?} failed with a definite error but is stored"
            ));
        }
        if !history.ok.contains(key) && !history.unknown.contains(key) {
            return Err(format!("append {key:?} was never made but is stored"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_survive_killed_connections_whole_or_not_at_all() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let url = format!("{}?application_name=eda-fault", db.url);
    let store = PostgresStore::connect_with(&url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap();
    let stop = Arc::new(AtomicUsize::new(0));
    let killing = tokio::spawn(killer(db.url.clone(), "eda-fault", Arc::clone(&stop)));
    let mut appenders = Vec::new();
    for appender in 0..APPENDERS {
        let store = store.clone();
        appenders.push(tokio::spawn(async move {
            let id = format!("a{appender}");
            let stream = StreamId {
                aggregate_type: "Fault",
                aggregate_id: &id,
            };
            let mut history = History::default();
            for n in 0..60u64 {
                let version = loop {
                    match store.read_stream(stream, 0).await {
                        Ok(events) => break events.len() as u64,
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                };
                match store
                    .append(stream, version, batch(appender, n), &Metadata::default())
                    .await
                {
                    Ok(_) => history.ok.push((id.clone(), n)),
                    Err(StoreError::Conflict { .. }) => {
                        panic!("one appender per stream cannot conflict")
                    }
                    Err(StoreError::OutcomeUnknown { .. }) => history.unknown.push((id.clone(), n)),
                    Err(_) => history.failed.push((id.clone(), n)),
                }
            }
            history
        }));
    }
    let mut history = History::default();
    for appender in appenders {
        let h = appender.await.unwrap();
        history.ok.extend(h.ok);
        history.unknown.extend(h.unknown);
        history.failed.extend(h.failed);
    }
    stop.store(1, Ordering::SeqCst);
    killing.await.unwrap();
    assert!(
        !history.unknown.is_empty(),
        "no append was cut off mid-flight (OutcomeUnknown): the run proves nothing"
    );
    check(&db.store, &history).await.unwrap();
    eprintln!(
        "{} appends acknowledged, {} cut off (outcome unknown), {} refused before sending",
        history.ok.len(),
        history.unknown.len(),
        history.failed.len()
    );
    drop(store);
    db.drop_schema().await;
}

/// Control: one statement per event, as an appender without a transaction would
/// do. The kills must leave some append partly stored, and the checker says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_appending_event_by_event_is_caught() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let stop = Arc::new(AtomicUsize::new(0));
    let killing = tokio::spawn(killer(
        db.url.clone(),
        "eda-fault-control",
        Arc::clone(&stop),
    ));
    let mut history = History::default();
    let mut violation = None;
    'rounds: for n in 0..400u64 {
        let url = format!("{}?application_name=eda-fault-control", db.url);
        let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
        else {
            continue;
        };
        tokio::spawn(connection);
        let id = "c0".to_string();
        let mut failed = false;
        for (part, event) in batch(0, n).into_iter().enumerate() {
            let inserted = client
                .execute(
                    &format!(
                        "INSERT INTO {}.eda_events (position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata)
                         VALUES ((pg_current_xact_id()::text::bigint << 20) | 1, $1, 'Fault', $2, $3, 'Tick', 1, $4::text::jsonb, '{{}}')",
                        db.schema
                    ),
                    &[&event.event_id, &id, &(n as i64 * 3 + part as i64 + 1), &event.payload],
                )
                .await;
            if inserted.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            history.unknown.push((id.clone(), n));
            if let Err(v) = check(&db.store, &history).await {
                violation = Some(v);
                break 'rounds;
            }
        } else {
            history.ok.push((id.clone(), n));
        }
    }
    stop.store(1, Ordering::SeqCst);
    killing.await.unwrap();
    let violation =
        violation.expect("the kills never left a partial append: the control proves nothing");
    assert!(violation.contains("partly stored"), "{violation}");
    db.drop_schema().await;
}
