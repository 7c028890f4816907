//! `MemoryStore` against the conformance suite every store passes.

#![allow(missing_docs)]

use eda::MemoryStore;

/// Runs a conformance check on a fresh store.
async fn with_store<F: std::future::Future<Output = ()>>(check: impl FnOnce(MemoryStore) -> F) {
    check(MemoryStore::new()).await;
}

eda_test::conformance_tests!(with_store);

#[test]
fn clones_share_the_same_events() {
    let store = MemoryStore::new();
    let other = store.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        use eda::EventStore;
        let s = eda_test::stream("A", "1");
        store
            .append(
                s,
                0,
                vec![eda_test::new_event("E", "{}")],
                &eda_test::meta(),
            )
            .await
            .unwrap();
    });
    assert_eq!(other.len(), 1);
    assert!(!other.is_empty());
}

/// `EventStore::read_all_of`'s default (filtering `read_all`'s pages), through a
/// wrapper that does not override it, behaves as the stores' own queries.
#[tokio::test]
async fn the_default_read_all_of_reads_the_log_by_event_name() {
    eda_test::conformance::the_log_is_read_by_event_name(eda_test::YieldingStore::default()).await;
}
