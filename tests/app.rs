//! `App`: executing commands, loading, retries on conflicts, caching, errors.

#![allow(missing_docs)]

use std::collections::BTreeSet;

use eda::prelude::*;
use eda::{DecodeErrorKind, NewEvent};
use eda_test::bank::{
    Account, AccountError, AccountEvent, DepositMoney, OpenAccount, WithdrawMoney,
};

fn open(id: &str) -> OpenAccount {
    OpenAccount {
        account: id.into(),
        owner: "ada".into(),
    }
}

fn deposit(id: &str, amount: u64) -> DepositMoney {
    DepositMoney {
        account: id.into(),
        amount,
    }
}

#[tokio::test]
async fn execute_commits_and_load_replays() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let opened = app.execute(open("a")).await.unwrap();
    assert_eq!(opened.version, 1);
    assert!(!opened.duplicate);
    assert!(
        matches!(opened.events.as_slice(), [AccountEvent::AccountOpened(e)] if e.owner == "ada")
    );

    let deposited = app.execute(deposit("a", 10)).await.unwrap();
    assert_eq!(deposited.version, 2);
    assert_eq!(deposited.position, Some(2));

    let account: Account = app.load(&"a".to_string()).await.unwrap();
    assert_eq!(account.balance, 10);
    assert_eq!(account.owner.as_deref(), Some("ada"));

    let stored = store
        .read_stream(
            eda::StreamId {
                aggregate_type: "Account",
                aggregate_id: "a",
            },
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["AccountOpened", "MoneyDeposited"]
    );
    assert_eq!(stored[1].metadata.command.as_deref(), Some("DepositMoney"));

    // A fresh App on the same store sees the same state.
    let (again, version) = App::new(store)
        .load_with_version::<Account>(&"a".to_string())
        .await
        .unwrap();
    assert_eq!((again.balance, version), (10, 2));
}

#[tokio::test]
async fn loading_an_unknown_aggregate_gives_the_default_state() {
    let app = App::new(MemoryStore::new());
    let (account, version) = app
        .load_with_version::<Account>(&"nobody".to_string())
        .await
        .unwrap();
    assert_eq!(account, Account::default());
    assert_eq!(version, 0);
}

