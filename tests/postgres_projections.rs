//! PostgreSQL read models (`#[projection]` with async methods taking a
//! transaction, `.postgres(url)`): the handlers' writes and the checkpoint
//! commit together, a restart goes on from the checkpoint, failing events are
//! retried and parked as in SQLite, one runner at a time applies a read model
//! (the other stands by and takes over), the checkpoint's compare-and-set
//! refuses a runner that lost its turn, and a live read model under concurrent
//! writers (late commits, rollbacks) equals a clean rebuild.
//! Needs `EDA_TEST_POSTGRES_URL`; each test uses schemas of its own, dropped at
//! the end (`eda_test::postgres::TestDb`).

#![allow(missing_docs)]

use std::collections::{BTreeSet, HashSet};
use std::error::Error;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eda::prelude::*;
use eda::tokio_postgres::{Client, Transaction};
use eda::{Metadata, PostgresProjection, ProjectionHandle, RecordedEvent, RunnerState, StreamId};
use eda_test::bank::{DepositMoney, MoneyDeposited, OpenAccount};
use eda_test::ledger::LedgerRows;
use eda_test::ledger_pg::{self, LedgerPg};
use eda_test::postgres::TestDb;

const WAIT: Duration = Duration::from_secs(10);

/// A test's store, its `App`, a plain connection and the read model's schema
/// (with the ledger's tables).
struct Test {
    db: TestDb,
    app: App,
    client: Client,
    read: String,
}

impl Test {
    async fn new() -> Option<Test> {
        let db = TestDb::new().await?;
        let app = App::new(db.store.clone());
        let client = db.connect().await;
        let read = db.other_schema("read");
        ledger_pg::create(&client, &read).await.unwrap();
        Some(Test {
            db,
            app,
            client,
            read,
        })
    }

    async fn start<P: PostgresProjection>(
        &self,
        projection: P,
        schema: &str,
    ) -> ProjectionHandle<P> {
        let builder = self.app.project(projection).postgres(&self.db.url);
        builder.schema(schema).start().await.unwrap()
    }

    async fn ledger(&self) -> ProjectionHandle<LedgerPg> {
        self.start(LedgerPg, &self.read).await
    }

    async fn rows(&self) -> LedgerRows {
        ledger_pg::read(&self.client, &self.read).await.unwrap()
    }

    async fn applied_positions(&self) -> Vec<u64> {
        let positions = ledger_pg::applied_positions(&self.client, &self.read);
        positions.await.unwrap()
    }

    async fn end(self) {
        drop(self.app);
        self.db.drop_schema().await;
    }
}

async fn open(app: &App, account: &str) -> u64 {
    let command = OpenAccount {
        account: account.into(),
        owner: "ada".into(),
    };
    app.execute(command).await.expect("open").position.unwrap()
}

async fn deposit(app: &App, account: &str, amount: u64) -> u64 {
    let command = DepositMoney {
        account: account.into(),
        amount,
    };
    app.execute(command)
        .await
        .expect("deposit")
        .position
        .unwrap()
}

/// Waits until `ready` holds, at most `WAIT`.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "still not {what} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_standby(state: &RunnerState) -> bool {
    matches!(state, RunnerState::Standby { .. })
}

#[tokio::test]
async fn it_catches_up_then_follows() {
    let Some(t) = Test::new().await else {
        return;
    };
    open(&t.app, "a").await;
    deposit(&t.app, "a", 5).await;
    let ledger = t.ledger().await;
    let position = deposit(&t.app, "a", 7).await;
    ledger.wait_for(Some(position), WAIT).await.unwrap();
    let rows = t.rows().await;
    assert_eq!(rows.balances["a"], 12);
    assert_eq!(rows.applications.len(), 3);
    assert_eq!(rows.applied_twice(), 0);
    let status = ledger.status();
    assert_eq!((status.name, status.applied), ("ledger", 3));
    assert!(status.checkpoint >= position);
    assert_eq!(status.state, RunnerState::Live);
    ledger.stop().await;
    t.end().await;
}

