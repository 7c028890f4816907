//! `PostgresStore`: the conformance suite, the gap-free global log under concurrent
//! writers (with a naive cursor as the control that must see skips), concurrency
//! through `App`, bad data. Needs `EDA_TEST_POSTGRES_URL`; each test uses a schema
//! of its own, dropped at the end.

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

/// Concurrent appends are committed together, several to a statement, and each
/// still gets its own answer: new aggregates are created, the loser of a race for a
/// new aggregate and a stale expected version get the conflict, a stored event id
/// gets `DuplicateEvent` (its batch is then retried append by append), and every
/// position returned is the one stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_commit_together_each_with_its_own_answer() {
    use eda::{NewEvent, StoreError};
    let Some(db) = TestDb::new().await else {
        return;
    };
    let store = db.one_committer().await;
    let event = |n: usize| eda_test::new_event("Noted", &format!(r#"{{"n":{n}}}"#));
    store
        .append(
            eda_test::stream("Old", "o"),
            0,
            vec![event(0), event(0)],
            &Metadata::default(),
        )
        .await
        .unwrap();
    let stored = store
        .read_stream(eda_test::stream("Old", "o"), 0)
        .await
        .unwrap();
    let taken_id = stored[0].event_id;

    enum Expect {
        Stored,
        Conflict(u64),
        Duplicate,
    }
    // (aggregate id, expected version, events, what must happen)
    let mut cases: Vec<(String, u64, Vec<NewEvent>, Option<Expect>)> = Vec::new();
    for i in 0..40 {
        cases.push((
            format!("new-{i}"),
            0,
            (0..1 + i % 3).map(event).collect(),
            Some(Expect::Stored),
        ));
    }
    for i in 0..8 {
        // Two racers for one new aggregate: one wins, decided below.
        cases.push((format!("race-{i}"), 0, vec![event(1)], None));
        cases.push((format!("race-{i}"), 0, vec![event(2), event(3)], None));
    }
    cases.push(("o".into(), 5, vec![event(4)], Some(Expect::Conflict(2))));
    // A second wave, once the first is answered: an append with a stored event id
    // fails its statement, and its batch is retried append by append.
    let second_wave = cases.len();
    let mut duplicate = event(5);
    duplicate.event_id = taken_id;
    cases.push((
        "dup".into(),
        0,
        vec![event(6), duplicate],
        Some(Expect::Duplicate),
    ));
    for i in 0..8 {
        cases.push((format!("late-{i}"), 0, vec![event(7)], Some(Expect::Stored)));
    }

    let mut results = Vec::new();
    for wave in [&cases[..second_wave], &cases[second_wave..]] {
        let mut tasks = Vec::new();
        for (id, expected, events, _) in wave {
            let (store, id, expected, events) =
                (store.clone(), id.clone(), *expected, events.clone());
            let aggregate_type = if id == "o" { "Old" } else { "New" };
            tasks.push(tokio::spawn(async move {
                store
                    .append(
                        eda_test::stream(aggregate_type, &id),
                        expected,
                        events,
                        &Metadata::default(),
                    )
                    .await
            }));
        }
        for task in tasks {
            results.push(task.await.unwrap());
        }
    }

    let mut transactions = std::collections::HashMap::<u64, usize>::new();
    let mut race_winners = std::collections::HashMap::<String, usize>::new();
    for ((id, expected, events, expect), result) in cases.iter().zip(&results) {
        let expect = match expect {
            Some(expect) => expect,
            None => match result {
                Ok(_) => {
                    *race_winners.entry(id.clone()).or_default() += 1;
                    &Expect::Stored
                }
                Err(StoreError::Conflict { actual, .. }) => {
                    assert!(*actual == 1 || *actual == 2, "{id}: {result:?}");
                    continue;
                }
                Err(other) => panic!("{id}: {other:?}"),
            },
        };
        match (expect, result) {
            (Expect::Stored, Ok(appended)) => {
                assert_eq!(appended.version, expected + events.len() as u64, "{id}");
                let aggregate_type = if id == "o" { "Old" } else { "New" };
                let read = store
                    .read_stream(eda_test::stream(aggregate_type, id), 0)
                    .await
                    .unwrap();
                let ids: Vec<_> = read.iter().map(|e| e.event_id).collect();
                assert_eq!(
                    ids,
                    events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
                    "{id}"
                );
                assert_eq!(read.last().unwrap().position, appended.position, "{id}");
                *transactions.entry(appended.position >> 20).or_default() += 1;
            }
            (
                Expect::Conflict(actual),
                Err(StoreError::Conflict {
                    actual: found,
                    expected: e,
                    ..
                }),
            ) => {
                assert_eq!((*found, *e), (*actual, *expected), "{id}");
            }
            (Expect::Duplicate, Err(StoreError::DuplicateEvent { event_id })) => {
                assert_eq!(*event_id, taken_id);
            }
            (_, other) => panic!("{id}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        race_winners.len(),
        8,
        "every race has exactly one winner: {race_winners:?}"
    );
    assert!(race_winners.values().all(|&wins| wins == 1));
    // Nothing of the refused appends was stored: the 2 old events, those of the 40
    // new aggregates, and one racer's of each pair.
    let all = store.read_all(0, 10_000).await.unwrap();
    let race_events: usize = all
        .iter()
        .filter(|e| e.aggregate_id.starts_with("race-"))
        .count();
    let new_events: usize = cases[..40].iter().map(|case| case.2.len()).sum();
    assert_eq!(all.len(), 2 + new_events + race_events + 8);
    assert!((8..=16).contains(&race_events));
    assert!(store
        .read_stream(eda_test::stream("New", "dup"), 0)
        .await
        .unwrap()
        .is_empty());
    // Appends shared transactions: batching happened.
    assert!(
        transactions.values().any(|&appends| appends > 1),
        "every append had a transaction of its own: {transactions:?}"
    );
    drop(store);
    db.drop_schema().await;
}

/// A batch takes its transaction id at its first write, before it checks the other
/// aggregates' versions; an aggregate whose last event already sits at a later
/// position must not get events at earlier ones. Here one aggregate's last
/// position is set past every running transaction: its append, batched with
/// others, is refused by the batch and committed on its own; the others share
/// the batch's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batched_append_never_lands_before_its_aggregates_last_event() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let store = db.one_committer().await;
    let ids = ["blocker", "blocker2", "late", "a0", "a1", "a2", "a3", "a4"];
    for id in ids {
        store
            .append(
                eda_test::stream("Doc", id),
                0,
                vec![eda_test::new_event("Noted", "{}")],
                &Metadata::default(),
            )
            .await
            .unwrap();
    }
    let sql = db.connect().await;
    sql.batch_execute(
        "UPDATE eda_aggregates SET last_position = (pg_current_xact_id()::text::bigint + 1000000) << 20
         WHERE aggregate_id = 'late'",
    )
    .await
    .unwrap();
    // Hold the blockers' rows: the first append is sent by its own task, the
    // second by the only committing task, and the others queue behind it.
    let locker = db.connect().await;
    locker
        .batch_execute(
            "BEGIN; SELECT 1 FROM eda_aggregates WHERE aggregate_id LIKE 'blocker%' FOR UPDATE",
        )
        .await
        .unwrap();
    let append = |id: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(
                    eda_test::stream("Doc", id),
                    1,
                    vec![eda_test::new_event("Noted", "{}")],
                    &Metadata::default(),
                )
                .await
                .unwrap()
        })
    };
    let mut blockers = Vec::new();
    for id in &ids[..2] {
        blockers.push(append(id));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let rest: Vec<_> = ids[2..].iter().map(|&id| (id, append(id))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    locker.batch_execute("COMMIT").await.unwrap();
    for blocker in blockers {
        blocker.await.unwrap();
    }
    let mut transaction_of = std::collections::HashMap::new();
    for (id, task) in rest {
        let appended = task.await.unwrap();
        assert_eq!(appended.version, 2, "{id}");
        let stored = store
            .read_stream(eda_test::stream("Doc", id), 1)
            .await
            .unwrap();
        assert_eq!(stored[0].position, appended.position, "{id}");
        transaction_of.insert(id, appended.position >> 20);
    }
    let batch = transaction_of["a0"];
    for id in ["a1", "a2", "a3", "a4"] {
        assert_eq!(transaction_of[id], batch, "{id} was not batched with a0");
    }
    assert_ne!(
        transaction_of["late"], batch,
        "`late` went into the batch's transaction"
    );
    drop(store);
    db.drop_schema().await;
}

/// A version 2 schema (before aggregates kept their last position) is migrated:
/// the positions are filled in from the events, and appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_schema_is_migrated() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    for id in ["x", "y"] {
        db.store
            .append(
                eda_test::stream("Doc", id),
                0,
                vec![
                    eda_test::new_event("Noted", "{}"),
                    eda_test::new_event("Noted", "{}"),
                ],
                &Metadata::default(),
            )
            .await
            .unwrap();
    }
    let sql = db.connect().await;
    sql.batch_execute(
        "ALTER TABLE eda_aggregates DROP COLUMN last_position; DROP TABLE eda_idempotency;
         UPDATE eda_schema SET version = 2",
    )
    .await
    .unwrap();
    let store = PostgresStore::connect_with(&db.url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap();
    let rows = sql
        .query(
            "SELECT g.last_position, (SELECT max(position) FROM eda_events e WHERE e.aggregate_id = g.aggregate_id)
             FROM eda_aggregates g ORDER BY aggregate_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row.get::<_, i64>(0), row.get::<_, i64>(1));
    }
    let version: i32 = sql
        .query_one("SELECT version FROM eda_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 4);
    store
        .append(
            eda_test::stream("Doc", "x"),
            2,
            vec![eda_test::new_event("Noted", "{}")],
            &Metadata::default(),
        )
        .await
        .unwrap();
    drop(store);
    db.drop_schema().await;
}

