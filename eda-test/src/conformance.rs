//! The behaviour every `EventStore` must show. Each backend's test file runs every
//! check with a fresh, empty store through [`conformance_tests!`](crate::conformance_tests).

use std::collections::HashSet;
use std::sync::Arc;

use eda::prelude::*;
use eda::{Metadata, ParkedEvent, RecordedEvent, StreamId};

use crate::{meta, new_event, stream};

/// Declares one test per check of the suite, each run through `$with_store`: an
/// async function that gives the check a fresh store and cleans up after it. A
/// check listed here runs on every store. The test crate needs tokio (for
/// `#[tokio::test]`).
#[macro_export]
macro_rules! conformance_tests {
    ($with_store:path) => {
        $crate::conformance_tests!(@each $with_store;
            append_and_read_back,
            wrong_expected_version_is_a_conflict_and_stores_nothing,
            duplicate_event_ids_are_refused_whole,
            empty_append_stores_nothing,
            global_log_is_in_commit_order,
            concurrent_writers_on_one_stream,
            snapshots_keep_the_newest_per_stream,
            snapshot_and_tail_load_together,
            undecodable_events_are_typed_errors,
            a_tailing_reader_sees_every_event_once,
            payloads_read_back_byte_for_byte,
            idempotency_keys_are_kept_with_their_append,
            keyed_no_ops_are_remembered,
            names_are_checked_the_same_way_everywhere,
            the_log_is_read_by_event_name,
            the_log_is_counted_by_event_name,
            checkpoints_move_by_compare_and_set,
            checkpoint_names_are_checked_the_same_way_everywhere,
            one_runner_wins_a_checkpoint_race,
            events_are_parked_per_runner_in_position_order,
            parking_names_are_checked_the_same_way_everywhere,
        );
    };
    (@each $with_store:path; $($name:ident,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            $with_store($crate::conformance::$name).await;
        }
    )*};
}

/// Appended events read back whole, by stream, for replay and by id.
pub async fn append_and_read_back<S: EventStore>(store: S) {
    let s = stream("Account", "a-1");
    let mut metadata = Metadata::default();
    metadata.correlation_id = Some(eda::new_event_id());
    metadata.user.insert("user".into(), "ada".into());
    let events = vec![
        new_event("Opened", r#"{"owner":"ada"}"#),
        new_event("Deposited", r#"{"amount":5}"#),
    ];
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let appended = store.append(s, 0, events, &metadata).await.unwrap();
    assert_eq!(appended.version, 2);

    let read = store.read_stream(s, 0).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(read[0].name, "Opened");
    assert_eq!(read[0].event_version, 1);
    // Stores may normalise the JSON text (PostgreSQL's jsonb does): compare values.
    let payload: serde_json::Value = serde_json::from_str(&read[0].payload).unwrap();
    assert_eq!(payload, serde_json::json!({ "owner": "ada" }));
    assert_eq!(read[0].aggregate_type, "Account");
    assert_eq!(read[0].aggregate_id, "a-1");
    assert_eq!(read[1].metadata, metadata);
    assert!(read[0].position < read[1].position);
    assert_eq!(appended.position, read[1].position);

    let tail = store.read_stream(s, 1).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].version, 2);
    assert!(store.read_stream(s, 2).await.unwrap().is_empty());
    assert!(store
        .read_stream(stream("Account", "other"), 0)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .read_stream(stream("Other", "a-1"), 0)
        .await
        .unwrap()
        .is_empty());

    // Replay's read gives the same events, with replay's fields only.
    let replayed = |after| {
        read.iter()
            .filter(|e| e.version > after)
            .cloned()
            .map(eda::ReplayEvent::from)
            .collect::<Vec<_>>()
    };
    for after in 0..=2 {
        let lean = store.read_for_replay(s, after, 10).await.unwrap();
        assert_eq!(lean, replayed(after), "after version {after}");
    }
    // At most `limit` events, from the first after the version.
    assert_eq!(
        store.read_for_replay(s, 0, 1).await.unwrap(),
        replayed(0)[..1]
    );
    assert_eq!(
        store.read_for_replay(s, 1, 1).await.unwrap(),
        replayed(1)[..1]
    );
    assert!(store
        .read_for_replay(stream("Account", "other"), 0, 10)
        .await
        .unwrap()
        .is_empty());

    let found = store
        .read_event(ids[1])
        .await
        .unwrap()
        .expect("event stored");
    assert_eq!(found.version, 2);
    assert!(store
        .read_event(eda::new_event_id())
        .await
        .unwrap()
        .is_none());
}

/// An append at a stale or future version is a conflict naming both versions.
pub async fn wrong_expected_version_is_a_conflict_and_stores_nothing<S: EventStore>(store: S) {
    let s = stream("Account", "a-1");
    store
        .append(s, 0, vec![new_event("Opened", "{}")], &meta())
        .await
        .unwrap();
    // One event and several: stores may send them differently.
    for (expected, events) in [(0, 1), (2, 1), (7, 1), (0, 2), (2, 3)] {
        let batch = (0..events).map(|_| new_event("Deposited", "{}")).collect();
        let err = store.append(s, expected, batch, &meta()).await.unwrap_err();
        match err {
            StoreError::Conflict {
                expected: e,
                actual,
                ref stream,
            } => {
                assert_eq!((e, actual), (expected, 1));
                assert_eq!(stream.as_stream_id(), s);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store.read_stream(s, 0).await.unwrap().len(), 1);
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 1);
}

/// An event id stored already, on any stream or twice in a batch, refuses the batch.
pub async fn duplicate_event_ids_are_refused_whole<S: EventStore>(store: S) {
    let s = stream("Account", "a-1");
    let first = new_event("Opened", "{}");
    store
        .append(s, 0, vec![first.clone()], &meta())
        .await
        .unwrap();

    // A retried batch: same id again, at the right version.
    let err = store
        .append(
            s,
            1,
            vec![new_event("Deposited", "{}"), first.clone()],
            &meta(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEvent { event_id } if event_id == first.event_id),
        "{err:?}"
    );
    // The same id on another stream is refused too: ids are globally unique.
    let err = store
        .append(stream("Account", "a-2"), 0, vec![first.clone()], &meta())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateEvent { .. }), "{err:?}");
    // Twice within one batch.
    let twin = new_event("Deposited", "{}");
    let err = store
        .append(s, 1, vec![twin.clone(), twin], &meta())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateEvent { .. }), "{err:?}");

    assert_eq!(
        store.read_all(0, 100).await.unwrap().len(),
        1,
        "nothing of a refused batch is stored"
    );
}