#[tokio::test]
async fn a_restart_goes_on_from_the_stored_checkpoint() {
    let Some(t) = Test::new().await else {
        return;
    };
    open(&t.app, "a").await;
    let first = t.ledger().await;
    let position = deposit(&t.app, "a", 1).await;
    first.wait_for(Some(position), WAIT).await.unwrap();
    first.stop().await;
    deposit(&t.app, "a", 2).await;
    let position = deposit(&t.app, "a", 3).await;

    let second = t.ledger().await;
    second.wait_for(Some(position), WAIT).await.unwrap();
    let rows = t.rows().await;
    assert_eq!(rows.balances["a"], 6);
    assert_eq!(rows.applications.len(), 4);
    assert_eq!(rows.applied_twice(), 0);
    // Only the two deposits made while it was stopped were applied again.
    assert_eq!(second.status().applied, 2);
    second.stop().await;
    t.end().await;
}

/// Fails on the deposit of `amount == 13` until `failures` runs out.
#[derive(Debug)]
pub struct Flaky {
    failures: Arc<AtomicU32>,
}

#[projection(name = "flaky")]
impl Flaky {
    #[on]
    async fn deposited(
        &mut self,
        e: &MoneyDeposited,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> Result<(), Box<dyn Error + Send + Sync>> {
        if e.amount == 13 && self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err("the deposit of 13 fails".into());
        }
        tx.execute(
            "INSERT INTO applications (event_id, position) VALUES ($1, $2)",
            &[&recorded.event_id, &(recorded.position as i64)],
        )
        .await?;
        Ok(())
    }
}

impl Flaky {
    fn failing(failures: &Arc<AtomicU32>) -> Flaky {
        Flaky {
            failures: Arc::clone(failures),
        }
    }
}

/// Account `a` with deposits of 1, 2, 13, 4 and 5 (their positions), and a
/// flaky read model started after them that fails `failures` times.
async fn flaky_run(t: &Test, failures: u32) -> (ProjectionHandle<Flaky>, Vec<u64>) {
    open(&t.app, "a").await;
    let mut deposits = Vec::new();
    for amount in [1, 2, 13, 4, 5] {
        deposits.push(deposit(&t.app, "a", amount).await);
    }
    let failures = Arc::new(AtomicU32::new(failures));
    let flaky = t.start(Flaky::failing(&failures), &t.read).await;
    (flaky, deposits)
}

#[tokio::test]
async fn a_failing_event_is_retried_and_the_events_before_it_are_kept() {
    let Some(t) = Test::new().await else {
        return;
    };
    let (flaky, deposits) = flaky_run(&t, 2).await;
    flaky
        .wait_for(deposits.last().copied(), WAIT)
        .await
        .unwrap();
    assert_eq!(t.applied_positions().await, deposits, "every deposit, once");
    assert!(flaky.parked().await.unwrap().is_empty());
    flaky.stop().await;
    t.end().await;
}

