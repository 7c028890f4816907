//! One command path for every store: `App` gives the same outcomes, stores the
//! same events and snapshots, and loads the same states whether the store offers
//! `ImmediateStore` (the in-process path, no suspension) or not (the path every
//! durable store takes, awaiting each call), and a wrapper that forwards
//! `EventStore::as_immediate` keeps the in-process path.

#![allow(missing_docs)]

use eda::prelude::*;
use eda::StreamId;
use eda_test::tally::{Add, Tally};
use eda_test::{Route, Routed};
use proptest::prelude::*;

/// One step of a scenario: which of two `App`s on the store executes what.
#[derive(Debug, Clone)]
struct Step {
    app: usize,
    id: &'static str,
    n: u64,
    key: Option<&'static str>,
}

/// Everything a scenario can observe, with what differs by run (event ids,
/// times) left out.
#[derive(Debug, PartialEq)]
struct Observed {
    outcomes: Vec<String>,
    log: Vec<(u64, String, u64, String, u32, String, eda::Metadata)>,
    states: Vec<(String, Tally, u64)>,
    snapshots: Vec<Option<(u64, String)>>,
}

const IDS: [&str; 3] = ["a", "b", "c"];

async fn run(store: impl EventStore + Clone, steps: &[Step]) -> Observed {
    // The second App's cache goes stale whenever the first writes: conflicts.
    let apps = [App::new(store.clone()), App::new(store.clone())];
    let mut outcomes = Vec::new();
    for step in steps {
        let add = Add {
            id: step.id.into(),
            n: step.n,
        };
        let execute = apps[step.app].execute(add);
        let result = match step.key {
            Some(key) => execute.idempotency_key(key).await,
            None => execute.await,
        };
        outcomes.push(match result {
            Ok(done) => format!(
                "v{} at {:?} {:?} duplicate: {}",
                done.version, done.position, done.events, done.duplicate
            ),
            Err(error) => format!("error: {error}"),
        });
    }
    let log = store
        .read_all(0, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let stream = format!("{}/{}", e.aggregate_type, e.aggregate_id);
            let name = (e.name, e.event_version);
            (
                e.position, stream, e.version, name.0, name.1, e.payload, e.metadata,
            )
        })
        .collect();
    let mut states = Vec::new();
    let mut snapshots = Vec::new();
    for id in IDS {
        let fresh = App::new(store.clone());
        let (state, version) = fresh.load_with_version::<Tally>(&id.into()).await.unwrap();
        states.push((id.to_owned(), state, version));
        let stream = StreamId {
            aggregate_type: "Tally",
            aggregate_id: id,
        };
        let snapshot = store.load_snapshot(stream).await.unwrap();
        snapshots.push(snapshot.map(|s| (s.version, s.payload)));
    }
    Observed {
        outcomes,
        log,
        states,
        snapshots,
    }
}

/// The scenario on a `MemoryStore`, on a wrapper forwarding `as_immediate`, and on
/// one that does not: all three must observe the same.
async fn same_on_every_path(steps: &[Step]) -> Observed {
    let direct = run(MemoryStore::new(), steps).await;
    let forwarding = Routed::new(Route::Immediate);
    assert_eq!(run(forwarding.clone(), steps).await, direct);
    assert_eq!(forwarding.async_appends(), 0);
    let awaited = Routed::new(Route::Suspending);
    assert_eq!(run(awaited.clone(), steps).await, direct);
    assert!(awaited.async_appends() > 0 || direct.log.is_empty());
    direct
}

fn step(app: usize, id: &'static str, n: u64, key: Option<&'static str>) -> Step {
    Step { app, id, n, key }
}

#[tokio::test]
async fn every_kind_of_outcome_is_the_same_on_both_paths() {
    const BIG: u64 = u64::MAX / 2;
    let steps = [
        step(0, "a", 5, None),
        step(0, "a", BIG, None),
        step(0, "a", BIG, None),     // rejected: the total would overflow
        step(1, "a", 7, None),       // app 1 replays
        step(0, "a", 9, None),       // app 0's cache is stale: it catches up
        step(0, "b", 2, Some("k1")), // keyed
        step(1, "b", 2, Some("k1")), // the same key again: duplicate
        step(1, "b", 3, Some("k1")), // other arguments: refused
        step(0, "c", 3, Some("k1")), // another aggregate: refused
        step(0, "b", 0, None),       // a no-op
        step(0, "b", 0, Some("k2")), // a keyed no-op
        step(1, "b", 0, Some("k2")), // its duplicate
        step(0, "c", 4, None),
        step(0, "c", 4, None),
        step(1, "c", 4, None), // a snapshot at 3
        step(0, "c", 4, None), // app 0's cache is stale again
    ];
    let observed = same_on_every_path(&steps).await;
    assert_eq!(observed.outcomes[2], "error: the total would overflow");
    assert!(observed.outcomes[6].ends_with("duplicate: true"));
    assert!(observed.outcomes[7].contains("with other arguments"));
    assert!(observed.outcomes[9].starts_with("v1 at None []"));
    assert!(observed.outcomes[11].ends_with("duplicate: true"));
    assert_eq!(observed.states[0].2, 4);
    assert_eq!(observed.states[2].2, 4);
    assert_eq!(observed.snapshots[0].as_ref().map(|s| s.0), Some(3));
    assert_eq!(observed.snapshots[2].as_ref().map(|s| s.0), Some(3));
}

#[tokio::test]
async fn a_store_without_immediate_operations_gets_every_append_awaited() {
    let awaited = Routed::new(Route::Suspending);
    let app = App::new(awaited.clone());
    for n in 2..12 {
        app.execute(Add { id: "a".into(), n }).await.unwrap();
    }
    assert_eq!(awaited.async_appends(), 10);
}

/// The control: a path that loses its snapshots must be told apart from one that
/// keeps them, or the comparisons here prove nothing.
#[tokio::test]
async fn a_path_that_loses_snapshots_is_caught() {
    let steps: Vec<_> = (2..7).map(|n| step(0, "a", n, None)).collect();
    let direct = run(MemoryStore::new(), &steps).await;
    assert_eq!(direct.snapshots[0].as_ref().map(|s| s.0), Some(3));
    let lossy = run(Routed::new(Route::LosesSnapshots), &steps).await;
    assert_eq!(lossy.states, direct.states);
    assert_ne!(lossy, direct);
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (
        0..2usize,
        0..IDS.len(),
        0..6u64,
        prop::option::weighted(0.3, 0..3usize),
    );
    let step = step.prop_map(|(app, id, n, key)| Step {
        app,
        id: IDS[id],
        n,
        key: key.map(|k| ["k0", "k1", "k2"][k]),
    });
    prop::collection::vec(step, 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any sequence of commands from two `App`s (conflicts, rejections, no-ops,
    /// reused and misused keys, snapshots) observes the same on every path.
    #[test]
    fn any_sequence_is_the_same_on_every_path(steps in steps()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(same_on_every_path(&steps));
    }
}
