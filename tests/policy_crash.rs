//! Policies execute each command once in effect: a policy process killed between
//! executing its commands and moving its checkpoint, ten times, restarting after
//! each, leaves exactly one bonus deposit per opened account. The control runs
//! the policy without the derived idempotency keys (`EDA_BROKEN`) and must
//! deposit some bonuses twice.
//!
//! The child is this test binary itself, started with `--ignored --exact child`.

#![cfg(unix)]
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use eda::prelude::*;
use eda::Metadata;
use eda_test::bank::WelcomeBonus;

/// Accounts opened: two pages of the policy's reads.
const ACCOUNTS: u64 = 700;

/// The child: runs the policy until it has reacted to every opening.
#[tokio::test]
#[ignore = "started by the crash tests"]
async fn child() {
    let Ok(events) = std::env::var("EDA_CRASH_EVENTS") else {
        return;
    };
    let app = App::new(SqliteStore::open(&events).await.expect("open the events"));
    // A crashed child's lease expires soon: the next one takes over quickly.
    let policy = app
        .policy(WelcomeBonus)
        .lease(Duration::from_millis(300))
        .start();
    policy
        .wait_for(Some(ACCOUNTS), Duration::from_secs(300))
        .await
        .expect("reacted to every opening");
}

fn run_child(events: &Path, env: &[(&str, &str)]) -> bool {
    let mut command = eda_test::crash::child(env.iter().copied());
    command.env("EDA_CRASH_EVENTS", events);
    command.status().unwrap().success()
}

/// Opens the accounts, then crashes a policy ten times between executing a
/// page's commands and moving its checkpoint, then runs it to the end.
/// Returns the bonus deposits per account.
async fn crash_ten_times(broken: Option<&str>) -> BTreeMap<String, usize> {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.db");
    let store = SqliteStore::open(&events).await.unwrap();
    for n in 0..ACCOUNTS {
        let id = format!("acc-{n}");
        let stream = eda::StreamId {
            aggregate_type: "Account",
            aggregate_id: &id,
        };
        let opened = eda_test::new_event("AccountOpened", r#"{"owner":"ada"}"#);
        store
            .append(stream, 0, vec![opened], &Metadata::default())
            .await
            .unwrap();
    }
    store.close().await.unwrap();
    for round in 0..10 {
        // Before the first page's checkpoint five times; then past it, and
        // before the second page's checkpoint five times.
        let after = if round == 5 { "2" } else { "1" };
        let mut env = vec![
            ("EDA_FAILPOINT", "policy.before_checkpoint"),
            ("EDA_FAILPOINT_AFTER", after),
        ];
        if let Some(broken) = broken {
            env.push(("EDA_BROKEN", broken));
        }
        assert!(!run_child(&events, &env), "round {round} did not crash");
    }
    assert!(run_child(&events, &[]));

    let store = SqliteStore::open(&events).await.unwrap();
    let mut bonuses = BTreeMap::new();
    for event in store.read_all(0, 100_000).await.unwrap() {
        if event.name == "MoneyDeposited" {
            *bonuses.entry(event.aggregate_id).or_default() += 1;
        }
    }
    bonuses
}

#[tokio::test]
async fn a_policy_killed_before_its_checkpoint_executes_each_command_once() {
    let bonuses = crash_ten_times(None).await;
    assert_eq!(
        bonuses.len() as u64,
        ACCOUNTS,
        "every account got its bonus"
    );
    let twice: Vec<_> = bonuses.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "bonuses deposited more than once: {twice:?}"
    );
}

/// Control: without the derived keys, the commands executed before the crash
/// are executed again after the restart.
#[tokio::test]
async fn control_a_policy_without_derived_keys_executes_twice() {
    let bonuses = crash_ten_times(Some("policy.without_keys")).await;
    assert!(
        bonuses.values().any(|n| *n > 1),
        "the control deposited nothing twice"
    );
}