/// A version 3 schema (payloads in `jsonb`, no key records) is migrated: the
/// payload columns become `json`, which keeps text as given, what was stored reads
/// back as before, and new payloads keep their exact text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_schema_is_migrated_to_exact_payloads() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let sql = db.connect().await;
    sql.batch_execute(
        "ALTER TABLE eda_events ALTER COLUMN payload TYPE jsonb USING payload::jsonb,
                                ALTER COLUMN metadata TYPE jsonb USING metadata::jsonb;
         ALTER TABLE eda_snapshots ALTER COLUMN payload TYPE jsonb USING payload::jsonb;
         DROP TABLE eda_idempotency; UPDATE eda_schema SET version = 3",
    )
    .await
    .unwrap();
    let old = db.store.clone();
    // The old `jsonb` statements, as a version 3 store ran them.
    sql.batch_execute(&format!(
        r#"INSERT INTO eda_events (position, event_id, aggregate_type, aggregate_id, version, name, event_version, payload, metadata)
           VALUES (1, '{}', 'Doc', 'old', 1, 'Noted', 1, '{{"b":1, "a":2}}'::jsonb,
                   '{{"idempotency_key": "old-key", "command": "Note"}}'::jsonb);
           INSERT INTO eda_aggregates VALUES ('Doc', 'old', 1, 1)"#,
        eda::__private::new_event_id()
    ))
    .await
    .unwrap();
    drop(old);
    let store = PostgresStore::connect_with(&db.url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap();
    let types: Vec<(String, String)> = sql
        .query(
            "SELECT table_name::text || '.' || column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND column_name IN ('payload', 'metadata') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let json = |column: &str| (column.to_string(), "json".to_string());
    assert_eq!(
        types,
        [
            json("eda_events.metadata"),
            json("eda_events.payload"),
            json("eda_snapshots.payload")
        ]
    );
    let version: i32 = sql
        .query_one("SELECT version FROM eda_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 4);
    // The key of a stored event is known after the migration.
    let record = store
        .read_idempotency_key("old-key")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            record.command.as_str(),
            record.expected_version,
            record.version,
            record.position
        ),
        ("Note", 0, 1, Some(1))
    );
    // `jsonb` had sorted the keys; that text is what there is now.
    let old = store
        .read_stream(eda_test::stream("Doc", "old"), 0)
        .await
        .unwrap();
    assert_eq!(old[0].payload, r#"{"a": 2, "b": 1}"#);
    let exact = r#"{"b":1,"a":-0.0}"#;
    store
        .append(
            eda_test::stream("Doc", "old"),
            1,
            vec![eda_test::new_event("Noted", exact)],
            &Metadata::default(),
        )
        .await
        .unwrap();
    let read = store
        .read_stream(eda_test::stream("Doc", "old"), 1)
        .await
        .unwrap();
    assert_eq!(read[0].payload, exact);
    drop(store);
    db.drop_schema().await;
}

/// What one reader saw: event ids with their aggregate and version, in order.
type Seen = Vec<(eda::Uuid, String, u64)>;

/// 8 writers append inside transactions of their own, with work before (reads,
/// waits) and after the append (writes, waits), and roll back some. Meanwhile a
/// reader tails `read_all` and another one tails with the naive `position > last`
/// cursor. Returns (committed ids, full read, gap-safe reader, naive reader).
async fn tail_while_writing(db: &TestDb) -> (HashSet<eda::Uuid>, Seen, Seen, Seen) {
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
                    eda_test::new_event("Happened", r#"{"n":2}"#),
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
    let (safe, naive) = (safe.await.unwrap(), naive.await.unwrap());
    let full: Seen = db
        .store
        .read_all(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.event_id, e.aggregate_id, e.version))
        .collect();
    (committed, full, safe, naive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_log_never_skips_an_event() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    let (committed, full, safe, naive) = tail_while_writing(&db).await;

    let full_ids: HashSet<_> = full.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(
        full_ids, committed,
        "the log holds exactly the committed appends"
    );
    assert_eq!(
        safe, full,
        "the tailing reader saw every event once, in log order"
    );
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
    assert!(
        matches!(err, Err(StoreError::Backend(ref e)) if e.to_string().contains("first write")),
        "{err:?}"
    );
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
async fn a_newer_schema_is_refused() {
    let Some(db) = TestDb::new().await else {
        return;
    };
    db.connect()
        .await
        .batch_execute("UPDATE eda_schema SET version = 7")
        .await
        .unwrap();
    let err = PostgresStore::connect_with(&db.url, PostgresOptions::new().schema(&db.schema))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::IncompatibleSchema {
                found: 7,
                supported: 4
            }
        ),
        "{err:?}"
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

/// Fault test: appenders whose connections are killed (`pg_terminate_backend`) while
/// they append. Each call is recorded as ok (acknowledged) or unknown (failed with
/// the connection: it may or may not have committed); every ok append must be
/// stored once and whole, every unknown one whole or not at all, nothing else. The
/// control appends the same events with one statement per event, the bug an
/// appender without a transaction would have: the kills must leave a partial append.
mod killed_connections {
    use super::*;

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
                        Err(StoreError::OutcomeUnknown { .. }) => {
                            history.unknown.push((id.clone(), n))
                        }
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
            let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
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
}

/// Concurrent appends share statements: one caller's failure, lock or cancelled
/// runtime must stay that caller's alone.
mod batches {
    use super::*;

    /// The errors of `error`'s chain, outermost first.
    fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
        std::iter::successors(Some(error), |e| e.source())
            .map(ToString::to_string)
            .collect()
    }

    /// 32 tasks append to their own aggregates while one appends a payload the
    /// database refuses, over and over, through one committing task: every
    /// innocent append is stored, the poisoned ones fail alone, with the
    /// database's reason in their error chain, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_poisoned_append_fails_alone() {
        let Some(db) = TestDb::new().await else {
            return;
        };
        let store = db.one_committer().await;
        let mut innocent = Vec::new();
        for task in 0..32 {
            let store = store.clone();
            innocent.push(tokio::spawn(async move {
                let id = format!("innocent-{task}");
                for n in 0..20u64 {
                    let event = eda_test::new_event("Noted", &format!(r#"{{"n":{n}}}"#));
                    store
                        .append(
                            eda_test::stream("Doc", &id),
                            n,
                            vec![event],
                            &Metadata::default(),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("{id} append {n}: {:?}", chain(&e)));
                }
            }));
        }
        let poisoner = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for _ in 0..40 {
                    let event = eda_test::new_event("Noted", "{not json");
                    let err = store
                        .append(
                            eda_test::stream("Doc", "poison"),
                            0,
                            vec![event],
                            &Metadata::default(),
                        )
                        .await
                        .unwrap_err();
                    let chain = chain(&err);
                    assert!(matches!(err, StoreError::Backend(_)), "{chain:?}");
                    let reason = chain
                        .iter()
                        .filter(|e| e.contains("invalid input syntax for type json"))
                        .count();
                    assert_eq!(reason, 1, "the database's reason, once: {chain:?}");
                    let heads = chain
                        .iter()
                        .filter(|e| e.contains("event store backend failed"))
                        .count();
                    assert_eq!(heads, 1, "{chain:?}");
                    refused += 1;
                    tokio::task::yield_now().await;
                }
                refused
            })
        };
        for task in innocent {
            task.await.unwrap();
        }
        assert_eq!(poisoner.await.unwrap(), 40);
        let stored = store.read_all(0, 10_000).await.unwrap();
        assert_eq!(stored.len(), 32 * 20);
        drop(store);
        db.drop_schema().await;
    }

    /// Appends queued behind one to an aggregate that another connection holds
    /// locked: with the batch lock timeout they are committed while the lock is
    /// still held. The control, with a lock timeout longer than the test, shows
    /// that they were indeed batched with the blocked append and would wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_locked_aggregate_does_not_stall_the_others() {
        let Some(db) = TestDb::new().await else {
            return;
        };
        let bounded = PostgresStore::connect_with(
            &db.url,
            PostgresOptions::new()
                .schema(&db.schema)
                .pool_size(4)
                .batch_lock_timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        let unbounded = db.one_committer().await;
        for (round, store) in [(0, bounded), (1, unbounded)] {
            let locked = [format!("first-{round}"), format!("locked-{round}")];
            for id in &locked {
                store
                    .append(
                        eda_test::stream("Doc", id),
                        0,
                        vec![eda_test::new_event("Noted", "{}")],
                        &Metadata::default(),
                    )
                    .await
                    .unwrap();
            }
            let locker = db.connect().await;
            locker
                .batch_execute(&format!(
                    "BEGIN; SELECT 1 FROM eda_aggregates WHERE aggregate_id IN ('{}', '{}') FOR UPDATE",
                    locked[0], locked[1]
                ))
                .await
                .unwrap();
            let append = |id: String, version: u64| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append(
                            eda_test::stream("Doc", &id),
                            version,
                            vec![eda_test::new_event("Noted", "{}")],
                            &Metadata::default(),
                        )
                        .await
                })
            };
            // The first append is sent by its caller's task and waits there; the
            // next ones queue for the committing task, the locked one first.
            let first = append(locked[0].clone(), 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let blocked = append(locked[1].clone(), 1);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut others: Vec<_> = (0..13)
                .map(|i| append(format!("free-{round}-{i}"), 0))
                .collect();
            let all_done = async {
                for other in &mut others {
                    other.await.unwrap().unwrap();
                }
            };
            let finished = tokio::time::timeout(Duration::from_secs(3), all_done).await;
            if round == 0 {
                assert!(finished.is_ok(), "unrelated appends waited for the lock");
                assert!(
                    !blocked.is_finished(),
                    "the blocked append waits for its lock"
                );
            } else {
                assert!(
                    finished.is_err(),
                    "control: without a bound the others must wait, or the test proves nothing"
                );
            }
            locker.batch_execute("COMMIT").await.unwrap();
            first.await.unwrap().unwrap();
            blocked.await.unwrap().unwrap();
            for other in others {
                if !other.is_finished() {
                    other.await.unwrap().unwrap();
                }
            }
        }
        db.drop_schema().await;
    }

    /// A runtime shut down while its committing task is mid-batch (as
    /// `#[tokio::test]`s sharing one store do): the store goes on working for
    /// callers on another runtime, because the task gave its place back.
    #[test]
    fn a_cancelled_committing_task_gives_its_place_back() {
        let main = tokio::runtime::Runtime::new().unwrap();
        let Some(db) = main.block_on(TestDb::new()) else {
            return;
        };
        let store = main.block_on(db.one_committer());
        for round in 0..5 {
            // A runtime of its own with 32 busy appenders, shut down 40 ms in.
            let doomed = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            for task in 0..32 {
                let store = store.clone();
                doomed.spawn(async move {
                    let id = format!("doomed-{round}-{task}");
                    for n in 0..1_000u64 {
                        let event = eda_test::new_event("Noted", "{}");
                        let result = store
                            .append(
                                eda_test::stream("Doc", &id),
                                n,
                                vec![event],
                                &Metadata::default(),
                            )
                            .await;
                        if result.is_err() {
                            return;
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(40));
            doomed.shutdown_background();
            // Appends on another runtime still complete. Pooled connections that
            // the dead runtime drove fail once they are used (an error, not a
            // hang); the pool replaces them, so a retry goes through.
            main.block_on(async {
                let appends = (0..8).map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let id = format!("after-{round}-{i}");
                        let mut last = None;
                        for _ in 0..5 {
                            let result = store
                                .append(
                                    eda_test::stream("Doc", &id),
                                    0,
                                    vec![eda_test::new_event("Noted", "{}")],
                                    &Metadata::default(),
                                )
                                .await;
                            match result {
                                Ok(appended) => return Ok(appended.version),
                                // An earlier try was stored after all.
                                Err(StoreError::Conflict { actual: 1, .. }) => return Ok(1),
                                Err(error) => last = Some(error),
                            }
                        }
                        Err(last)
                    })
                });
                let all = futures_join(appends.collect());
                let results = tokio::time::timeout(Duration::from_secs(20), all)
                    .await
                    .expect("appends after the shutdown hang: the store is stuck");
                for result in results {
                    assert_eq!(result.unwrap(), 1);
                }
            });
        }
        drop(store);
        main.block_on(db.drop_schema());
    }

    async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }
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
