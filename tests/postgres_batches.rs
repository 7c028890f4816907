//! `PostgresStore` commits concurrent appends together, several to a statement
//! and a transaction: each append still gets its own answer and never lands before
//! its aggregate's last event, and one caller's failure, lock or cancelled runtime
//! stays that caller's alone. Needs `EDA_TEST_POSTGRES_URL`, as `postgres_store.rs`.

#![allow(missing_docs)]

use std::time::Duration;

use eda::prelude::*;
use eda::{Metadata, PostgresOptions};
use eda_test::postgres::TestDb;

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
    for (waiting, id) in ids[..2].iter().enumerate() {
        blockers.push(append(id));
        waiting_for(&sql, &locker, waiting + 1).await;
    }
    let rest: Vec<_> = ids[2..].iter().map(|&id| (id, append(id))).collect();
    // Time for the rest to queue for the committing task (they are spawned on
    // four workers; nothing shows that they queued).
    tokio::time::sleep(Duration::from_secs(1)).await;
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

/// The errors of `error`'s chain, outermost first.
/// Waits until `n` sessions wait for locks that `locker` holds, as `watcher`
/// (another connection, so that each look is a fresh snapshot) sees.
async fn waiting_for(watcher: &tokio_postgres::Client, locker: &tokio_postgres::Client, n: usize) {
    let pid: i32 = locker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if waiting as usize >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} of {n} sessions wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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
    let watcher = db.connect().await;
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
        waiting_for(&watcher, &locker, 1).await;
        let blocked = append(locked[1].clone(), 1);
        waiting_for(&watcher, &locker, 2).await;
        let mut others: Vec<_> = (0..13)
            .map(|i| append(format!("free-{round}-{i}"), 0))
            .collect();
        let all_done = async {
            for other in &mut others {
                other.await.unwrap().unwrap();
            }
        };
        // Long enough for the others, however slow the machine; the control
        // waits out a shorter time, since they cannot finish there.
        let within = [Duration::from_secs(30), Duration::from_secs(3)][round];
        let finished = tokio::time::timeout(within, all_done).await;
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