#[tokio::test]
async fn a_poison_event_parks_its_aggregates_later_events_while_others_flow_on() {
    let Some(t) = Test::new().await else {
        return;
    };
    open(&t.app, "a").await;
    open(&t.app, "b").await;
    let a1 = deposit(&t.app, "a", 1).await;
    let poison = deposit(&t.app, "a", 13).await;
    let b2 = deposit(&t.app, "b", 2).await;
    let behind = deposit(&t.app, "a", 3).await;
    let b4 = deposit(&t.app, "b", 4).await;
    let failures = Arc::new(AtomicU32::new(u32::MAX));
    let handle = t.start(Flaky::failing(&failures), &t.read).await;
    handle.wait_for(Some(b4), WAIT).await.unwrap();

    assert_eq!(
        t.applied_positions().await,
        [a1, b2, b4],
        "b flows on; a stops"
    );
    let parked = handle.parked().await.unwrap();
    let parked_positions: Vec<u64> = parked.iter().map(|p| p.position).collect();
    assert_eq!(parked_positions, [poison, behind]);
    assert!(
        parked[0].error.contains("#[on] method failed"),
        "{}",
        parked[0].error
    );
    assert!(parked[1].error.contains("behind"), "{}", parked[1].error);
    assert_eq!(
        (parked[0].aggregate_id.as_str(), parked[0].name.as_str()),
        ("a", "MoneyDeposited")
    );
    assert_eq!(handle.status().parked, 2);
    assert_eq!(handle.status().state, RunnerState::Live);

    // A later event of the parked aggregate is parked too, live.
    let later = deposit(&t.app, "a", 5).await;
    handle.wait_for(Some(later), WAIT).await.unwrap();
    assert_eq!(handle.status().parked, 3);

    // Parked events survive a restart.
    handle.stop().await;
    let handle = t.start(Flaky::failing(&failures), &t.read).await;
    assert_eq!(handle.status().parked, 3);
    let still: Vec<u64> = handle
        .parked()
        .await
        .unwrap()
        .iter()
        .map(|p| p.position)
        .collect();
    assert_eq!(still, [poison, behind, later]);

    // A retry that fails again keeps them, with the new error.
    let retried = handle.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (0, 3));

    // After the fix, a retry drains the park in order.
    failures.store(0, Ordering::SeqCst);
    let retried = handle.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (3, 0));
    assert_eq!(
        t.applied_positions().await,
        [a1, b2, b4, poison, behind, later]
    );
    assert_eq!(handle.status().parked, 0);
    assert!(handle.parked().await.unwrap().is_empty());

    // And the aggregate flows again.
    let next = deposit(&t.app, "a", 6).await;
    handle.wait_for(Some(next), WAIT).await.unwrap();
    assert_eq!(t.applied_positions().await.last(), Some(&next));
    handle.stop().await;
    t.end().await;
}

#[tokio::test]
async fn a_skipped_parked_event_is_never_applied() {
    let Some(t) = Test::new().await else {
        return;
    };
    let (flaky, deposits) = flaky_run(&t, u32::MAX).await;
    flaky
        .wait_for(deposits.last().copied(), WAIT)
        .await
        .unwrap();
    // Every later deposit of the one account is behind the poison one.
    let parked = flaky.parked().await.unwrap();
    assert_eq!(parked.len(), 3);
    assert!(flaky.skip_parked(parked[0].event_id).await.unwrap());
    assert!(
        !flaky.skip_parked(parked[0].event_id).await.unwrap(),
        "skipped once"
    );
    assert_eq!(flaky.status().parked, 2);
    let retried = flaky.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (2, 0));
    let expected = [deposits[0], deposits[1], deposits[3], deposits[4]];
    assert_eq!(t.applied_positions().await, expected);
    flaky.stop().await;
    t.end().await;
}

#[tokio::test]
async fn an_event_it_cannot_decode_is_parked_at_once() {
    let Some(t) = Test::new().await else {
        return;
    };
    open(&t.app, "a").await;
    // A deposit whose amount is text (written by hand, or by a broken producer).
    let stream = StreamId {
        aggregate_type: "Account",
        aggregate_id: "a",
    };
    let bad = eda_test::new_event("MoneyDeposited", r#"{"amount":"ten"}"#);
    let metadata = Metadata::default();
    let appended = t.db.store.append(stream, 1, vec![bad], &metadata);
    let position = appended.await.unwrap().position;
    let failures = Arc::new(AtomicU32::new(0));
    let handle = t.start(Flaky::failing(&failures), &t.read).await;
    handle.wait_for(Some(position), WAIT).await.unwrap();
    let parked = handle.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].position, position);
    assert!(
        parked[0].error.contains("cannot decode"),
        "{}",
        parked[0].error
    );
    handle.stop().await;
    t.end().await;
}