#[tokio::test]
async fn rejection_is_typed_and_stores_nothing() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let err = app.execute(deposit("a", 5)).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(AccountError::NotOpen)),
        "{err:?}"
    );
    assert_eq!(err.rejection(), Some(&AccountError::NotOpen));
    // Transparent: the domain's message as it is, ready to show to a user.
    assert_eq!(err.to_string(), "the account is not open");
    assert!(store.is_empty());

    app.execute(open("a")).await.unwrap();
    let err = app
        .execute(WithdrawMoney {
            account: "a".into(),
            amount: 1,
            reference: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.into_rejection(),
        Some(AccountError::InsufficientFunds {
            balance: 0,
            requested: 1
        })
    );
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn a_stale_cache_catches_up_on_conflict() {
    let store = MemoryStore::new();
    let first = App::new(store.clone());
    let second = App::new(store.clone());
    first.execute(open("a")).await.unwrap();
    first.execute(deposit("a", 10)).await.unwrap(); // first's cache is at version 2
    second.execute(deposit("a", 5)).await.unwrap(); // store at version 3

    // first decides at version 2, conflicts, reads version 3 and decides again.
    let done = first
        .execute(WithdrawMoney {
            account: "a".into(),
            amount: 15,
            reference: "all".into(),
        })
        .await
        .unwrap();
    assert_eq!(done.version, 4);
    let account: Account = second.load(&"a".to_string()).await.unwrap();
    assert_eq!(account.balance, 0);
}

#[tokio::test]
async fn conflicts_beyond_the_retry_limit_are_reported() {
    let store = MemoryStore::new();
    let stale = App::builder(store.clone())
        .max_conflict_retries(0)
        .build()
        .unwrap();
    let other = App::new(store.clone());
    stale.execute(open("a")).await.unwrap();
    other.execute(deposit("a", 1)).await.unwrap();

    let err = stale.execute(deposit("a", 2)).await.unwrap_err();
    match err {
        CommandError::Conflict {
            ref stream,
            expected,
            actual,
            attempts,
        } => {
            assert_eq!(stream.to_string(), "Account `a`");
            assert_eq!((expected, actual, attempts), (1, 2, 1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.len(), 2, "the conflicting command stored nothing");
    // The next command starts from a fresh replay and succeeds.
    assert_eq!(stale.execute(deposit("a", 2)).await.unwrap().version, 3);
}

/// Another writer moves the stream on; `app` then runs a command without any
/// conflict retry. It succeeds only if `app` does not trust a stale cached state.
async fn command_after_another_writer(
    app: App,
    store: MemoryStore,
) -> Result<u64, CommandError<AccountError>> {
    app.execute(open("a")).await.unwrap();
    App::new(store).execute(deposit("a", 3)).await.unwrap();
    app.execute(deposit("a", 1)).await.map(|done| done.version)
}

#[tokio::test]
async fn cache_can_be_turned_off() {
    let store = MemoryStore::new();
    let uncached = App::builder(store.clone())
        .cache_capacity(0)
        .max_conflict_retries(0)
        .build()
        .unwrap();
    assert_eq!(
        command_after_another_writer(uncached, store).await.unwrap(),
        3
    );

    // Control: with the cache, the same sequence meets the stale version.
    let store = MemoryStore::new();
    let cached = App::builder(store.clone())
        .max_conflict_retries(0)
        .build()
        .unwrap();
    let err = command_after_another_writer(cached, store)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_full_cache_evicts_and_stays_correct() {
    // Capacity 1: touching "b" evicts "a", so "a" is replayed and sees the other
    // writer's event; with room for both, "a" stays cached and goes stale.
    for (capacity, evicted) in [(1, true), (2, false)] {
        let store = MemoryStore::new();
        let app = App::builder(store.clone())
            .cache_capacity(capacity)
            .max_conflict_retries(0)
            .build()
            .unwrap();
        app.execute(open("a")).await.unwrap();
        app.execute(open("b")).await.unwrap();
        App::new(store).execute(deposit("a", 3)).await.unwrap();
        let result = app.execute(deposit("a", 1)).await;
        assert_eq!(result.is_ok(), evicted, "capacity {capacity}: {result:?}");
    }
    let app = App::builder(MemoryStore::new())
        .cache_capacity(2)
        .build()
        .unwrap();
    for id in ["a", "b", "c", "d"] {
        app.execute(open(id)).await.unwrap();
    }
    for round in 1..=3u64 {
        for id in ["a", "b", "c", "d"] {
            assert_eq!(
                app.execute(deposit(id, 1)).await.unwrap().version,
                round + 1
            );
        }
    }
    let account: Account = app.load(&"c".to_string()).await.unwrap();
    assert_eq!(account.balance, 3);
}

/// One command per task, 8 tasks x 50 commands on one aggregate, through one `App`
/// and through eight `App`s sharing the store (real conflicts and retries).
async fn every_accepted_command_once(apps: Vec<App>) {
    let mut tasks = Vec::new();
    for (task, app) in (0..8u64).zip(apps.into_iter().cycle()) {
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for n in 0..50u64 {
                let amount = task * 1000 + n + 1;
                match app.execute(deposit("shared", amount)).await {
                    Ok(done) => accepted.push((amount, done.version)),
                    Err(CommandError::Conflict { .. }) => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (app, accepted)
        }));
    }
    let mut accepted = Vec::new();
    let mut app = None;
    for task in tasks {
        let (a, ok) = task.await.unwrap();
        accepted.extend(ok);
        app = Some(a);
    }
    let app = app.unwrap();
    assert_eq!(
        accepted.len(),
        400,
        "with retries to spare, every command commits"
    );
    let versions: BTreeSet<u64> = accepted.iter().map(|(_, v)| *v).collect();
    assert_eq!(
        versions.len(),
        accepted.len(),
        "two commands reported the same version"
    );
    assert_eq!(
        versions,
        (2..=accepted.len() as u64 + 1).collect(),
        "versions without gaps"
    );

    let (account, version) = app
        .load_with_version::<Account>(&"shared".to_string())
        .await
        .unwrap();
    assert_eq!(version, accepted.len() as u64 + 1);
    assert_eq!(
        account.balance,
        accepted.iter().map(|(amount, _)| amount).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_through_one_app() {
    let app = App::new(MemoryStore::new());
    app.execute(open("shared")).await.unwrap();
    every_accepted_command_once(vec![app]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_through_many_apps() {
    let store = MemoryStore::new();
    let apps: Vec<App> = (0..8)
        .map(|_| {
            App::builder(store.clone())
                .max_conflict_retries(1000)
                .build()
                .unwrap()
        })
        .collect();
    apps[0].execute(open("shared")).await.unwrap();
    every_accepted_command_once(apps).await;
}

async fn store_with_bad_event(name: &str, version: u32, payload: &str) -> (MemoryStore, App) {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    app.execute(open("bad")).await.unwrap();
    app.execute(open("good")).await.unwrap();
    let bad = NewEvent {
        event_id: eda::new_event_id(),
        name: name.to_owned().into(),
        version,
        payload: payload.into(),
    };
    let stream = eda::StreamId {
        aggregate_type: "Account",
        aggregate_id: "bad",
    };
    store
        .append(stream, 1, vec![bad], &eda::Metadata::default())
        .await
        .unwrap();
    // A fresh App, so nothing is cached.
    (store.clone(), App::new(store))
}

#[tokio::test]
async fn undecodable_events_are_typed_errors_that_say_where() {
    type Expect = fn(&DecodeErrorKind) -> bool;
    let cases: [(&str, u32, &str, Expect); 4] = [
        ("MoneyDeposited", 1, "{not json", |k| {
            matches!(k, DecodeErrorKind::Payload(_))
        }),
        ("AccountClosed", 1, "{}", |k| {
            matches!(k, DecodeErrorKind::UnknownEvent)
        }),
        ("MoneyDeposited", 9, r#"{"amount":1}"#, |k| {
            matches!(k, DecodeErrorKind::NewerVersion { known: 1 })
        }),
        ("MoneyWithdrawn", 0, r#"{"amount":1}"#, |k| {
            matches!(k, DecodeErrorKind::NoUpcast { oldest: 1 })
        }),
    ];
    for (name, version, payload, expected) in cases {
        let (_store, app) = store_with_bad_event(name, version, payload).await;
        let err = app.load::<Account>(&"bad".to_string()).await.unwrap_err();
        let LoadError::Decode(decode) = &err else {
            panic!("expected a decode error, got {err:?}")
        };
        assert!(
            expected(&decode.kind),
            "{name} v{version}: {:?}",
            decode.kind
        );
        assert_eq!((decode.position, decode.version), (3, 2));
        assert_eq!(
            (decode.aggregate_type.as_str(), decode.aggregate_id.as_str()),
            ("Account", "bad")
        );
        assert_eq!(
            (decode.name.as_str(), decode.event_version),
            (name, version)
        );
        assert!(
            err.to_string().contains(&format!(
                "`{name}` v{version} at position 3 (Account `bad` version 2)"
            )),
            "{err}"
        );

        // Commands on it fail the same way; other aggregates are unaffected.
        let cmd_err = app.execute(deposit("bad", 1)).await.unwrap_err();
        assert!(matches!(cmd_err, CommandError::Decode(_)), "{cmd_err:?}");
        assert_eq!(app.execute(deposit("good", 1)).await.unwrap().version, 2);
    }
}

#[tokio::test]
async fn old_event_versions_are_upcast_on_load() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    app.execute(open("a")).await.unwrap();
    app.execute(deposit("a", 50)).await.unwrap();
    let v1 = NewEvent {
        event_id: eda::new_event_id(),
        name: "MoneyWithdrawn".into(),
        version: 1,
        payload: r#"{"amount":20}"#.into(),
    };
    let stream = eda::StreamId {
        aggregate_type: "Account",
        aggregate_id: "a",
    };
    store
        .append(stream, 2, vec![v1], &eda::Metadata::default())
        .await
        .unwrap();
    let account: Account = App::new(store).load(&"a".to_string()).await.unwrap();
    assert_eq!(account.balance, 30);
}

#[tokio::test]
async fn events_and_metadata_are_recorded() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let correlation = eda::new_event_id();
    app.execute(open("a"))
        .correlation_id(correlation)
        .metadata("user", "ada")
        .await
        .unwrap();
    let stored = store.read_all(0, 10).await.unwrap();
    assert_eq!(stored[0].metadata.correlation_id, Some(correlation));
    assert_eq!(
        stored[0].metadata.user.get("user").map(String::as_str),
        Some("ada")
    );
    assert_eq!(stored[0].metadata.command.as_deref(), Some("OpenAccount"));
}

#[test]
fn app_is_a_cheap_send_sync_handle() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<App>();
}

#[tokio::test]
async fn a_rejection_decided_on_a_stale_cache_is_confirmed_against_the_store() {
    let store = MemoryStore::new();
    let app = App::builder(store.clone())
        .max_conflict_retries(0)
        .build()
        .unwrap();
    app.execute(open("a")).await.unwrap(); // cached at balance 0
    App::new(store).execute(deposit("a", 10)).await.unwrap();
    // On the cached state this withdrawal is an overdraft; on the stored one it is not.
    let done = app
        .execute(WithdrawMoney {
            account: "a".into(),
            amount: 10,
            reference: "r".into(),
        })
        .await
        .unwrap();
    assert_eq!(done.version, 3);
}

/// Replays longer than the in-memory store's read chunk, through the store's own
/// fast path and through the generic `EventStore` path, give the same state.
#[tokio::test]
async fn long_streams_replay_the_same_through_every_read_path() {
    let fast = MemoryStore::new();
    let generic = eda_test::YieldingStore::default();
    for app in [App::new(fast.clone()), App::new(generic.clone())] {
        app.execute(open("long")).await.unwrap();
        for amount in 1..=1300 {
            app.execute(deposit("long", amount)).await.unwrap();
        }
    }
    let expected = (1..=1300u64).sum::<u64>();
    for app in [App::new(fast), App::new(generic)] {
        let (account, version) = app
            .load_with_version::<Account>(&"long".to_string())
            .await
            .unwrap();
        assert_eq!((account.balance, version), (expected, 1301));
        // A fresh App replays on its first command too, and continues at the right version.
        assert_eq!(app.execute(deposit("long", 1)).await.unwrap().version, 1302);
    }
}

/// A burst of commands on 5,000 ids with `cache_capacity(100)`: while commands
/// hold their slots the cache may hold more, but once they end it is back within
/// its bound. Rejected commands on ids no aggregate has leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_stays_within_its_capacity() {
    let store = eda_test::YieldingStore::default();
    let app = App::builder(store).cache_capacity(100).build().unwrap();
    let mut tasks = Vec::new();
    for i in 0..5_000 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.execute(open(&format!("burst-{i}"))).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        app.cached_instances::<Account>() <= 100,
        "{} cached",
        app.cached_instances::<Account>()
    );

    let roomy = App::new(MemoryStore::new());
    for i in 0..500 {
        let err = roomy.execute(deposit(&format!("nobody-{i}"), 5)).await;
        assert!(matches!(err, Err(CommandError::Rejected(_))));
    }
    assert_eq!(roomy.cached_instances::<Account>(), 0);
    roomy.execute(open("somebody")).await.unwrap();
    assert_eq!(roomy.cached_instances::<Account>(), 1);
}

/// Ids no store could keep are refused by `App` before it reads or writes.
#[tokio::test]
async fn ids_every_store_cannot_keep_are_refused_up_front() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let too_long = "x".repeat(eda::MAX_AGGREGATE_ID_BYTES + 1);
    for id in ["nul\0id", too_long.as_str()] {
        let err = app.execute(open(id)).await.unwrap_err();
        assert!(
            matches!(
                err,
                CommandError::Store(StoreError::Invalid {
                    what: "aggregate id",
                    ..
                })
            ),
            "{err:?}"
        );
        let err = app.load::<Account>(&id.to_string()).await.unwrap_err();
        assert!(
            matches!(err, LoadError::Store(StoreError::Invalid { .. })),
            "{err:?}"
        );
    }
    let err = app
        .execute(open("a"))
        .idempotency_key("k\0")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid idempotency key: it contains the character NUL (`\\0`), which PostgreSQL cannot store"
    );
    assert!(store.is_empty());
}
