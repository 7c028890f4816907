//! `PostgresStore`: the conformance suite, the gap-free global log under concurrent
//! writers (with a naive cursor as the control that must see skips), concurrency
//! and snapshots through `App`, bad data, connection parameters. Batched appends,
//! migrations and killed connections have files of their own (`postgres_*.rs`).
//! Needs `EDA_TEST_POSTGRES_URL`; each test uses a schema of its own, dropped at the
//! end (`eda_test::postgres::TestDb`).

#![allow(missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eda::prelude::*;
use eda::{Metadata, PostgresOptions, StreamId};
use eda_test::bank::{Account, DepositMoney, OpenAccount};
use eda_test::postgres::TestDb;

eda_test::conformance_tests!(eda_test::postgres::with_store);

/// 8 tasks x 200 commands on one aggregate through eight `App`s: versions 1..=N
/// without gap or repeat, every accepted command exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_through_many_apps() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    eda_test::bank_load::every_command_once_through_many_apps(db.store.clone(), 200).await;
    db.drop_schema().await;
}

/// What one reader saw: event ids with their aggregate and version, in order.
type Seen = Vec<(eda::Uuid, String, u64)>;

/// 8 writers append inside transactions of their own, with work before (reads,
/// waits) and after the append (writes, waits), and roll back some. Meanwhile a
/// reader tails `read_all`, another `read_all_of` for one of the two event names,
/// and another one tails with the naive `position > last` cursor. Returns
/// (committed ids, full read, gap-safe reader, naive reader, the full read's
/// `Happened` events, the reader by name).
async fn tail_while_writing(db: &TestDb) -> (HashSet<eda::Uuid>, Seen, Seen, Seen, Seen, Seen) {
    let setup = db.connect().await;
    setup
        .batch_execute("CREATE TABLE work (writer int, n int)")
        .await
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (store, client, done) = (db.store.clone(), db.connect().await, Arc::clone(&done));
        writers.push(tokio::spawn(async move {
            let mut client = client;
            let mut committed = Vec::new();
            for n in 0..40u64 {
                // Half the writers share two aggregates, so versions conflict too.
                let id = if writer % 2 == 0 {
                    format!("w{writer}")
                } else {
                    format!("shared{}", n % 2)
                };
                let stream = StreamId {
                    aggregate_type: "Gap",
                    aggregate_id: &id,
                };
                let version = store.read_stream(stream, 0).await.unwrap().len() as u64;
                let tx = client.transaction().await.unwrap();
                tx.query("SELECT count(*) FROM work", &[]).await.unwrap();
                if rand::random::<u8>().is_multiple_of(4) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let events = vec![
                    eda_test::new_event("Happened", r#"{"n":1}"#),
                    eda_test::new_event("Noted", r#"{"n":2}"#),
                ];
                let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
                match store
                    .append_in(&tx, stream, version, events, &Metadata::default())
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => panic!("append failed: {e}"),
                }
                tx.execute("INSERT INTO work VALUES ($1, $2)", &[&writer, &(n as i32)])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(u64::from(rand::random::<u8>() % 6)))
                    .await;
                if rand::random::<u8>().is_multiple_of(10) {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.extend(ids);
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
            committed
        }));
    }

    let safe = {
        let (store, done) = (db.store.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let (mut seen, mut after) = (Seen::new(), 0);
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the feed is still held back after 2 minutes"
                );
                let finished = done.load(Ordering::SeqCst) == 8;
                let page = store.read_all(after, 50).await.unwrap();
                if page.is_empty() {
                    if finished && store.held_back().await.unwrap() == 0 {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for e in page {
                    after = e.position;
                    seen.push((e.event_id, e.aggregate_id, e.version));
                }
            }
        })
    };
    let by_name = {
        let (store, done) = (db.store.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let (mut seen, mut after) = (Seen::new(), 0);
            loop {
                let finished = done.load(Ordering::SeqCst) == 8;
                let page = store.read_all_of(after, 50, &["Happened"]).await.unwrap();
                after = page.read_to;
                if page.events.is_empty() {
                    if finished && store.held_back().await.unwrap() == 0 {
                        let last = store.read_all_of(after, 50, &["Happened"]).await.unwrap();
                        assert!(last.events.is_empty(), "found after the end: {last:?}");
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for e in page.events {
                    seen.push((e.event_id, e.aggregate_id, e.version));
                }
            }
        })
    };
    let naive = {
        let (client, done) = (db.connect().await, Arc::clone(&done));
        tokio::spawn(async move {
            let (mut seen, mut after) = (Seen::new(), 0i64);
            loop {
                let finished = done.load(Ordering::SeqCst) == 8;
                let rows = client
                    .query(
                        "SELECT position, event_id, aggregate_id, version FROM eda_events WHERE position > $1 ORDER BY position LIMIT 50",
                        &[&after],
                    )
                    .await
                    .unwrap();
                if rows.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for row in rows {
                    after = row.get(0);
                    seen.push((
                        row.get(1),
                        row.get(2),
                        u64::try_from(row.get::<_, i64>(3)).unwrap(),
                    ));
                }
            }
        })
    };
    let mut committed = HashSet::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    let (safe, naive, by_name) = (
        safe.await.unwrap(),
        naive.await.unwrap(),
        by_name.await.unwrap(),
    );
    let log = db.store.read_all(0, 100_000).await.unwrap();
    let happened: Seen = log
        .iter()
        .filter(|e| e.name == "Happened")
        .map(|e| (e.event_id, e.aggregate_id.clone(), e.version))
        .collect();
    let full: Seen = log
        .into_iter()
        .map(|e| (e.event_id, e.aggregate_id, e.version))
        .collect();
    (committed, full, safe, naive, happened, by_name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_log_never_skips_an_event() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let (committed, full, safe, naive, happened, by_name) = tail_while_writing(&db).await;

    let full_ids: HashSet<_> = full.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(
        full_ids, committed,
        "the log holds exactly the committed appends"
    );
    assert_eq!(
        safe, full,
        "the tailing reader saw every event once, in log order"
    );
    assert_eq!(
        by_name, happened,
        "the reader by name saw every `Happened` event once, in log order, and no other"
    );
    assert!(!happened.is_empty() && happened.len() < full.len());
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, aggregate, version) in &safe {
        let last = versions.insert(aggregate, *version).unwrap_or(0);
        assert_eq!(
            *version,
            last + 1,
            "versions of {aggregate} in order in the log"
        );
    }

    // Control: the naive cursor on the same run misses events that committed late.
    let naive_ids: HashSet<_> = naive.iter().map(|(id, _, _)| *id).collect();
    let skipped = full_ids.difference(&naive_ids).count();
    assert!(
        skipped > 0,
        "the naive cursor skipped nothing: this run could not have caught a gap"
    );
    eprintln!(
        "naive cursor skipped {skipped} of {} events; the store's feed skipped none",
        full.len()
    );
    db.drop_schema().await;
}

/// eda's own refusals are variants a caller can match: a schema name that would
/// need quoting, and an append of more events than positions leave room for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_refusals_are_typed() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    for schema in ["Upper", "with-dash", "1st", "", "a;drop"] {
        let err = PostgresStore::connect_with(&db.url, PostgresOptions::new().schema(schema)).await;
        assert!(
            matches!(
                err,
                Err(StoreError::Invalid {
                    what: "schema name",
                    ..
                })
            ),
            "{schema}: {err:?}"
        );
    }
    let stream = StreamId {
        aggregate_type: "T",
        aggregate_id: "1",
    };
    let events = vec![eda_test::new_event("E", "{}"); 1 << 20];
    let err = db
        .store
        .append(stream, 0, events, &Metadata::default())
        .await;
    assert!(
        matches!(
            err,
            Err(StoreError::TooManyEvents {
                events: 1_048_576,
                max: 1_048_575
            })
        ),
        "{err:?}"
    );
    assert!(db.store.read_all(0, 10).await.unwrap().is_empty());
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_in_refuses_a_transaction_that_already_wrote() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let mut client = db.connect().await;
    client
        .batch_execute("CREATE TABLE other (x int)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO other VALUES (1)", &[])
        .await
        .unwrap();
    let stream = StreamId {
        aggregate_type: "T",
        aggregate_id: "1",
    };
    let err = db
        .store
        .append_in(
            &tx,
            stream,
            0,
            vec![eda_test::new_event("E", "{}")],
            &Metadata::default(),
        )
        .await;
    assert!(matches!(err, Err(StoreError::NotFirstWrite)), "{err:?}");
    tx.rollback().await.unwrap();
    assert!(db.store.read_all(0, 10).await.unwrap().is_empty());
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_typed_errors_and_other_aggregates_still_load() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let app = App::new(db.store.clone());
    for id in ["good", "bad"] {
        app.execute(OpenAccount {
            account: id.into(),
            owner: "ada".into(),
        })
        .await
        .unwrap();
    }
    let client = db.connect().await;
    client
        .batch_execute("UPDATE eda_events SET payload = '[1]' WHERE aggregate_id = 'bad'")
        .await
        .unwrap();
    let fresh = App::new(db.store.clone());
    match fresh.load::<Account>(&"bad".to_string()).await {
        Err(LoadError::Decode(e)) => assert_eq!(
            (e.name.as_str(), e.aggregate_id.as_str(), e.version),
            ("AccountOpened", "bad", 1)
        ),
        other => panic!("expected a decode error, got {other:?}"),
    }
    client
        .batch_execute("UPDATE eda_events SET name = 'AccountClosed', payload = '{}' WHERE aggregate_id = 'bad'")
        .await
        .unwrap();
    match fresh.load::<Account>(&"bad".to_string()).await {
        Err(LoadError::Decode(e)) => {
            assert!(matches!(e.kind, eda::DecodeErrorKind::UnknownEvent), "{e}")
        }
        other => panic!("expected an unknown event, got {other:?}"),
    }
    let bad_position = db
        .store
        .read_stream(eda_test::stream("Account", "bad"), 0)
        .await
        .unwrap()[0]
        .position;
    client
        .batch_execute(
            r#"UPDATE eda_events SET metadata = '{"user": 5}' WHERE aggregate_id = 'bad'"#,
        )
        .await
        .unwrap();
    // Metadata of the wrong shape: the reads that return it say so, with the
    // position; replay does not read it.
    let err = db
        .store
        .read_stream(eda_test::stream("Account", "bad"), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { position, .. } if position == bad_position),
        "{err:?}"
    );
    assert!(matches!(
        db.store.read_all(0, 10).await,
        Err(StoreError::Corrupt { position, .. }) if position == bad_position
    ));
    client
        .batch_execute("UPDATE eda_events SET name = 'AccountOpened', payload = '{\"owner\":\"bob\"}' WHERE aggregate_id = 'bad'")
        .await
        .unwrap();
    let account = fresh.load::<Account>(&"bad".to_string()).await.unwrap();
    assert_eq!(account.owner.as_deref(), Some("bob"));
    // A column out of range is corrupt for replay too, with the position.
    client
        .batch_execute("UPDATE eda_events SET event_version = -1 WHERE aggregate_id = 'bad'")
        .await
        .unwrap();
    match fresh.load::<Account>(&"bad".to_string()).await {
        Err(LoadError::Store(StoreError::Corrupt { position, what })) => {
            assert_eq!(position, bad_position);
            assert_eq!(what, "negative event_version");
        }
        other => panic!("expected a corrupt row, got {other:?}"),
    }
    assert_eq!(
        fresh
            .load::<Account>(&"good".to_string())
            .await
            .unwrap()
            .owner
            .as_deref(),
        Some("ada")
    );
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_runs_on_postgres() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let app = App::new(db.store.clone());
    app.execute(OpenAccount {
        account: "a".into(),
        owner: "ada".into(),
    })
    .await
    .unwrap();
    let first = app
        .execute(DepositMoney {
            account: "a".into(),
            amount: 5,
        })
        .idempotency_key("k")
        .await
        .unwrap();
    let again = app
        .execute(DepositMoney {
            account: "a".into(),
            amount: 5,
        })
        .idempotency_key("k")
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.position, first.position);
    let account: Account = App::new(db.store.clone())
        .load(&"a".to_string())
        .await
        .unwrap();
    assert_eq!(account.balance, 5);
    db.drop_schema().await;
}