#[tokio::test]
async fn a_schema_built_by_another_version_is_refused() {
    let Some(t) = Test::new().await else {
        return;
    };
    t.client
        .batch_execute(&format!(
            "CREATE TABLE {read}.eda_projections (name text PRIMARY KEY, version bigint NOT NULL, position bigint NOT NULL);
             INSERT INTO {read}.eda_projections VALUES ('ledger', 7, 0);",
            read = t.read
        ))
        .await
        .unwrap();
    let builder = t.app.project(LedgerPg).postgres(&t.db.url);
    let error = builder.schema(&t.read).start().await.unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Invalid {
                what: "projection version",
                ..
            }
        ),
        "{error}"
    );
    t.end().await;
}

#[tokio::test]
async fn a_bad_schema_name_is_refused() {
    let Some(t) = Test::new().await else {
        return;
    };
    let builder = t.app.project(LedgerPg).postgres(&t.db.url);
    let error = builder.schema("read; DROP").start().await.unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Invalid {
                what: "schema name",
                ..
            }
        ),
        "{error}"
    );
    t.end().await;
}

/// The runner of the two that applies, once one has: (active, standby).
async fn one_active(
    one: ProjectionHandle<LedgerPg>,
    two: ProjectionHandle<LedgerPg>,
    position: u64,
) -> (ProjectionHandle<LedgerPg>, ProjectionHandle<LedgerPg>) {
    until("applied by one of the runners", || {
        one.status().checkpoint >= position || two.status().checkpoint >= position
    })
    .await;
    if one.status().checkpoint >= position {
        (one, two)
    } else {
        (two, one)
    }
}

#[tokio::test]
async fn a_second_runner_stands_by_and_takes_over_when_the_first_stops() {
    let Some(t) = Test::new().await else {
        return;
    };
    let one = t.ledger().await;
    let two = t.ledger().await;
    open(&t.app, "a").await;
    let position = deposit(&t.app, "a", 1).await;
    let (active, standby) = one_active(one, two, position).await;
    let status = standby.status();
    assert!(is_standby(&status.state), "{status:?}");
    assert_eq!(status.applied, 0);
    let RunnerState::Standby { reason } = &status.state else {
        unreachable!()
    };
    assert!(reason.contains("has its turn"), "{reason}");

    // It stays on standby while the other applies.
    let position = deposit(&t.app, "a", 2).await;
    active.wait_for(Some(position), WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(is_standby(&standby.status().state));
    assert_eq!(standby.status().applied, 0);

    // The first stops: the second takes over within seconds, from where the
    // first left off.
    active.stop().await;
    let stopped = Instant::now();
    let position = deposit(&t.app, "a", 3).await;
    standby.wait_for(Some(position), WAIT).await.unwrap();
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(5), "took over after {took:?}");
    assert_eq!(standby.status().applied, 1, "only the new deposit");
    let rows = t.rows().await;
    assert_eq!((rows.applications.len(), rows.applied_twice()), (4, 0));
    assert_eq!(rows.balances["a"], 6);
    standby.stop().await;
    t.end().await;
}

/// The backend that holds the advisory lock of projection `name` in `schema`.
async fn lock_holder(client: &Client, schema: &str, name: &str) -> Option<i32> {
    let row = client
        .query_opt(
            "SELECT l.pid FROM pg_locks l, (SELECT hashtextextended($1, 0) AS k) key
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid::bigint = (key.k >> 32) & 4294967295
               AND l.objid::bigint = key.k & 4294967295",
            &[&format!("eda.projection {schema}.{name}")],
        )
        .await
        .unwrap();
    row.map(|row| row.get(0))
}