/// An append of no events stores nothing, yet checks the version.
pub async fn empty_append_stores_nothing<S: EventStore>(store: S) {
    let s = stream("Account", "a-1");
    let appended = store.append(s, 0, vec![], &meta()).await.unwrap();
    assert_eq!(appended.version, 0);
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    assert!(matches!(
        store.append(s, 3, vec![], &meta()).await,
        Err(StoreError::Conflict { .. })
    ));
}

/// `read_all` returns every event in commit order, and paging by position sees each once.
pub async fn global_log_is_in_commit_order<S: EventStore>(store: S) {
    let mut expected = Vec::new();
    for round in 0..5u64 {
        for id in ["a", "b", "c"] {
            let events = vec![new_event("E", "{}"), new_event("E", "{}")];
            expected.extend(events.iter().map(|e| e.event_id));
            store
                .append(stream("T", id), round * 2, events, &meta())
                .await
                .unwrap();
        }
    }
    let all = store.read_all(0, 1000).await.unwrap();
    assert_eq!(all.iter().map(|e| e.event_id).collect::<Vec<_>>(), expected);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));

    // Paging by position sees every event once.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 4).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 4);
        after = last.position;
        paged.extend(page.into_iter().map(|e| e.event_id));
    }
    assert_eq!(paged, expected);
    assert!(store.read_all(after, 10).await.unwrap().is_empty());
}

/// 8 writers race on one stream, each re-reading the version after a conflict:
/// every append that returned `Ok` is stored exactly once, versions are `1..=n`.
pub async fn concurrent_writers_on_one_stream<S: EventStore>(store: S) {
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let s = stream("Counter", "shared");
            let mut accepted = Vec::new();
            let mut conflicts = 0;
            for n in 0..50 {
                loop {
                    let version = store.read_stream(s, 0).await.unwrap().len() as u64;
                    let event =
                        new_event("Incremented", &format!(r#"{{"writer":{writer},"n":{n}}}"#));
                    let id = event.event_id;
                    match store.append(s, version, vec![event], &meta()).await {
                        Ok(_) => {
                            accepted.push(id);
                            break;
                        }
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("unexpected store error: {e}"),
                    }
                }
            }
            (accepted, conflicts)
        }));
    }
    let mut accepted = HashSet::new();
    for task in tasks {
        let (ids, _conflicts) = task.await.unwrap();
        for id in ids {
            assert!(accepted.insert(id), "an accepted append was reported twice");
        }
    }
    let stored = store
        .read_stream(stream("Counter", "shared"), 0)
        .await
        .unwrap();
    assert_eq!(stored.len(), 400);
    assert_eq!(
        stored.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=400).collect::<Vec<u64>>()
    );
    let stored_ids: HashSet<_> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(
        stored_ids, accepted,
        "every accepted append is stored exactly once, nothing else"
    );
}

