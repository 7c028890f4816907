//! Load through `App` with the bank domain, shared by the store tests.

use eda::prelude::*;

use crate::bank::{Account, DepositMoney, OpenAccount};

/// 8 tasks x `per_task` deposits on one account through eight `App`s on `store`:
/// every command is accepted exactly once (the stored amounts are exactly the ones
/// sent) and the versions run from 1 without gap or repeat.
pub async fn every_command_once_through_many_apps<S: EventStore + Clone>(store: S, per_task: u64) {
    let apps: Vec<App> = (0..8)
        .map(|_| {
            App::builder(store.clone())
                .max_conflict_retries(100_000)
                .build()
                .unwrap()
        })
        .collect();
    apps[0]
        .execute(OpenAccount {
            account: "shared".into(),
            owner: "ada".into(),
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (task, app) in (0..8u64).zip(apps) {
        tasks.push(tokio::spawn(async move {
            for n in 0..per_task {
                let amount = task * 1000 + n + 1;
                app.execute(DepositMoney {
                    account: "shared".into(),
                    amount,
                })
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let sent: Vec<u64> = (0..8u64)
        .flat_map(|task| (0..per_task).map(move |n| task * 1000 + n + 1))
        .collect();
    let (account, version) = App::new(store.clone())
        .load_with_version::<Account>(&"shared".to_string())
        .await
        .unwrap();
    assert_eq!(
        (account.balance, version),
        (sent.iter().sum(), 8 * per_task + 1)
    );
    let stored = store
        .read_stream(
            eda::StreamId {
                aggregate_type: "Account",
                aggregate_id: "shared",
            },
            0,
        )
        .await
        .unwrap();
    let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=8 * per_task + 1).collect::<Vec<_>>(),
        "versions without gap or repeat"
    );
    assert_eq!(
        crate::stored_amounts(&stored),
        sent,
        "every command exactly once"
    );
}