#[tokio::test]
async fn when_the_holders_connection_dies_the_turn_passes_within_seconds() {
    let Some(t) = Test::new().await else {
        return;
    };
    let one = t.ledger().await;
    let two = t.ledger().await;
    open(&t.app, "a").await;
    let position = deposit(&t.app, "a", 1).await;
    let (active, standby) = one_active(one, two, position).await;

    let holder = lock_holder(&t.client, &t.read, "ledger").await.unwrap();
    t.client
        .execute("SELECT pg_terminate_backend($1)", &[&holder])
        .await
        .unwrap();
    let killed = Instant::now();
    // The runner on standby tries every second; the one that lost its
    // connection finds out at its next write, stands by, and tries as well.
    // Either may win; the other stands by.
    let mut new_holder = None;
    while new_holder.is_none() {
        assert!(killed.elapsed() < WAIT, "nobody took the turn");
        tokio::time::sleep(Duration::from_millis(10)).await;
        new_holder = lock_holder(&t.client, &t.read, "ledger")
            .await
            .filter(|pid| *pid != holder);
    }
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "taken over after {took:?}");

    let position = deposit(&t.app, "a", 2).await;
    let (applies, stands_by) = one_active(active, standby, position).await;
    until("the other on standby", || {
        is_standby(&stands_by.status().state)
    })
    .await;
    assert!(!is_standby(&applies.status().state));
    let rows = t.rows().await;
    assert_eq!((rows.applications.len(), rows.applied_twice()), (3, 0));
    eprintln!("the turn passed {took:?} after the holder's connection died");
    applies.stop().await;
    stands_by.stop().await;
    t.end().await;
}

#[tokio::test]
async fn the_checkpoints_compare_and_set_refuses_a_runner_that_lost_its_turn() {
    let Some(t) = Test::new().await else {
        return;
    };
    let ledger = t.ledger().await;
    let opened = open(&t.app, "a").await;
    ledger.wait_for(Some(opened), WAIT).await.unwrap();

    // Behind the runner's back, the checkpoint moves past the next deposit, in
    // a transaction that is open while that deposit commits: the runner cannot
    // read the deposit before its checkpoint moved.
    let mut other = t.db.connect().await;
    let tx = other.transaction().await.unwrap();
    let moved = format!(
        "UPDATE {}.eda_projections SET position = $1 WHERE name = 'ledger'",
        t.read
    );
    let checkpoint = i64::try_from(ledger.status().checkpoint).unwrap();
    tx.execute(&moved, &[&checkpoint]).await.unwrap();
    let skipped = deposit(&t.app, "a", 1).await;
    tx.execute(&moved, &[&i64::try_from(skipped).unwrap()])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The runner's page from its old checkpoint is refused: it stands by, reads
    // the checkpoint again, and goes on after the deposit it never applied.
    let next = deposit(&t.app, "a", 2).await;
    ledger.wait_for(Some(next), WAIT).await.unwrap();
    assert_eq!(t.applied_positions().await, [opened, next]);
    let rows = t.rows().await;
    assert_eq!(rows.balances["a"], 2);
    ledger.stop().await;
    t.end().await;
}

