//! `SqliteStore` against the conformance suite, and what only a file can show:
//! reopening, schema versions, corrupt rows.

#![cfg(feature = "sqlite")]
#![allow(missing_docs)]

#[path = "common/bank_load.rs"]
mod bank_load;
mod common;

#[path = "../examples/domain/bank.rs"]
mod bank;

use bank::{Account, DepositMoney, OpenAccount};
use common::conformance;
use eda::prelude::*;
use eda::{SqliteOptions, Synchronous};

/// A fresh database in its own temporary directory (kept alive by the guard).
async fn fresh() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    (dir, store)
}

/// Runs a conformance check on a fresh database.
async fn with_store<F: std::future::Future<Output = ()>>(check: impl FnOnce(SqliteStore) -> F) {
    let (_dir, store) = fresh().await;
    check(store).await;
}

conformance::conformance_tests!(with_store);

#[tokio::test]
async fn events_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.db");
    {
        let app = App::new(SqliteStore::open(&path).await.unwrap());
        app.execute(OpenAccount {
            account: "a".into(),
            owner: "ada".into(),
        })
        .await
        .unwrap();
        app.execute(DepositMoney {
            account: "a".into(),
            amount: 7,
        })
        .await
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let app = App::new(store.clone());
    let (account, version) = app
        .load_with_version::<Account>(&"a".to_string())
        .await
        .unwrap();
    assert_eq!((account.balance, version), (7, 2));
    assert_eq!(
        app.execute(DepositMoney {
            account: "a".into(),
            amount: 1
        })
        .await
        .unwrap()
        .version,
        3
    );
    let all = store.read_all(0, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(all[2].metadata.command.as_deref(), Some("DepositMoney"));
    let age = chrono::Utc::now().signed_duration_since(all[0].recorded_at);
    assert!(
        age.num_seconds().abs() < 60,
        "recorded_at is the time of the append: {}",
        all[0].recorded_at
    );
}

fn sql(path: &std::path::Path, statement: &str) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.execute_batch(statement).unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused_not_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(SqliteStore::open(&path).await.unwrap());
    sql(&path, "UPDATE eda_schema SET version = 99");
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::IncompatibleSchema {
                found: 99,
                supported: 3
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the database schema is version 99, newer than version 2 that this code knows"
    );
}

