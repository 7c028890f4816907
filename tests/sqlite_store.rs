//! `SqliteStore` against the conformance suite, and what only a file can show:
//! reopening, schema versions, corrupt rows.

#![allow(missing_docs)]

use eda::prelude::*;
use eda::{SqliteOptions, SqliteSynchronous};
use eda_test::bank::{open_account, Account, DepositMoney, OpenAccount};

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

eda_test::conformance_tests!(with_store);

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

/// `close` with another connection reading the file: the write-ahead log cannot be
/// emptied, which is `CheckpointBlocked`, not a driver error; every event stays
/// stored and the store opens again once the reader is gone.
#[tokio::test]
async fn close_says_when_another_connection_keeps_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.db");
    let options = SqliteOptions::new().busy_timeout(std::time::Duration::from_millis(50));
    let store = SqliteStore::open_with(&path, options).await.unwrap();
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader
        .query_row("SELECT count(*) FROM eda_events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(seen, 1);
    let closed = app.close().await;
    assert!(
        matches!(closed, Err(StoreError::CheckpointBlocked)),
        "{closed:?}"
    );
    drop(reader);
    let reopened = App::new(SqliteStore::open(&path).await.unwrap());
    let account: Account = reopened.load(&"a".to_string()).await.unwrap();
    assert_eq!(account.owner.as_deref(), Some("ada"));
}

/// After `close`, the `.db` file alone holds the database: a copy of it (without
/// the `-wal` file) opens with every event. Later calls are refused.
#[tokio::test]
async fn close_leaves_the_whole_database_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    // The control: while open, the commit is only in the write-ahead log, and a
    // copy of the `.db` file alone has no tables.
    let early = dir.path().join("early.db");
    std::fs::copy(&path, &early).unwrap();
    let no_tables = rusqlite::Connection::open(&early).unwrap().query_row(
        "SELECT count(*) FROM eda_events",
        [],
        |row| row.get::<_, i64>(0),
    );
    assert!(no_tables.is_err(), "{no_tables:?}");

    app.close().await.unwrap();
    for suffix in ["-wal", "-shm"] {
        let extra = dir.path().join(format!("bank.db{suffix}"));
        assert!(!extra.exists(), "{} is left", extra.display());
    }
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let copied = App::new(SqliteStore::open(&copy).await.unwrap());
    let account: Account = copied.load(&"a".to_string()).await.unwrap();
    assert_eq!(account.owner.as_deref(), Some("ada"));

    let err = app
        .execute(DepositMoney {
            account: "a".into(),
            amount: 1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Store(StoreError::Closed)),
        "{err:?}"
    );
    assert!(matches!(
        store.read_all(0, 10).await,
        Err(StoreError::Closed)
    ));
    store.close().await.unwrap();
}

/// `backup` writes a one-file copy while the store is in use.
#[tokio::test]
async fn backup_copies_a_database_in_use() {
    let (dir, store) = fresh().await;
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    let copy = dir.path().join("backup.db");
    store.backup(&copy).await.unwrap();
    app.execute(DepositMoney {
        account: "a".into(),
        amount: 5,
    })
    .await
    .unwrap();
    assert!(!dir.path().join("backup.db-wal").exists());
    let restored = App::new(SqliteStore::open(&copy).await.unwrap());
    let (account, version) = restored
        .load_with_version::<Account>(&"a".to_string())
        .await
        .unwrap();
    assert_eq!(
        (account.balance, version),
        (0, 1),
        "the state at the backup"
    );
}