mod tally {
    use eda::prelude::*;

    #[event]
    #[derive(Debug)]
    pub struct Counted {
        pub n: u64,
    }

    #[command]
    #[derive(Debug, Clone)]
    pub struct Count {
        #[aggregate_id]
        pub id: String,
        pub n: u64,
    }

    #[derive(Debug, Default, PartialEq, eda::serde::Serialize, eda::serde::Deserialize)]
    #[serde(crate = "eda::serde")]
    pub struct Tally {
        pub total: u64,
    }

    #[aggregate(error = std::convert::Infallible, snapshot_every = 4)]
    impl Tally {
        #[handle]
        fn count(&self, cmd: Count) -> Result<Counted, std::convert::Infallible> {
            Ok(Counted { n: cmd.n })
        }
        #[apply]
        fn counted(&mut self, e: &Counted) {
            self.total += e.n;
        }
    }
}

/// Snapshots through `App` on PostgreSQL (snapshot and tail in one round trip):
/// the same state as a replay of the events, also while other `App`s keep
/// appending and saving newer snapshots between the two reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_give_the_same_state_as_the_events() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let writer = App::new(db.store.clone());
    for n in 1..=10 {
        writer
            .execute(tally::Count { id: "t".into(), n })
            .await
            .unwrap();
    }
    let stream = StreamId {
        aggregate_type: "Tally",
        aggregate_id: "t",
    };
    assert_eq!(
        db.store
            .load_snapshot(stream)
            .await
            .unwrap()
            .map(|s| s.version),
        Some(8)
    );

    let busy = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for n in 11..=200 {
                writer
                    .execute(tally::Count { id: "t".into(), n })
                    .await
                    .unwrap();
            }
        })
    };
    for _ in 0..100 {
        let reader = App::builder(db.store.clone())
            .cache_capacity(0)
            .build()
            .unwrap();
        let (state, version) = reader
            .load_with_version::<tally::Tally>(&"t".to_string())
            .await
            .unwrap();
        assert_eq!(
            state.total,
            version * (version + 1) / 2,
            "a consistent state at version {version}"
        );
    }
    busy.await.unwrap();
    let (state, version) = App::new(db.store.clone())
        .load_with_version::<tally::Tally>(&"t".to_string())
        .await
        .unwrap();
    assert_eq!((state.total, version), (200 * 201 / 2, 200));
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_a_newer_schema_names_its_position() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let app = App::new(db.store.clone());
    app.execute(OpenAccount {
        account: "a".into(),
        owner: "ada".into(),
    })
    .await
    .unwrap();
    let position = db.store.read_all(0, 10).await.unwrap()[0].position;
    db.connect()
        .await
        .batch_execute("UPDATE eda_events SET event_version = 9")
        .await
        .unwrap();
    match App::new(db.store.clone())
        .load::<Account>(&"a".to_string())
        .await
    {
        Err(LoadError::Decode(e)) => {
            assert!(
                matches!(e.kind, eda::DecodeErrorKind::NewerVersion { known: 1 }),
                "{e}"
            );
            assert_eq!((e.position, e.event_version), (position, 9));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    db.drop_schema().await;
}

/// Connection parameters in the URL (`options`, `application_name`) reach every
/// connection; eda's own `search_path` is added to them, not put in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_parameters_in_the_url_are_kept() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let app_name = format!("eda-options-{}", std::process::id());
    let url = format!(
        "{}?application_name={app_name}&options=-c%20statement_timeout%3D4321",
        db.url
    );
    let store = PostgresStore::connect_with(&url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap();
    store
        .append(
            eda_test::stream("Doc", "d"),
            0,
            vec![eda_test::new_event("Noted", "{}")],
            &Metadata::default(),
        )
        .await
        .unwrap();
    let sql = db.connect().await;
    let named: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app_name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(named > 0, "no connection named {app_name}");
    drop(store);
    // `options` reach the session: a read-only default refuses the migration.
    let read_only = format!("{}?options=-c%20default_transaction_read_only%3Don", db.url);
    let err = PostgresStore::connect_with(
        &read_only,
        PostgresOptions::new().schema(format!("{}_ro", db.schema)),
    )
    .await
    .unwrap_err();
    let text = std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .map(ToString::to_string)
    .collect::<Vec<_>>()
    .join(": ");
    assert!(text.contains("read-only transaction"), "{text}");
    db.drop_schema().await;
}

/// Parked events are in the database: a store connected after the first one
/// closed finds them, re-parks and removes them as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_survive_reconnecting() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let events = (0..3)
        .map(|_| eda_test::new_event("Registered", "{}"))
        .collect();
    db.store
        .append(
            eda_test::stream("Customer", "c"),
            0,
            events,
            &Metadata::default(),
        )
        .await
        .unwrap();
    let log = db.store.read_all(0, 10).await.unwrap();
    let parked: Vec<_> = log
        .iter()
        .map(|e| eda::ParkedEvent::from_event(e, format!("failed {}", e.position)))
        .collect();
    for event in parked.iter().rev() {
        db.store.park("mailer", event).await.unwrap();
    }
    db.store.park("ledger", &parked[1]).await.unwrap();
    db.store.close().await.unwrap();
    assert!(matches!(
        db.store.parked("mailer").await,
        Err(StoreError::Closed)
    ));

    let store = PostgresStore::connect_with(&db.url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap();
    assert_eq!(store.parked("mailer").await.unwrap(), parked);
    assert_eq!(store.parked("ledger").await.unwrap(), [parked[1].clone()]);
    let mut again = parked[0].clone();
    again.error = "failed again".into();
    store.park("mailer", &again).await.unwrap();
    assert!(store.unpark("mailer", parked[2].position).await.unwrap());
    assert_eq!(
        store.parked("mailer").await.unwrap(),
        [again, parked[1].clone()]
    );
    assert_eq!(store.read_all(0, 10).await.unwrap(), log);
    drop(store);
    db.drop_schema().await;
}
