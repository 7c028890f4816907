//! Runners' checkpoints against a model: random sequences of reads and
//! compare-and-set writes give, on every store, the outcomes of one plain
//! `Option<u64>` per name. (The conformance suite has the examples and the race.)

#![allow(missing_docs)]

use eda::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Names per case: enough for a write to one to be checked against the others.
const NAMES: usize = 3;

/// Where a write moves a checkpoint from.
#[derive(Debug, Clone)]
enum From {
    /// Where the model says it is: the write succeeds.
    Current,
    /// A position drawn at random (often stale, sometimes current by chance).
    Drawn(Option<u64>),
}

#[derive(Debug, Clone)]
enum Op {
    Read(usize),
    Write { name: usize, from: From, to: u64 },
}

/// Small positions, so that drawn `from`s often meet the stored one.
fn op() -> impl Strategy<Value = Op> {
    let from = prop_oneof![
        2 => Just(From::Current),
        1 => proptest::option::of(0..6u64).prop_map(From::Drawn),
    ];
    prop_oneof![
        1 => (0..NAMES).prop_map(Op::Read),
        3 => (0..NAMES, from, 0..6u64).prop_map(|(name, from, to)| Op::Write { name, from, to }),
    ]
}

/// Runs `ops` on checkpoints of names of their own (`case`), each outcome checked
/// against the model as it goes, then every checkpoint read back.
async fn matches_the_model<S: EventStore>(store: &S, case: usize, ops: Vec<Op>) {
    let names: Vec<String> = (0..NAMES)
        .map(|i| format!("case-{case}-runner-{i}"))
        .collect();
    let mut model = [None; NAMES];
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Read(i) => {
                let read = store.read_checkpoint(&names[i]).await.unwrap();
                assert_eq!(read, model[i], "step {step}: read {}", names[i]);
            }
            Op::Write { name: i, from, to } => {
                let from = match from {
                    From::Current => model[i],
                    From::Drawn(from) => from,
                };
                let result = store.write_checkpoint(&names[i], from, to).await;
                if from == model[i] {
                    result.unwrap_or_else(|e| panic!("step {step}: {e}"));
                    model[i] = Some(to);
                    continue;
                }
                match result {
                    Err(StoreError::CheckpointMoved {
                        name,
                        expected,
                        found,
                    }) => assert_eq!(
                        (name.as_str(), expected, found),
                        (names[i].as_str(), from, model[i]),
                        "step {step}"
                    ),
                    other => panic!("step {step}: {from:?} -> {to} at {model:?}: {other:?}"),
                }
            }
        }
    }
    for (name, expected) in names.iter().zip(model) {
        assert_eq!(store.read_checkpoint(name).await.unwrap(), expected);
    }
}

fn against_the_model<S: EventStore>(store: S, cases: u32, rt: &tokio::runtime::Runtime) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::cell::Cell::new(0);
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            case.set(case.get() + 1);
            rt.block_on(matches_the_model(&store, case.get(), ops));
            Ok(())
        })
        .unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn checkpoints_follow_the_model_on_the_memory_store() {
    against_the_model(MemoryStore::new(), 256, &runtime());
}

#[cfg(feature = "sqlite")]
#[test]
fn checkpoints_follow_the_model_on_sqlite() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = rt
        .block_on(SqliteStore::open(dir.path().join("checkpoints.db")))
        .unwrap();
    against_the_model(store, 64, &rt);
}

#[cfg(feature = "postgres")]
#[test]
fn checkpoints_follow_the_model_on_postgres() {
    let rt = runtime();
    let Some(db) = rt.block_on(eda_test::postgres::TestDb::new()) else {
        return;
    };
    against_the_model(db.store.clone(), 64, &rt);
    rt.block_on(db.drop_schema());
}