/// A database file deleted underneath the store: appends are refused with a
/// typed error instead of being acknowledged into a file no one can open again.
#[tokio::test]
async fn appends_to_a_deleted_database_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", path.display())).unwrap();
    }
    let mut acknowledged = 0;
    for amount in 1..=20 {
        match app
            .execute(DepositMoney {
                account: "a".into(),
                amount,
            })
            .await
        {
            Ok(_) => acknowledged += 1,
            Err(CommandError::Store(StoreError::FileChanged { path: gone })) => {
                assert_eq!(gone, path)
            }
            Err(other) => panic!("expected FileChanged, got {other:?}"),
        }
    }
    assert_eq!(
        acknowledged, 0,
        "nothing acknowledged into the deleted file"
    );
    // A file put back at the path is another database: still refused.
    drop(SqliteStore::open(&path).await.unwrap());
    let err = app
        .execute(DepositMoney {
            account: "a".into(),
            amount: 1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Store(StoreError::FileChanged { .. })),
        "{err:?}"
    );
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
                supported: 5
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the database schema is version 99, newer than version 5 that this code knows"
    );
}

/// A version 2 database (before key records) is migrated: the keys of its stored
/// events get their records, so retries of those commands are still recognised.
#[tokio::test]
async fn a_version_2_database_gets_the_keys_of_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut metadata = eda::Metadata::default();
    metadata.idempotency_key = Some("old-key".into());
    metadata.command = Some("Note".into());
    let events = vec![
        eda_test::new_event("Noted", "{}"),
        eda_test::new_event("Noted", "{}"),
    ];
    store
        .append(eda_test::stream("Doc", "d"), 0, events, &metadata)
        .await
        .unwrap();
    store.close().await.unwrap();
    sql(
        &path,
        "DROP TABLE eda_idempotency; DROP TABLE eda_checkpoints; DROP TABLE eda_parked_events;
         UPDATE eda_schema SET version = 2",
    );
    let store = SqliteStore::open(&path).await.unwrap();
    let record = store
        .read_idempotency_key("old-key")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.aggregate_id.as_str(), record.command.as_str()),
        ("d", "Note")
    );
    assert_eq!(
        (record.expected_version, record.version, record.position),
        (0, 2, Some(2))
    );
}

/// A version 3 database (before checkpoints) is migrated: it gets the checkpoints'
/// table, keeps its events, and checkpoints survive reopening.
#[tokio::test]
async fn a_version_3_database_gets_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let s = eda_test::stream("Doc", "d");
    store
        .append(
            s,
            0,
            vec![eda_test::new_event("Noted", "{}")],
            &eda_test::meta(),
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    sql(
        &path,
        "DROP TABLE eda_checkpoints; DROP TABLE eda_parked_events; UPDATE eda_schema SET version = 3",
    );
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.read_stream(s, 0).await.unwrap().len(), 1);
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), None);
    store.write_checkpoint("mailer", None, 1).await.unwrap();
    store.close().await.unwrap();
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT version FROM eda_schema", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 5);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(1));
}

/// The schema version of a database.
fn schema_version(path: &std::path::Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT version FROM eda_schema", [], |row| row.get(0))
        .unwrap()
}

/// A version 4 database (before parked events) is migrated: it gets the parked
/// events' table, and keeps its events and checkpoints.
#[tokio::test]
async fn a_version_4_database_gets_parked_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let s = eda_test::stream("Doc", "d");
    store
        .append(
            s,
            0,
            vec![eda_test::new_event("Noted", "{}")],
            &eda_test::meta(),
        )
        .await
        .unwrap();
    store.write_checkpoint("mailer", None, 1).await.unwrap();
    store.close().await.unwrap();
    sql(
        &path,
        "DROP TABLE eda_parked_events; UPDATE eda_schema SET version = 4",
    );
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(schema_version(&path), 5);
    let log = store.read_all(0, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(1));
    assert!(store.parked("mailer").await.unwrap().is_empty());
    let parked = eda::ParkedEvent::from_event(&log[0], "smtp: timed out");
    store.park("mailer", &parked).await.unwrap();
    assert_eq!(store.parked("mailer").await.unwrap(), [parked]);
}