/// Each stream keeps its newest snapshot; an older one saved late does not replace it.
pub async fn snapshots_keep_the_newest_per_stream<S: EventStore>(store: S) {
    use eda::Snapshot;
    let (a, b) = (stream("Account", "a"), stream("Account", "b"));
    assert_eq!(store.load_snapshot(a).await.unwrap(), None);
    let at = |version, payload: &str| Snapshot {
        version,
        snapshot_version: 1,
        payload: payload.into(),
        fingerprint: u64::MAX - version,
    };
    store
        .save_snapshot(a, &at(10, r#"{"n":10}"#))
        .await
        .unwrap();
    store.save_snapshot(b, &at(3, r#"{"n":3}"#)).await.unwrap();
    store
        .save_snapshot(a, &at(20, r#"{"n":20}"#))
        .await
        .unwrap();
    // An older snapshot arriving late does not replace a newer one.
    store
        .save_snapshot(a, &at(15, r#"{"n":15}"#))
        .await
        .unwrap();
    let loaded = store.load_snapshot(a).await.unwrap().expect("kept");
    assert_eq!(
        (loaded.version, loaded.snapshot_version, loaded.fingerprint),
        (20, 1, u64::MAX - 20)
    );
    let payload: serde_json::Value = serde_json::from_str(&loaded.payload).unwrap();
    assert_eq!(payload, serde_json::json!({ "n": 20 }));
    assert_eq!(
        store.load_snapshot(b).await.unwrap().map(|s| s.version),
        Some(3)
    );
    assert_eq!(
        store.load_snapshot(stream("Other", "a")).await.unwrap(),
        None
    );
}

/// `read_from_snapshot`: the snapshot and the events from its own on, a page at a time.
pub async fn snapshot_and_tail_load_together<S: EventStore>(store: S) {
    use eda::Snapshot;
    let (s, other) = (stream("Account", "a"), stream("Account", "b"));
    let (snapshot, tail) = store.read_from_snapshot(s, 10).await.unwrap();
    assert!(snapshot.is_none() && tail.is_empty());

    let events = (1..=5).map(|n| new_event("Deposited", &format!(r#"{{"n":{n}}}"#)));
    store.append(s, 0, events.collect(), &meta()).await.unwrap();
    store
        .append(other, 0, vec![new_event("Opened", "{}")], &meta())
        .await
        .unwrap();
    let versions = |tail: &[eda::ReplayEvent]| tail.iter().map(|e| e.version).collect::<Vec<_>>();
    let (snapshot, tail) = store.read_from_snapshot(s, 10).await.unwrap();
    assert!(snapshot.is_none());
    assert_eq!(versions(&tail), [1, 2, 3, 4, 5]);
    let (snapshot, tail) = store.read_from_snapshot(s, 2).await.unwrap();
    assert!(snapshot.is_none());
    assert_eq!(versions(&tail), [1, 2]);

    let at = |version| Snapshot {
        version,
        snapshot_version: 3,
        payload: format!(r#"{{"n":{version}}}"#),
        fingerprint: 7,
    };
    store.save_snapshot(s, &at(2)).await.unwrap();
    let (snapshot, tail) = store.read_from_snapshot(s, 10).await.unwrap();
    let snapshot = snapshot.expect("snapshot");
    assert_eq!(
        (
            snapshot.version,
            snapshot.snapshot_version,
            snapshot.fingerprint
        ),
        (2, 3, 7)
    );
    let payload: serde_json::Value = serde_json::from_str(&snapshot.payload).unwrap();
    assert_eq!(payload, serde_json::json!({ "n": 2 }));
    // From the snapshot's own event on: the caller checks that the stream holds it.
    assert_eq!(versions(&tail), [2, 3, 4, 5]);
    let stored = store.read_stream(s, 1).await.unwrap();
    let positions = |tail: &[eda::ReplayEvent]| tail.iter().map(|e| e.position).collect::<Vec<_>>();
    assert_eq!(
        positions(&tail),
        stored.iter().map(|e| e.position).collect::<Vec<_>>()
    );
    assert!(tail
        .iter()
        .all(|e| e.name == "Deposited" && e.event_version == 1));
    let payload: serde_json::Value = serde_json::from_str(&tail[1].payload).unwrap();
    assert_eq!(payload, serde_json::json!({ "n": 3 }));
    // Pages count the snapshot's own event.
    let (_, tail) = store.read_from_snapshot(s, 2).await.unwrap();
    assert_eq!(versions(&tail), [2, 3]);

    // A snapshot at the head: its own event only.
    store.save_snapshot(s, &at(5)).await.unwrap();
    let (snapshot, tail) = store.read_from_snapshot(s, 10).await.unwrap();
    assert_eq!(snapshot.map(|s| s.version), Some(5));
    assert_eq!(versions(&tail), [5]);
    // A snapshot ahead of its stream comes back with no event of its version.
    store.save_snapshot(s, &at(9)).await.unwrap();
    let (snapshot, tail) = store.read_from_snapshot(s, 10).await.unwrap();
    assert_eq!(snapshot.map(|s| s.version), Some(9));
    assert!(tail.is_empty());
    // Another stream's events are its own.
    let (snapshot, tail) = store.read_from_snapshot(other, 10).await.unwrap();
    assert!(snapshot.is_none());
    assert_eq!(versions(&tail), [1]);
}

/// A small domain of the suite's own, so decode errors can be checked on any store.
pub mod notes {
    use eda::prelude::*;

    /// A note was taken.
    #[event(name = "conformance.Noted")]
    #[derive(Debug)]
    pub struct Noted {
        /// The note.
        pub text: String,
    }

    /// The notes taken, in order.
    #[derive(Debug, Default)]
    pub struct Notebook {
        /// Every note's text.
        pub notes: Vec<String>,
    }

    #[aggregate(name = "conformance.Notebook")]
    impl Notebook {
        #[apply]
        fn noted(&mut self, e: &Noted) {
            self.notes.push(e.text.clone());
        }
    }
}

/// Stored events that cannot be decoded are typed errors naming the position, the
/// aggregate and the event; other aggregates still load.
pub async fn undecodable_events_are_typed_errors<S: EventStore + Clone>(store: S) {
    use eda::{DecodeErrorKind, LoadError};
    let cases: [(&str, &str, u32, &str); 4] = [
        ("payload", "conformance.Noted", 1, "[1]"),
        ("unknown", "conformance.Erased", 1, "{}"),
        ("newer", "conformance.Noted", 9, r#"{"text":"x"}"#),
        ("good", "conformance.Noted", 1, r#"{"text":"fine"}"#),
    ];
    let mut positions = Vec::new();
    for (id, name, version, payload) in cases {
        let event = eda::NewEvent {
            event_id: eda::new_event_id(),
            name: name.into(),
            version,
            payload: payload.into(),
        };
        let appended = store
            .append(stream("conformance.Notebook", id), 0, vec![event], &meta())
            .await
            .unwrap();
        positions.push(appended.position);
    }
    let app = App::new(store);
    for (i, (id, _, _, _)) in cases.iter().enumerate().take(3) {
        match app.load::<notes::Notebook>(&id.to_string()).await {
            Err(LoadError::Decode(e)) => {
                assert_eq!(
                    (e.position, e.aggregate_id.as_str(), e.version),
                    (positions[i], *id, 1),
                    "{e}"
                );
                let expected = match *id {
                    "payload" => matches!(e.kind, DecodeErrorKind::Payload(_)),
                    "unknown" => matches!(e.kind, DecodeErrorKind::UnknownEvent),
                    _ => matches!(e.kind, DecodeErrorKind::NewerVersion { known: 1 }),
                };
                assert!(expected, "{id}: {e}");
            }
            other => panic!("{id}: expected a decode error, got {other:?}"),
        }
    }
    let good = app
        .load::<notes::Notebook>(&"good".to_string())
        .await
        .unwrap();
    assert_eq!(good.notes, ["fine"]);
}

/// 8 writers append to their own and to shared streams while a reader tails
/// `read_all` with its last position as the cursor: the reader sees exactly the
/// final log, in order, nothing skipped or repeated.
pub async fn a_tailing_reader_sees_every_event_once<S: EventStore + Clone>(store: S) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (store, done) = (store.clone(), Arc::clone(&done));
        writers.push(tokio::spawn(async move {
            for n in 0..40 {
                let id = if writer % 2 == 0 {
                    format!("own{writer}")
                } else {
                    format!("shared{}", n % 2)
                };
                loop {
                    let s = stream("Tail", &id);
                    let version = store.read_stream(s, 0).await.unwrap().len() as u64;
                    match store
                        .append(
                            s,
                            version,
                            vec![new_event("E", "{}"), new_event("E", "{}")],
                            &meta(),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let reader = {
        let (store, done) = (store.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let (mut seen, mut after) = (Vec::new(), 0);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            let mut quiet_reads = 0;
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the reader did not catch up in 2 minutes"
                );
                let page = store.read_all(after, 25).await.unwrap();
                if page.is_empty() {
                    // Once the writers finished and every event was seen, a
                    // few empty reads in a row (anything more would show) end
                    // the tail. Until then the feed may trail the commits (a
                    // transaction elsewhere holds PostgreSQL's horizon back).
                    if done.load(Ordering::SeqCst) == 8 && seen.len() >= 8 * 40 * 2 {
                        quiet_reads += 1;
                        if quiet_reads > 50 {
                            return seen;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                for e in page {
                    quiet_reads = 0;
                    after = e.position;
                    seen.push(e.event_id);
                }
            }
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = reader.await.unwrap();
    let full: Vec<_> = store
        .read_all(0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(full.len(), 8 * 40 * 2);
    assert_eq!(seen, full, "the tailing reader saw the final log exactly");
}

/// JSON texts a store might be tempted to rewrite: every read returns each one
/// exactly as it was appended (and snapshots and metadata likewise).
pub const AWKWARD_PAYLOADS: [&str; 8] = [
    r#"{"max":1.7976931348623157e308,"min":-1.7976931348623157e308,"tiny":5e-324}"#,
    r#"{"zero":-0.0,"one":1.0,"ulp":219.92000000000002}"#,
    r#"{"z":1,"a":2,"m":{"y":true,"b":null}}"#,
    r#"{"big":123456789012345678901234567890,"neg":-9223372036854775808}"#,
    r#"{"nul":"a\u0000b","quote":"\"","unicode":"\u00e9\ud83d\ude00 é😀","tab":"\t"}"#,
    "{ \"spaced\" : [ 1 , 2 ] ,\n  \"x\":{} }",
    r#"{"dup":1,"dup":2}"#,
    r#"[1,"two",3.0,[],{}]"#,
];

/// Each of [`AWKWARD_PAYLOADS`] reads back byte for byte through every read.
pub async fn payloads_read_back_byte_for_byte<S: EventStore>(store: S) {
    use eda::Snapshot;
    let s = stream("Payload", "p-1");
    let mut metadata = Metadata::default();
    metadata
        .user
        .insert("nul\u{0}key".into(), "a\u{0}b \u{e9}\u{1F600}\"".into());
    let events: Vec<_> = AWKWARD_PAYLOADS
        .iter()
        .map(|payload| new_event("Awkward", payload))
        .collect();
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    store.append(s, 0, events, &metadata).await.unwrap();

    let payloads = |texts: Vec<String>| {
        assert_eq!(
            texts, AWKWARD_PAYLOADS,
            "payloads as appended, byte for byte"
        );
    };
    let read = store.read_stream(s, 0).await.unwrap();
    assert!(read.iter().all(|e| e.metadata == metadata), "{read:?}");
    payloads(read.into_iter().map(|e| e.payload).collect());
    payloads(
        store
            .read_all(0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect(),
    );
    let mut by_id = Vec::new();
    for id in ids {
        by_id.push(store.read_event(id).await.unwrap().unwrap().payload);
    }
    payloads(by_id);
    payloads(
        store
            .read_for_replay(s, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect(),
    );
    for (i, payload) in AWKWARD_PAYLOADS.iter().enumerate() {
        let snapshot = Snapshot {
            version: i as u64 + 1,
            snapshot_version: 1,
            fingerprint: 0,
            payload: payload.to_string(),
        };
        store.save_snapshot(s, &snapshot).await.unwrap();
        let loaded = store.load_snapshot(s).await.unwrap();
        // A store may keep no snapshots; one that does keeps them exactly.
        if let Some(loaded) = loaded {
            assert_eq!(loaded.payload, *payload);
            let (with_tail, _) = store.read_from_snapshot(s, 100).await.unwrap();
            assert_eq!(with_tail.map(|s| s.payload).as_deref(), Some(*payload));
        }
    }
}

/// An append with an idempotency key keeps the key's record in the same
/// transaction, also when it appends nothing; a key stored already refuses the
/// whole append.
pub async fn idempotency_keys_are_kept_with_their_append<S: EventStore>(store: S) {
    let s = stream("Account", "k-1");
    let keyed = |key: &str| {
        let mut metadata = Metadata::default();
        metadata.idempotency_key = Some(key.into());
        metadata.command = Some("Deposit".into());
        metadata.command_fingerprint = Some(eda::Uuid::from_u128(7));
        metadata
    };
    assert_eq!(store.read_idempotency_key("k1").await.unwrap(), None);
    let events = vec![new_event("Opened", "{}"), new_event("Deposited", "{}")];
    let appended = store.append(s, 0, events, &keyed("k1")).await.unwrap();
    let record = store.read_idempotency_key("k1").await.unwrap().unwrap();
    assert_eq!(
        record,
        eda::IdempotencyRecord {
            key: "k1".into(),
            aggregate_type: "Account".into(),
            aggregate_id: "k-1".into(),
            command: "Deposit".into(),
            fingerprint: Some(eda::Uuid::from_u128(7)),
            expected_version: 0,
            version: 2,
            position: Some(appended.position),
        }
    );
    // Nothing to append, but the key is remembered at the version decided on.
    store.append(s, 2, vec![], &keyed("k2")).await.unwrap();
    let record = store.read_idempotency_key("k2").await.unwrap().unwrap();
    assert_eq!(
        (record.expected_version, record.version, record.position),
        (2, 2, None)
    );
    // Only at that version.
    let err = store.append(s, 1, vec![], &keyed("k3")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 2, .. }),
        "{err:?}"
    );
    let err = store
        .append(s, 1, vec![new_event("Deposited", "{}")], &keyed("k4"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    for key in ["k3", "k4"] {
        assert_eq!(
            store.read_idempotency_key(key).await.unwrap(),
            None,
            "{key}"
        );
    }
    // A stored key refuses the append whole, with events or without.
    for events in [vec![new_event("Deposited", "{}")], vec![]] {
        let err = store.append(s, 2, events, &keyed("k1")).await.unwrap_err();
        assert!(
            matches!(err, StoreError::DuplicateKey { ref key } if key == "k1"),
            "{err:?}"
        );
    }
    let err = store
        .append(
            stream("Account", "k-2"),
            0,
            vec![new_event("Opened", "{}")],
            &keyed("k2"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateKey { .. }), "{err:?}");
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 2);
    let record = store.read_idempotency_key("k1").await.unwrap().unwrap();
    assert_eq!(record.version, 2, "the first record stands");
}

/// A small task-based domain: correcting an address to the one already held
/// changes nothing.
pub mod customers {
    use eda::prelude::*;

    /// The address was changed.
    #[event(name = "conformance.AddressCorrected")]
    #[derive(Debug, Clone, PartialEq)]
    pub struct AddressCorrected {
        /// The new address.
        pub address: String,
    }

    /// Set the address (no event if it is the one held).
    #[command]
    #[derive(Debug, Clone)]
    pub struct CorrectAddress {
        /// The customer's id.
        #[aggregate_id]
        pub customer: String,
        /// The address to hold.
        pub address: String,
    }

    /// A customer and their address.
    #[derive(Debug, Default)]
    pub struct Customer {
        /// The address held.
        pub address: String,
    }

    #[aggregate(name = "conformance.Customer", error = std::convert::Infallible)]
    impl Customer {
        #[handle]
        fn correct(
            &self,
            cmd: CorrectAddress,
        ) -> Result<Option<AddressCorrected>, std::convert::Infallible> {
            Ok((cmd.address != self.address).then_some(AddressCorrected {
                address: cmd.address,
            }))
        }
        #[apply]
        fn corrected(&mut self, e: &AddressCorrected) {
            self.address = e.address.clone();
        }
    }
}

/// A keyed command that changed nothing is remembered: retried after a real
/// change, it must not append its (now stale) correction.
pub async fn keyed_no_ops_are_remembered<S: EventStore + Clone>(store: S) {
    use customers::{CorrectAddress, Customer};
    let app = App::new(store.clone());
    let correct = |address: &str| CorrectAddress {
        customer: "c-1".into(),
        address: address.into(),
    };
    app.execute(correct("Main St 1")).await.unwrap();
    let noop = app
        .execute(correct("Main St 1"))
        .idempotency_key("fix-1")
        .await
        .unwrap();
    assert!(!noop.duplicate && noop.events.is_empty());
    assert_eq!((noop.version, noop.position), (1, None));
    app.execute(correct("Elm St 2"))
        .idempotency_key("fix-2")
        .await
        .unwrap();
    // The client never got the first answer and retries, through another App.
    for app in [app, App::new(store.clone())] {
        let retried = app
            .execute(correct("Main St 1"))
            .idempotency_key("fix-1")
            .await
            .unwrap();
        assert!(retried.duplicate, "the first outcome, a no-op, comes back");
        assert!(retried.events.is_empty());
        assert_eq!((retried.version, retried.position), (1, None));
    }
    let customer: Customer = App::new(store.clone())
        .load(&"c-1".to_string())
        .await
        .unwrap();
    assert_eq!(customer.address, "Elm St 2", "the fix stands");
    assert_eq!(
        store
            .read_stream(stream("conformance.Customer", "c-1"), 0)
            .await
            .unwrap()
            .len(),
        2
    );
}

/// Ids, names and keys every store can keep are kept; others are refused with
/// [`StoreError::Invalid`] before anything is stored, the same way on every store.
pub async fn names_are_checked_the_same_way_everywhere<S: EventStore>(store: S) {
    // Random ids of the longest length: an index entry that does not compress.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = |len: usize| -> String {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'!' + (seed % 90) as u8)
            })
            .collect()
    };
    let longest = random(eda::MAX_AGGREGATE_ID_BYTES);
    let wide = "€".repeat(eda::MAX_AGGREGATE_ID_BYTES / 3);
    for id in [longest.as_str(), wide.as_str(), "", "ok \u{1}\u{7f} é"] {
        store
            .append(
                stream("Names", id),
                0,
                vec![new_event("Noted", "{}")],
                &meta(),
            )
            .await
            .unwrap_or_else(|e| panic!("{} bytes: {e}", id.len()));
        assert_eq!(
            store
                .read_stream(stream("Names", id), 0)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    let too_long = random(eda::MAX_AGGREGATE_ID_BYTES + 1);
    let mut bad_key = Metadata::default();
    bad_key.idempotency_key = Some("key\0".into());
    let cases: Vec<(StreamId<'_>, eda::NewEvent, &Metadata, &str)> = vec![
        (
            stream("Names", "nul\0id"),
            new_event("Noted", "{}"),
            &META,
            "aggregate id",
        ),
        (
            stream("Names", &too_long),
            new_event("Noted", "{}"),
            &META,
            "aggregate id",
        ),
        (
            stream("", "x"),
            new_event("Noted", "{}"),
            &META,
            "aggregate type",
        ),
        (
            stream("Na\0mes", "x"),
            new_event("Noted", "{}"),
            &META,
            "aggregate type",
        ),
        (
            stream("Names", "x"),
            new_event("", "{}"),
            &META,
            "event name",
        ),
        (
            stream("Names", "x"),
            new_event("Noted", "{}"),
            &bad_key,
            "idempotency key",
        ),
    ];
    for (s, event, metadata, field) in cases {
        let err = store.append(s, 0, vec![event], metadata).await.unwrap_err();
        match err {
            StoreError::Invalid { what, .. } => assert_eq!(what, field),
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(visible(&store, 4).await, 4, "nothing else stored");
}

/// How many events `read_all` returns once it returns at least `expected` (at
/// most 10 s later): PostgreSQL's reads stop below the oldest transaction still
/// running in the database, which another test's may be for a moment.
async fn visible<S: EventStore>(store: &S, expected: usize) -> usize {
    let started = std::time::Instant::now();
    loop {
        let found = store.read_all(0, 10_000).await.unwrap().len();
        if found >= expected || started.elapsed() > std::time::Duration::from_secs(10) {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

static META: std::sync::LazyLock<Metadata> = std::sync::LazyLock::new(Metadata::default);

/// `read_all_of`: the events of the given names, in position order, in pages that
/// add up to the filtered `read_all`; `read_to` moves past events of other names,
/// and nothing is found again below it.
pub async fn the_log_is_read_by_event_name<S: EventStore>(store: S) {
    let names = ["Opened", "Deposited", "Withdrawn", "Closed"];
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let batch: Vec<_> = (0..7)
            .map(|n| new_event(names[(n + i) % names.len()], "{}"))
            .collect();
        store
            .append(stream("Account", id), 0, batch, &meta())
            .await
            .unwrap();
    }
    let all = store.read_all(0, 1_000).await.unwrap();
    let head = all.last().unwrap().position;
    let wanted = ["Deposited", "Closed"];
    let expected: Vec<_> = all
        .iter()
        .filter(|e| wanted.contains(&e.name.as_str()))
        .cloned()
        .collect();
    assert!(!expected.is_empty() && expected.len() < all.len());

    let whole = store.read_all_of(0, 1_000, &wanted).await.unwrap();
    assert_eq!(whole.events, expected);
    assert!(whole.read_to >= head, "{} < {head}", whole.read_to);

    // Page by page, continuing from `read_to`.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all_of(after, 2, &wanted).await.unwrap();
        assert!(page.read_to >= after);
        if page.events.len() == 2 {
            assert_eq!(page.read_to, page.events[1].position);
        }
        let done = page.events.len() < 2;
        paged.extend(page.events);
        after = page.read_to;
        if done {
            break;
        }
    }
    assert_eq!(paged, expected);
    assert!(after >= head);

    // Names no event has: nothing, but the log was read.
    let none = store.read_all_of(0, 10, &["Nope"]).await.unwrap();
    assert!(none.events.is_empty());
    assert!(none.read_to >= head);
    assert!(store
        .read_all_of(0, 10, &[])
        .await
        .unwrap()
        .events
        .is_empty());

    // Later events are found after `read_to`, and only they.
    let later = vec![new_event("Closed", "{}"), new_event("Opened", "{}")];
    store
        .append(stream("Account", "d"), 0, later, &meta())
        .await
        .unwrap();
    let next = store.read_all_of(whole.read_to, 10, &wanted).await.unwrap();
    let found: Vec<_> = next
        .events
        .iter()
        .map(|e| (e.aggregate_id.as_str(), e.name.as_str()))
        .collect();
    assert_eq!(found, [("d", "Closed")]);
    assert!(next.read_to > whole.read_to);
}

/// `count_all_of`: as many events as `read_all_of` finds, from any position;
/// counting on from `read_to` counts only the events appended since. (A store
/// may not count: `None` passes.)
pub async fn the_log_is_counted_by_event_name<S: EventStore>(store: S) {
    let wanted = ["Deposited", "Closed"];
    let Some(empty) = store.count_all_of(0, &wanted).await.unwrap() else {
        return;
    };
    assert_eq!((empty.events, empty.read_to), (0, 0));
    let names = ["Opened", "Deposited", "Withdrawn", "Closed"];
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let batch: Vec<_> = (0..7)
            .map(|n| new_event(names[(n + i) % names.len()], "{}"))
            .collect();
        store
            .append(stream("Account", id), 0, batch, &meta())
            .await
            .unwrap();
    }
    let all = store.read_all(0, 1_000).await.unwrap();
    let head = all.last().unwrap().position;
    let wanted_after = |after: u64| {
        all.iter()
            .filter(|e| e.position > after && wanted.contains(&e.name.as_str()))
            .count() as u64
    };
    let whole = store.count_all_of(0, &wanted).await.unwrap().unwrap();
    assert_eq!(whole.events, wanted_after(0));
    assert!(whole.read_to >= head, "{} < {head}", whole.read_to);
    let middle = all[all.len() / 2].position;
    let tail = store.count_all_of(middle, &wanted).await.unwrap().unwrap();
    assert_eq!(tail.events, wanted_after(middle));
    assert_eq!(
        store
            .count_all_of(0, &["Nope"])
            .await
            .unwrap()
            .unwrap()
            .events,
        0
    );

    // Counting on from `read_to` counts what came since, once.
    let later = vec![new_event("Closed", "{}"), new_event("Opened", "{}")];
    store
        .append(stream("Account", "d"), 0, later, &meta())
        .await
        .unwrap();
    let next = store
        .count_all_of(whole.read_to, &wanted)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.events, 1);
    assert!(next.read_to > whole.read_to);
    let again = store
        .count_all_of(next.read_to, &wanted)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.events, again.read_to), (0, next.read_to));
}

/// The checkpoint found by a write that was refused, or a panic naming `what`.
fn moved(result: Result<(), StoreError>, what: &str) -> (Option<u64>, Option<u64>) {
    match result {
        Err(StoreError::CheckpointMoved {
            expected, found, ..
        }) => (expected, found),
        other => panic!("{what}: expected CheckpointMoved, got {other:?}"),
    }
}

/// A checkpoint is stored under its name and moved only from where it is: a first
/// write where one is stored already, or a stale `from`, changes nothing and says
/// what it found.
pub async fn checkpoints_move_by_compare_and_set<S: EventStore>(store: S) {
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), None);
    // Moving a checkpoint that does not exist is refused, and creates none.
    let refused = store.write_checkpoint("mailer", Some(0), 5).await;
    assert_eq!(moved(refused, "from 0, none stored"), (Some(0), None));
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), None);

    store.write_checkpoint("mailer", None, 10).await.unwrap();
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(10));
    // A second first write: another runner got there first.
    let err = store.write_checkpoint("mailer", None, 3).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "checkpoint `mailer` was moved by another runner: expected none, found position 10"
    );
    assert!(
        matches!(
            err,
            StoreError::CheckpointMoved { ref name, expected: None, found: Some(10) }
                if name == "mailer"
        ),
        "{err:?}"
    );
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(10));

    store
        .write_checkpoint("mailer", Some(10), 25)
        .await
        .unwrap();
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(25));
    // Stale, and ahead: neither moves it.
    for stale in [10, 0, 26, u64::from(u32::MAX)] {
        let refused = store.write_checkpoint("mailer", Some(stale), 30).await;
        assert_eq!(moved(refused, "stale"), (Some(stale), Some(25)));
    }
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(25));
    // To where it is, and back (a runner that starts over).
    store
        .write_checkpoint("mailer", Some(25), 25)
        .await
        .unwrap();
    store.write_checkpoint("mailer", Some(25), 0).await.unwrap();
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(0));
    let big = 1 << 60;
    store
        .write_checkpoint("mailer", Some(0), big)
        .await
        .unwrap();
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(big));

    // Names are independent of each other, and case matters.
    assert_eq!(store.read_checkpoint("Mailer").await.unwrap(), None);
    assert_eq!(store.read_checkpoint("mailer ").await.unwrap(), None);
    store.write_checkpoint("ledger", None, 7).await.unwrap();
    store.write_checkpoint("Mailer", None, 1).await.unwrap();
    store.write_checkpoint("ledger", Some(7), 8).await.unwrap();
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), Some(big));
    assert_eq!(store.read_checkpoint("ledger").await.unwrap(), Some(8));
    assert_eq!(store.read_checkpoint("Mailer").await.unwrap(), Some(1));
    // Checkpoints are not events.
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
}

/// Checkpoint names are checked as event names are: 1 to 255 bytes, no NUL,
/// refused with [`StoreError::Invalid`] by reads and writes on every store.
pub async fn checkpoint_names_are_checked_the_same_way_everywhere<S: EventStore>(store: S) {
    let longest = "n".repeat(eda::MAX_NAME_BYTES);
    let wide = "€".repeat(eda::MAX_NAME_BYTES / 3);
    for name in [longest.as_str(), wide.as_str(), "ok \u{1}\u{7f} é", "'; --"] {
        store
            .write_checkpoint(name, None, 4)
            .await
            .unwrap_or_else(|e| panic!("{} bytes: {e}", name.len()));
        assert_eq!(store.read_checkpoint(name).await.unwrap(), Some(4));
    }
    let too_long = "n".repeat(eda::MAX_NAME_BYTES + 1);
    for name in ["", "nul\0name", too_long.as_str()] {
        let invalid = |result: Result<_, StoreError>, call: &str| match result {
            Err(StoreError::Invalid { what, .. }) => assert_eq!(what, "checkpoint name"),
            other => panic!("{call} of {name:?}: expected Invalid, got {other:?}"),
        };
        invalid(store.write_checkpoint(name, None, 1).await, "write");
        invalid(store.write_checkpoint(name, Some(1), 2).await, "move");
        invalid(store.read_checkpoint(name).await.map(drop), "read");
    }
}

/// 8 runners read the same checkpoint and race to move it, round after round (the
/// first round to create it): in each, exactly one wins, and every other one is
/// told the winner's position.
pub async fn one_runner_wins_a_checkpoint_race<S: EventStore>(store: S) {
    const RUNNERS: u64 = 8;
    let store = Arc::new(store);
    let mut at = None;
    for round in 0..10u64 {
        let start = Arc::new(tokio::sync::Barrier::new(RUNNERS as usize));
        let tasks: Vec<_> = (0..RUNNERS)
            .map(|runner| {
                let (store, start) = (Arc::clone(&store), Arc::clone(&start));
                let to = (round + 1) * 100 + runner;
                tokio::spawn(async move {
                    start.wait().await;
                    (to, store.write_checkpoint("race", at, to).await)
                })
            })
            .collect();
        let mut won = Vec::new();
        let mut lost = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (to, Ok(())) => won.push(to),
                (_, result) => lost.push(moved(result, "a runner that lost")),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: winners {won:?}");
        let winner = Some(won[0]);
        assert!(
            lost.iter().all(|&lost| lost == (at, winner)),
            "round {round} from {at:?}, won by {winner:?}: {lost:?}"
        );
        assert_eq!(store.read_checkpoint("race").await.unwrap(), winner);
        at = winner;
    }
}

/// `count` events of one customer, appended, as the log has them.
async fn logged<S: EventStore>(store: &S, count: usize) -> Vec<RecordedEvent> {
    let events = (0..count).map(|_| new_event("Registered", "{}")).collect();
    store
        .append(stream("Customer", "c-1"), 0, events, &meta())
        .await
        .unwrap();
    store.read_all(0, 1_000).await.unwrap()
}

/// Parked events are listed in position order whatever the order they were parked
/// in; parking one again replaces its error only; `unpark` removes one, once;
/// each runner has its own; none of them is an event of the log.
pub async fn events_are_parked_per_runner_in_position_order<S: EventStore>(store: S) {
    let log = logged(&store, 4).await;
    assert!(store.parked("mailer").await.unwrap().is_empty());
    let parked: Vec<_> = log
        .iter()
        .map(|e| ParkedEvent::from_event(e, format!("smtp: timed out at {}", e.position)))
        .collect();
    for i in [2, 0, 3] {
        store.park("mailer", &parked[i]).await.unwrap();
    }
    let expected = [parked[0].clone(), parked[2].clone(), parked[3].clone()];
    assert_eq!(store.parked("mailer").await.unwrap(), expected);

    // Parked again (a retry that failed): the new error, the rest as first parked.
    let mut again = ParkedEvent::from_event(&log[2], "smtp: refused");
    again.aggregate_id = "elsewhere".into();
    again.name = "Renamed".into();
    store.park("mailer", &again).await.unwrap();
    let mut retried = parked[2].clone();
    retried.error = "smtp: refused".into();
    let expected = [parked[0].clone(), retried.clone(), parked[3].clone()];
    assert_eq!(store.parked("mailer").await.unwrap(), expected);

    // Removed once; a position with nothing parked removes nothing.
    assert!(store.unpark("mailer", log[0].position).await.unwrap());
    assert!(!store.unpark("mailer", log[0].position).await.unwrap());
    assert!(!store.unpark("mailer", log[1].position).await.unwrap());
    assert!(!store.unpark("mailer", 1 << 40).await.unwrap());
    let expected = [retried.clone(), parked[3].clone()];
    assert_eq!(store.parked("mailer").await.unwrap(), expected);
    // Parked anew after its removal.
    store.park("mailer", &parked[0]).await.unwrap();
    assert_eq!(store.parked("mailer").await.unwrap().len(), 3);
    assert!(store.unpark("mailer", log[0].position).await.unwrap());

    // Each runner has its own, and case matters.
    assert!(store.parked("Mailer").await.unwrap().is_empty());
    assert!(store.parked("mailer ").await.unwrap().is_empty());
    assert!(!store.unpark("Mailer", log[2].position).await.unwrap());
    let ledger = ParkedEvent::from_event(&log[2], "ledger: account closed");
    store.park("ledger", &ledger).await.unwrap();
    assert_eq!(store.parked("ledger").await.unwrap(), [ledger]);
    assert_eq!(store.parked("mailer").await.unwrap(), expected);
    assert!(store.unpark("ledger", log[2].position).await.unwrap());
    assert!(store.parked("ledger").await.unwrap().is_empty());
    assert_eq!(store.parked("mailer").await.unwrap(), expected);

    // Parked events are not events, nor checkpoints.
    assert_eq!(store.read_all(0, 1_000).await.unwrap(), log);
    let page = store.read_all_of(0, 1_000, &["Registered"]).await.unwrap();
    assert_eq!(page.events, log);
    assert_eq!(store.read_checkpoint("mailer").await.unwrap(), None);
}

/// Runner names are checked as checkpoint names by `park`, `parked` and `unpark`;
/// a parked event's stream and name as an append's, its error for NUL (and not
/// for length): others are refused with [`StoreError::Invalid`] by every store,
/// and nothing is parked.
pub async fn parking_names_are_checked_the_same_way_everywhere<S: EventStore>(store: S) {
    let log = logged(&store, 1).await;
    let event = ParkedEvent::from_event(&log[0], "failed");
    let longest = "n".repeat(eda::MAX_NAME_BYTES);
    let wide = "€".repeat(eda::MAX_NAME_BYTES / 3);
    for name in [longest.as_str(), wide.as_str(), "ok \u{1}\u{7f} é", "'; --"] {
        store
            .park(name, &event)
            .await
            .unwrap_or_else(|e| panic!("{} bytes: {e}", name.len()));
        assert_eq!(
            store.parked(name).await.unwrap(),
            std::slice::from_ref(&event)
        );
        assert!(store.unpark(name, event.position).await.unwrap());
    }
    let invalid = |result: Result<(), StoreError>, call: &str, field: &str| match result {
        Err(StoreError::Invalid { what, .. }) => assert_eq!(what, field, "{call}"),
        other => panic!("{call}: expected Invalid, got {other:?}"),
    };
    let too_long = "n".repeat(eda::MAX_NAME_BYTES + 1);
    for name in ["", "nul\0name", too_long.as_str()] {
        let name_of = |call: &str| format!("{call} of {name:?}");
        let field = "checkpoint name";
        invalid(store.park(name, &event).await, &name_of("park"), field);
        invalid(
            store.parked(name).await.map(drop),
            &name_of("parked"),
            field,
        );
        invalid(
            store.unpark(name, 1).await.map(drop),
            &name_of("unpark"),
            field,
        );
    }

    let changed = |change: fn(&mut ParkedEvent)| {
        let mut bad = event.clone();
        change(&mut bad);
        bad
    };
    let refused = [
        (
            changed(|e| e.aggregate_id = "nul\0id".into()),
            "aggregate id",
        ),
        (
            changed(|e| e.aggregate_type = String::new()),
            "aggregate type",
        ),
        (changed(|e| e.name = "Na\0me".into()), "event name"),
        (
            changed(|e| e.name = "n".repeat(eda::MAX_NAME_BYTES + 1)),
            "event name",
        ),
        (changed(|e| e.error = "smtp: \0".into()), "parked error"),
    ];
    for (bad, field) in refused {
        invalid(store.park("mailer", &bad).await, field, field);
    }
    assert!(store.parked("mailer").await.unwrap().is_empty());

    // An error of any length and text is kept as it was given.
    let mut long = event.clone();
    long.error = "smtp: 550 \"mailbox\" ünavailable 📭\n\t'; --".repeat(5_000);
    long.aggregate_id = String::new();
    store.park("mailer", &long).await.unwrap();
    assert_eq!(store.parked("mailer").await.unwrap(), [long]);
}