/// 8 writers, each 40 times: a deposit through the `App`, or an append in a
/// transaction of its own that does more work and waits before it commits (a
/// late commit behind later positions) or rolls back. Half the writers share
/// two accounts, so appends conflict too. Meanwhile a naive reader tails the
/// log with `position > last`. Returns the ids of the events committed, and
/// those the naive reader saw.
async fn write_concurrently(t: &Test) -> (HashSet<eda::Uuid>, HashSet<eda::Uuid>) {
    for account in ["shared0", "shared1"] {
        open(&t.app, account).await;
    }
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (app, store) = (t.app.clone(), t.db.store.clone());
        let mut client = t.db.connect().await;
        writers.push(tokio::spawn(async move {
            let mut committed = HashSet::new();
            let own = format!("w{writer}");
            if writer % 2 == 0 {
                open(&app, &own).await;
            }
            for n in 0..40u64 {
                let account = if writer % 2 == 0 {
                    own.clone()
                } else {
                    format!("shared{}", n % 2)
                };
                if !rand::random::<u8>().is_multiple_of(3) {
                    let command = DepositMoney {
                        account,
                        amount: n + 1,
                    };
                    let done = app.execute(command).await.expect("deposit");
                    let position = done.position.unwrap();
                    let log = store.read_all(position - 1, 1).await.unwrap();
                    committed.extend(log.iter().map(|e| e.event_id));
                    continue;
                }
                let stream = StreamId {
                    aggregate_type: "Account",
                    aggregate_id: &account,
                };
                let version = store.read_stream(stream, 0).await.unwrap().len() as u64;
                let tx = client.transaction().await.unwrap();
                let event =
                    eda_test::new_event("MoneyDeposited", &format!(r#"{{"amount":{}}}"#, n + 1));
                let id = event.event_id;
                match store
                    .append_in(&tx, stream, version, vec![event], &Metadata::default())
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => panic!("append failed: {e}"),
                }
                tx.query("SELECT count(*) FROM eda_events", &[])
                    .await
                    .unwrap();
                let pause = u64::from(rand::random::<u8>() % 8);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if rand::random::<u8>().is_multiple_of(4) {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.insert(id);
                }
            }
            committed
        }));
    }
    let writing = Arc::new(AtomicU32::new(8));
    let naive = {
        let (client, writing) = (t.db.connect().await, Arc::clone(&writing));
        tokio::spawn(async move {
            let (mut seen, mut after) = (HashSet::new(), 0i64);
            loop {
                let done = writing.load(Ordering::SeqCst) == 0;
                let rows = client
                    .query(
                        "SELECT position, event_id FROM eda_events WHERE position > $1 ORDER BY position LIMIT 50",
                        &[&after],
                    )
                    .await
                    .unwrap();
                if rows.is_empty() {
                    if done {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for row in rows {
                    after = row.get(0);
                    seen.insert(row.get(1));
                }
            }
        })
    };
    let mut committed = HashSet::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
        writing.fetch_sub(1, Ordering::SeqCst);
    }
    (committed, naive.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_read_model_under_concurrent_writers_equals_a_clean_rebuild() {
    let Some(t) = Test::new().await else {
        return;
    };
    let live = t.ledger().await;
    let (committed, naive) = write_concurrently(&t).await;
    while t.db.store.held_back().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = t.db.store.read_all(0, 100_000).await.unwrap();
    let head = log.last().unwrap().position;
    let deposits: BTreeSet<String> = log
        .iter()
        .filter(|e| e.name == "MoneyDeposited")
        .map(|e| e.event_id.to_string())
        .collect();
    assert!(committed
        .iter()
        .all(|id| log.iter().any(|e| e.event_id == *id)));
    live.wait_for(Some(head), Duration::from_secs(60))
        .await
        .unwrap();
    let rows = t.rows().await;

    let rebuilt_in = t.db.other_schema("rebuilt");
    ledger_pg::create(&t.client, &rebuilt_in).await.unwrap();
    let rebuild = t.start(LedgerPg, &rebuilt_in).await;
    rebuild
        .wait_for(Some(head), Duration::from_secs(60))
        .await
        .unwrap();
    let rebuilt = ledger_pg::read(&t.client, &rebuilt_in).await.unwrap();

    assert_eq!(
        rows.applied_twice(),
        0,
        "the live read model applied events twice"
    );
    assert_eq!(rows.applications.len(), log.len(), "every event, once");
    let applied: BTreeSet<String> = rows.applications.keys().cloned().collect();
    assert!(deposits.is_subset(&applied));
    assert!(
        rows == rebuilt,
        "the live read model differs from a clean rebuild"
    );
    // Control: on the same run, a naive cursor misses events that committed late.
    let missed = log.iter().filter(|e| !naive.contains(&e.event_id)).count();
    assert!(
        missed > 0,
        "the naive cursor missed nothing: this run could not have caught a gap"
    );
    eprintln!(
        "{} events from 8 writers ({} deposits) applied live, as a rebuild does; a naive cursor missed {missed}",
        log.len(),
        deposits.len()
    );
    live.stop().await;
    rebuild.stop().await;
    t.end().await;
}