/// Parked events are in the file: they survive closing and reopening, and are
/// re-parked and removed after it as before.
#[tokio::test]
async fn parked_events_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let events = (0..3)
        .map(|_| eda_test::new_event("Registered", "{}"))
        .collect();
    store
        .append(
            eda_test::stream("Customer", "c"),
            0,
            events,
            &eda_test::meta(),
        )
        .await
        .unwrap();
    let log = store.read_all(0, 10).await.unwrap();
    let parked: Vec<_> = log
        .iter()
        .map(|e| eda::ParkedEvent::from_event(e, format!("failed {}", e.position)))
        .collect();
    for event in parked.iter().rev() {
        store.park("mailer", event).await.unwrap();
    }
    store.park("ledger", &parked[1]).await.unwrap();
    store.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.parked("mailer").await.unwrap(), parked);
    assert_eq!(store.parked("ledger").await.unwrap(), [parked[1].clone()]);
    let mut again = parked[0].clone();
    again.error = "failed again".into();
    store.park("mailer", &again).await.unwrap();
    assert!(store.unpark("mailer", parked[2].position).await.unwrap());
    // Dropped without `close`: what was acknowledged is committed.
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.parked("mailer").await.unwrap(),
        [again, parked[1].clone()]
    );
    assert_eq!(store.read_all(0, 10).await.unwrap(), log);
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
        .read_stream(eda_test::stream("Account", "bad"), 0)
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
    let options = SqliteOptions::new().synchronous(SqliteSynchronous::Normal);
    let store = SqliteStore::open_with(dir.path().join("events.db"), options)
        .await
        .unwrap();
    eda_test::bank_load::every_command_once_through_many_apps(store, 50).await;
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
            .synchronous(SqliteSynchronous::Normal)
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

/// 8 `App`s (8 processes, in effect) each run 150 deposits on one hot account
/// with the default settings: jittered pauses between retries spread the writers
/// out, so next to none runs out of retries (none on a quiet machine; on one
/// busy with other tests, a thread descheduled for long can still lose 50 times).
/// The control retries at once, 10 times (eda's old behaviour), and must see at
/// least 20 times as many commands end in `Conflict` (about 260 of 1,200 when
/// measured), or the load is not hot enough to prove anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_aggregate_does_not_exhaust_conflict_retries() {
    async fn run(backoff: Option<std::time::Duration>) -> usize {
        let (_dir, store) = fresh().await;
        let apps: Vec<App> = (0..8)
            .map(|_| {
                let builder = App::builder(store.clone());
                match backoff {
                    // Retrying at once, as many times as eda used to.
                    Some(pause) => builder
                        .conflict_backoff(pause, pause)
                        .max_conflict_retries(10),
                    None => builder,
                }
                .build()
                .unwrap()
            })
            .collect();
        apps[0]
            .execute(OpenAccount {
                account: "hot".into(),
                owner: "ada".into(),
            })
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for app in apps {
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..150 {
                    match app
                        .execute(DepositMoney {
                            account: "hot".into(),
                            amount: 1,
                        })
                        .await
                    {
                        Ok(_) => {}
                        Err(CommandError::Conflict { .. }) => conflicts += 1,
                        Err(other) => panic!("{other}"),
                    }
                }
                conflicts
            }));
        }
        let mut conflicts = 0;
        for task in tasks {
            conflicts += task.await.unwrap();
        }
        conflicts
    }
    // Both counts depend on how the machine interleaves the writers: a pair
    // that proves the point once in three tries passes.
    let mut pairs = Vec::new();
    for _ in 0..3 {
        let control = run(Some(std::time::Duration::ZERO)).await;
        let with_backoff = run(None).await;
        eprintln!(
            "commands ending in Conflict: {control} retrying at once, {with_backoff} with backoff"
        );
        if control >= 20 && with_backoff <= control / 20 {
            return;
        }
        pairs.push((control, with_backoff));
    }
    panic!(
        "(retrying at once, with backoff) commands that ran out of retries: {pairs:?}; \
         the control must see at least 20, and 20 times as many as with backoff"
    );
}
