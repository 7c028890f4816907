//! `MemoryStore` against the conformance suite every store passes.

#![allow(missing_docs)]

mod common;

use common::conformance;
use eda::MemoryStore;

#[tokio::test]
async fn append_and_read_back() {
    conformance::append_and_read_back(MemoryStore::new()).await;
}

#[tokio::test]
async fn wrong_expected_version_is_a_conflict_and_stores_nothing() {
    conformance::wrong_expected_version_is_a_conflict_and_stores_nothing(MemoryStore::new()).await;
}

#[tokio::test]
async fn duplicate_event_ids_are_refused_whole() {
    conformance::duplicate_event_ids_are_refused_whole(MemoryStore::new()).await;
}

#[tokio::test]
async fn empty_append_stores_nothing() {
    conformance::empty_append_stores_nothing(MemoryStore::new()).await;
}

#[tokio::test]
async fn global_log_is_in_commit_order() {
    conformance::global_log_is_in_commit_order(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_one_stream() {
    conformance::concurrent_writers_on_one_stream(MemoryStore::new()).await;
}

#[tokio::test]
async fn snapshots_keep_the_newest_per_stream() {
    conformance::snapshots_keep_the_newest_per_stream(MemoryStore::new()).await;
}

#[tokio::test]
async fn snapshot_and_tail_load_together() {
    conformance::snapshot_and_tail_load_together(MemoryStore::new()).await;
}

#[tokio::test]
async fn undecodable_events_are_typed_errors() {
    conformance::undecodable_events_are_typed_errors(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_sees_every_event_once() {
    conformance::a_tailing_reader_sees_every_event_once(MemoryStore::new()).await;
}

#[test]
fn clones_share_the_same_events() {
    let store = MemoryStore::new();
    let other = store.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        use eda::EventStore;
        let s = common::stream("A", "1");
        store
            .append(s, 0, vec![common::new_event("E", "{}")], &common::meta())
            .await
            .unwrap();
    });
    assert_eq!(other.len(), 1);
    assert!(!other.is_empty());
}
