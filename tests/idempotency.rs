//! Idempotency keys: a retried command appends nothing and returns the first outcome.

#![allow(missing_docs)]

use eda::prelude::*;
use eda_test::bank::{open_account, AccountEvent, DepositMoney, OpenAccount, WithdrawMoney};
use eda_test::YieldingStore;

fn deposit(amount: u64) -> DepositMoney {
    DepositMoney {
        account: "a".into(),
        amount,
    }
}

fn withdraw_all() -> WithdrawMoney {
    WithdrawMoney {
        account: "a".into(),
        amount: 10,
        reference: "all".into(),
    }
}

async fn opened() -> (MemoryStore, App) {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    open_account(&app, "a").await;
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
    let second = app
        .execute(deposit(10))
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

/// Eight executions of one keyed command race: exactly one appends, every caller
/// gets its outcome, even those whose own decision, made after the first committed,
/// would be a rejection. Run through one App (callers queue on the aggregate) and
/// through eight Apps, on a store whose calls yield so the tasks interleave.
async fn racing_duplicates(apps: Vec<App>, store: MemoryStore, command: fn() -> WithdrawMoney) {
    let mut tasks = Vec::new();
    for app in apps.into_iter().cycle().take(8) {
        tasks.push(tokio::spawn(async move {
            app.execute(command()).idempotency_key("once").await
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        let done = task
            .await
            .unwrap()
            .expect("every caller gets the committed outcome");
        assert_eq!(done.version, 3);
        assert!(
            matches!(done.events.as_slice(), [AccountEvent::MoneyWithdrawn(e)] if e.amount == 10)
        );
        fresh += usize::from(!done.duplicate);
    }
    assert_eq!(fresh, 1, "exactly one execution appended");
    assert_eq!(store.len(), 3);
}

async fn funded(store: &YieldingStore) -> App {
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    app.execute(deposit(10)).await.unwrap();
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_duplicates_through_one_app() {
    let store = YieldingStore::default();
    let app = funded(&store).await;
    racing_duplicates(vec![app], store.0, withdraw_all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_duplicates_through_many_apps() {
    let store = YieldingStore::default();
    funded(&store).await;
    let apps = (0..8).map(|_| App::new(store.clone())).collect();
    racing_duplicates(apps, store.0, withdraw_all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_duplicates_on_the_memory_store() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    app.execute(deposit(10)).await.unwrap();
    let apps = (0..4)
        .map(|_| App::new(store.clone()))
        .chain([app])
        .collect();
    racing_duplicates(apps, store, withdraw_all).await;
}

#[tokio::test]
async fn a_key_reused_on_another_aggregate_or_command_is_an_error() {
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
            ref first_command,
            ref first_stream,
            other_arguments,
        } => {
            assert_eq!(key, "k");
            assert_eq!(first_command, "DepositMoney");
            assert!(!other_arguments);
            assert_eq!(first_stream.to_string(), "Account `a`");
        }
        other => panic!("expected IdempotencyKeyReused, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "idempotency key `k` was first used by `DepositMoney` on Account `a`"
    );

    let err = app
        .execute(withdraw_all())
        .idempotency_key("k")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::IdempotencyKeyReused { ref first_command, .. } if first_command == "DepositMoney"),
        "{err:?}"
    );
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
    open_account(&app, "a").await;
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

/// A key that comes back with other arguments is refused, not answered with the
/// first outcome as if the request had been the same (as payment APIs do).
#[tokio::test]
async fn a_key_reused_with_other_arguments_is_an_error() {
    let (store, app) = opened().await;
    app.execute(deposit(10))
        .idempotency_key("pay-1")
        .await
        .unwrap();
    let err = app
        .execute(deposit(99))
        .idempotency_key("pay-1")
        .await
        .unwrap_err();
    match &err {
        CommandError::IdempotencyKeyReused {
            first_command,
            first_stream,
            other_arguments,
            ..
        } => {
            assert_eq!(first_command, "DepositMoney");
            assert_eq!(first_stream.to_string(), "Account `a`");
            assert!(other_arguments);
        }
        other => panic!("expected IdempotencyKeyReused, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "idempotency key `pay-1` was first used by `DepositMoney` on Account `a` with other arguments"
    );
    assert_eq!(store.len(), 2, "nothing appended");
    // The same arguments still get the first outcome.
    let again = app
        .execute(deposit(10))
        .idempotency_key("pay-1")
        .await
        .unwrap();
    assert!(again.duplicate);
}

mod tagged {
    use std::collections::HashMap;

    use eda::prelude::*;

    #[event]
    #[derive(Debug, Clone, PartialEq)]
    pub struct Tagged {
        pub tags: HashMap<String, u32>,
    }

    #[command]
    #[derive(Debug, Clone)]
    pub struct Tag {
        #[aggregate_id]
        pub id: String,
        pub tags: HashMap<String, u32>,
    }

    #[derive(Debug, Default)]
    pub struct Item;

    #[aggregate(error = std::convert::Infallible)]
    impl Item {
        #[handle]
        fn tag(&self, cmd: Tag) -> Result<Tagged, std::convert::Infallible> {
            Ok(Tagged { tags: cmd.tags })
        }
        #[apply]
        fn tagged(&mut self, _: &Tagged) {}
    }
}

/// A retried request is rebuilt from the wire, so its maps iterate in another
/// order: the fingerprint compares the fields as values and still matches.
#[tokio::test]
async fn a_retried_command_with_a_map_is_recognised_whatever_its_order() {
    let app = App::new(MemoryStore::new());
    let tags = || -> std::collections::HashMap<String, u32> {
        (0..16).map(|i| (format!("tag-{i}"), i)).collect()
    };
    let tag = || tagged::Tag {
        id: "i".into(),
        tags: tags(),
    };
    assert!(
        !app.execute(tag())
            .idempotency_key("t")
            .await
            .unwrap()
            .duplicate
    );
    for _ in 0..8 {
        // A new map each time: another random seed, another iteration order.
        assert!(
            app.execute(tag())
                .idempotency_key("t")
                .await
                .unwrap()
                .duplicate
        );
    }
}