#[tokio::test]
async fn a_corrupt_row_is_a_typed_error_and_other_aggregates_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let app = App::new(store.clone());
    for id in ["good", "bad"] {
        app.execute(OpenAccount {
            account: id.into(),
            owner: "ada".into(),
        })
        .await
        .unwrap();
    }
    sql(
        &path,
        "UPDATE eda_events SET payload = x'00ff' WHERE aggregate_id = 'bad'",
    );
    let fresh = App::new(store.clone());
    let err = fresh.load::<Account>(&"bad".to_string()).await.unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Store(StoreError::Corrupt { position: 2, .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("stored event at position 2 is corrupt: payload is not text"),
        "{err}"
    );
    assert_eq!(
        fresh
            .load::<Account>(&"good".to_string())
            .await
            .unwrap()
            .owner
            .as_deref(),
        Some("ada")
    );

    // Corrupt metadata: the reads that return it say so; replay does not read it.
    sql(
        &path,
        "UPDATE eda_events SET payload = '{\"owner\":\"bob\"}', metadata = 'not json' \
         WHERE aggregate_id = 'bad'",
    );
    let err = store
        .read_stream(common::stream("Account", "bad"), 0)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("stored event at position 2 is corrupt: metadata is not valid"),
        "{err}"
    );
    assert!(matches!(
        store.read_all(0, 10).await,
        Err(StoreError::Corrupt { position: 2, .. })
    ));
    let account = fresh.load::<Account>(&"bad".to_string()).await.unwrap();
    assert_eq!(account.owner.as_deref(), Some("bob"));

    // A payload that is not the event's shape is the same decode error as anywhere.
    sql(
        &path,
        "UPDATE eda_events SET metadata = '{}', payload = '[1,2]' WHERE aggregate_id = 'bad'",
    );
    let err = fresh.load::<Account>(&"bad".to_string()).await.unwrap_err();
    match err {
        LoadError::Decode(e) => assert_eq!(
            (e.position, e.name.as_str(), e.aggregate_id.as_str()),
            (2, "AccountOpened", "bad")
        ),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_database_is_in_wal_mode() {
    let (dir, store) = fresh().await;
    drop(store);
    let connection = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// 8 tasks x 50 commands on one aggregate through eight `App`s on one file: every
/// accepted command exactly once, versions without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_through_many_apps() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions::new().synchronous(Synchronous::Normal);
    let store = SqliteStore::open_with(dir.path().join("events.db"), options)
        .await
        .unwrap();
    bank_load::every_command_once_through_many_apps(store, 50).await;
}

/// A lone caller polls for its reply (yielding, so other tasks on its thread still
/// run) or sleeps until woken, as configured; the answers are the same.
#[tokio::test]
async fn replies_arrive_polling_or_sleeping() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    for window in [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_secs(5),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions::new()
            .synchronous(Synchronous::Normal)
            .poll_for_reply(window);
        let store = SqliteStore::open_with(dir.path().join("events.db"), options)
            .await
            .unwrap();
        // Another task on this single-threaded runtime, counting its turns.
        let (turns, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let ticker = tokio::spawn({
            let (turns, stop) = (Arc::clone(&turns), Arc::clone(&stop));
            async move {
                while !stop.load(Ordering::Relaxed) {
                    turns.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let app = App::new(store.clone());
        app.execute(OpenAccount {
            account: "a".into(),
            owner: "ada".into(),
        })
        .await
        .unwrap();
        let before = turns.load(Ordering::Relaxed);
        for _ in 0..50 {
            app.execute(DepositMoney {
                account: "a".into(),
                amount: 1,
            })
            .await
            .unwrap();
        }
        assert!(
            turns.load(Ordering::Relaxed) > before,
            "the other task never ran while {window:?} of polling"
        );
        stop.store(true, Ordering::Relaxed);
        ticker.await.unwrap();
        let (account, version) = App::new(store)
            .load_with_version::<Account>(&"a".to_string())
            .await
            .unwrap();
        assert_eq!((account.balance, version), (50, 51));
    }
}

#[tokio::test]
async fn unknown_names_and_newer_schemas_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let app = App::new(store.clone());
    for id in ["renamed", "newer", "good"] {
        app.execute(OpenAccount {
            account: id.into(),
            owner: "ada".into(),
        })
        .await
        .unwrap();
    }
    sql(
        &path,
        "UPDATE eda_events SET name = 'AccountClosed' WHERE aggregate_id = 'renamed'",
    );
    sql(
        &path,
        "UPDATE eda_events SET event_version = 9 WHERE aggregate_id = 'newer'",
    );
    let fresh = App::new(store);
    let expect = |id: &str, position: u64, check: fn(&eda::DecodeErrorKind) -> bool| {
        let fresh = fresh.clone();
        let id = id.to_string();
        async move {
            match fresh.load::<Account>(&id).await {
                Err(LoadError::Decode(e)) => {
                    assert!(check(&e.kind), "{e}");
                    assert_eq!(
                        (e.position, e.aggregate_id.as_str()),
                        (position, id.as_str())
                    );
                }
                other => panic!("expected a decode error for {id}, got {other:?}"),
            }
        }
    };
    expect("renamed", 1, |k| {
        matches!(k, eda::DecodeErrorKind::UnknownEvent)
    })
    .await;
    expect("newer", 2, |k| {
        matches!(k, eda::DecodeErrorKind::NewerVersion { known: 1 })
    })
    .await;
    assert!(fresh.load::<Account>(&"good".to_string()).await.is_ok());
}
