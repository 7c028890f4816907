//! Idempotency keys: a retried command appends nothing and returns the first outcome.

#![allow(missing_docs)]

#[path = "../examples/domain/bank.rs"]
mod bank;

use bank::{AccountEvent, DepositMoney, OpenAccount, WithdrawMoney};
use eda::prelude::*;

fn deposit(amount: u64) -> DepositMoney {
    DepositMoney {
        account: "a".into(),
        amount,
    }
}

async fn opened() -> (MemoryStore, App) {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    app.execute(OpenAccount {
        account: "a".into(),
        owner: "ada".into(),
    })
    .await
    .unwrap();
    (store, app)
}

#[tokio::test]
async fn the_same_key_twice_appends_once_and_returns_the_first_outcome() {
    let (store, app) = opened().await;
    let first = app
        .execute(deposit(10))
        .idempotency_key("pay-1")
        .await
        .unwrap();
    assert!(!first.duplicate);
    // Even with a different body, the key decides: the first outcome comes back.
    let second = app
        .execute(deposit(99))
        .idempotency_key("pay-1")
        .await
        .unwrap();
    assert!(second.duplicate);
    assert_eq!(
        (second.version, second.position),
        (first.version, first.position)
    );
    assert!(
        matches!(second.events.as_slice(), [AccountEvent::MoneyDeposited(e)] if e.amount == 10)
    );
    assert_eq!(store.len(), 2);

    // Another App (another process after a restart) recognises it too.
    let other = App::new(store.clone());
    assert!(
        other
            .execute(deposit(10))
            .idempotency_key("pay-1")
            .await
            .unwrap()
            .duplicate
    );
    // A new key is a new command.
    assert_eq!(
        app.execute(deposit(10))
            .idempotency_key("pay-2")
            .await
            .unwrap()
            .version,
        3
    );
    assert_eq!(store.len(), 3);
}

#[tokio::test]
async fn event_ids_are_derived_from_the_key() {
    let (a_store, a) = opened().await;
    let (b_store, b) = opened().await;
    a.execute(deposit(1)).idempotency_key("k").await.unwrap();
    b.execute(deposit(1)).idempotency_key("k").await.unwrap();
    let a_ids: Vec<_> = a_store
        .read_all(1, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    let b_ids: Vec<_> = b_store
        .read_all(1, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(a_ids, b_ids);
    let stored = a_store.read_all(1, 10).await.unwrap();
    assert_eq!(stored[0].metadata.idempotency_key.as_deref(), Some("k"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_commit_once() {
    let (store, _) = opened().await;
    // Separate Apps, so the per-App queue does not serialise them.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = App::new(store.clone());
        tasks.push(tokio::spawn(async move {
            app.execute(deposit(7)).idempotency_key("once").await
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        let done = task.await.unwrap().unwrap();
        assert_eq!(done.version, 2);
        assert!(
            matches!(done.events.as_slice(), [AccountEvent::MoneyDeposited(e)] if e.amount == 7)
        );
        fresh += usize::from(!done.duplicate);
    }
    assert_eq!(fresh, 1, "exactly one execution appended");
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn a_key_reused_on_another_aggregate_is_an_error() {
    let (store, app) = opened().await;
    app.execute(deposit(1)).idempotency_key("k").await.unwrap();
    app.execute(OpenAccount {
        account: "b".into(),
        owner: "bob".into(),
    })
    .await
    .unwrap();
    let err = app
        .execute(DepositMoney {
            account: "b".into(),
            amount: 1,
        })
        .idempotency_key("k")
        .await
        .unwrap_err();
    match err {
        CommandError::IdempotencyKeyReused {
            ref key,
            ref first_stream,
        } => {
            assert_eq!(key, "k");
            assert_eq!(first_stream, &("Account".to_string(), "a".to_string()));
        }
        other => panic!("expected IdempotencyKeyReused, got {other:?}"),
    }
    assert_eq!(store.len(), 3);
}

#[tokio::test]
async fn a_rejected_command_can_be_retried_with_its_key() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let err = app
        .execute(deposit(5))
        .idempotency_key("early")
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(_)));
    app.execute(OpenAccount {
        account: "a".into(),
        owner: "ada".into(),
    })
    .await
    .unwrap();
    let done = app
        .execute(deposit(5))
        .idempotency_key("early")
        .await
        .unwrap();
    assert!(
        !done.duplicate,
        "a rejection stores nothing, so the retry runs"
    );
    assert_eq!(store.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_that_would_now_be_rejected_still_returns_the_first_outcome() {
    let (store, app) = opened().await;
    app.execute(deposit(10)).await.unwrap();
    // Each retry of "withdraw everything" would be rejected on the state after the
    // first one; with the key, every caller gets the first outcome instead.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = App::new(store.clone());
        tasks.push(tokio::spawn(async move {
            let all = WithdrawMoney {
                account: "a".into(),
                amount: 10,
                reference: "all".into(),
            };
            app.execute(all).idempotency_key("withdraw-all").await
        }));
    }
    for task in tasks {
        let done = task
            .await
            .unwrap()
            .expect("every caller sees the committed withdrawal");
        assert_eq!(done.version, 3);
    }
    assert_eq!(store.len(), 3);
}
