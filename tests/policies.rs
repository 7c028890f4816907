//! Policies (`#[policy]`, `App::policy`): the commands an event causes are
//! executed once in effect, with causation and correlation ids from the event; a
//! rejected command does not stop the policy; the checkpoint is kept in the
//! event store, so a restart goes on after it.

#![allow(missing_docs)]

use std::time::Duration;

use eda::prelude::*;
use eda::{PolicyHandle, RecordedEvent, RunnerState, Uuid};
use eda_test::bank::{
    open_account, DepositMoney, MoneyDeposited, OpenAccount, WelcomeBonus, WithdrawMoney, BONUS,
};
use eda_test::{Route, Routed};

const WAIT: Duration = Duration::from_secs(60);

/// The deposits in the log, by account.
async fn deposits(app_store: &MemoryStore) -> Vec<RecordedEvent> {
    let page = app_store.read_all(0, 10_000).await.unwrap();
    page.into_iter()
        .filter(|e| e.name == "MoneyDeposited")
        .collect()
}

#[tokio::test]
async fn an_event_causes_its_command_with_causation_and_correlation() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let policy = app.policy(WelcomeBonus).start();
    let correlation = Uuid::now_v7();
    let open = OpenAccount {
        account: "a".into(),
        owner: "ada".into(),
    };
    let opened = app.execute(open).correlation_id(correlation).await.unwrap();
    policy.wait_for(opened.position, WAIT).await.unwrap();

    let deposits = deposits(&store).await;
    assert_eq!(deposits.len(), 1);
    let log = store.read_all(0, 10).await.unwrap();
    let opened_id = log[0].event_id;
    assert_eq!(log[0].name, "AccountOpened");
    assert_eq!(deposits[0].aggregate_id, "a");
    assert_eq!(deposits[0].metadata.causation_id, Some(opened_id));
    assert_eq!(deposits[0].metadata.correlation_id, Some(correlation));
    assert!(deposits[0]
        .metadata
        .idempotency_key
        .as_deref()
        .unwrap()
        .contains("welcome-bonus"));
    assert_eq!(
        app.load::<eda_test::bank::Account>(&"a".to_owned())
            .await
            .unwrap()
            .balance,
        BONUS
    );
}

#[tokio::test]
async fn a_restart_goes_on_after_the_stored_checkpoint() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let first = app.policy(WelcomeBonus).start();
    open_account(&app, "a").await;
    let position = open_account(&app, "b").await;
    first.wait_for(Some(position), WAIT).await.unwrap();
    first.stop().await;
    assert_eq!(
        store
            .read_checkpoint("welcome-bonus")
            .await
            .unwrap()
            .map(|c| c >= position),
        Some(true)
    );

    let second = app.policy(WelcomeBonus).start();
    let position = Some(open_account(&app, "c").await);
    second.wait_for(position, WAIT).await.unwrap();
    assert_eq!(second.status().applied, 1, "only the new opening");
    assert_eq!(deposits(&store).await.len(), 3);
}

/// Charges a fee of 50 on every deposit: rejected while the balance is short.
#[derive(Debug, Default)]
pub struct Fees;

#[policy]
impl Fees {
    #[on]
    fn deposited(&self, e: &MoneyDeposited, recorded: &RecordedEvent) -> Vec<WithdrawMoney> {
        if e.amount == BONUS {
            return Vec::new();
        }
        vec![WithdrawMoney {
            account: recorded.aggregate_id.clone(),
            amount: 50,
            reference: format!("fee for {}", recorded.event_id),
        }]
    }
}

#[tokio::test]
async fn a_rejected_command_does_not_stop_the_policy() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let fees = app.policy(Fees).start();
    open_account(&app, "a").await;
    // 20 < 50: the fee is rejected; 100: the fee is charged.
    for amount in [20, 100] {
        let deposit = DepositMoney {
            account: "a".into(),
            amount,
        };
        let position = app.execute(deposit).await.unwrap().position;
        fees.wait_for(position, WAIT).await.unwrap();
    }
    assert_eq!(fees.status().state, RunnerState::Live);
    let account = app
        .load::<eda_test::bank::Account>(&"a".to_owned())
        .await
        .unwrap();
    assert_eq!(account.balance, 20 + 100 - 50);
    assert_eq!(fees.status().name, "Fees");
}

#[tokio::test]
async fn an_opening_without_the_policy_running_is_caught_up_later() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    for id in ["a", "b", "c"] {
        open_account(&app, id).await;
    }
    let policy = app.policy(WelcomeBonus).start();
    policy.wait_for(Some(3), WAIT).await.unwrap();
    let deposits = deposits(&store).await;
    let accounts: Vec<&str> = deposits.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(accounts, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_rejected_command_parks_its_event_when_the_policy_says_so() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let fees = app.policy(Fees).park_rejected().start();
    open_account(&app, "a").await; // 1
    open_account(&app, "b").await; // 2
    let deposit = |account: &str, amount| DepositMoney {
        account: account.into(),
        amount,
    };
    // One at a time: the policy decides on the balance it finds.
    for (account, amount) in [("a", 20), ("a", 30), ("b", 100)] {
        // 3: fee rejected, parked; 4: behind 3; 5: fee charged (6).
        let position = app
            .execute(deposit(account, amount))
            .await
            .unwrap()
            .position;
        fees.wait_for(position, WAIT).await.unwrap();
    }
    let last = Some(5);

    let parked = fees.parked().await.unwrap();
    let positions: Vec<u64> = parked.iter().map(|p| p.position).collect();
    assert_eq!(positions, [3, 4]);
    assert!(parked[0].error.contains("rejected"), "{}", parked[0].error);
    assert!(parked[1].error.contains("behind"), "{}", parked[1].error);
    assert_eq!(fees.status().parked, 2);
    let b = app
        .load::<eda_test::bank::Account>(&"b".to_owned())
        .await
        .unwrap();
    assert_eq!(b.balance, 50, "b flowed on");

    // They are kept in the store: a new runner finds them.
    fees.stop().await;
    let fees = app.policy(Fees).park_rejected().start();
    fees.wait_for(last, WAIT).await.unwrap();
    assert_eq!(fees.status().parked, 2);

    // 50 in the account now: the retry charges the fee of 3, and parks 4 again
    // (nothing left for its fee), with the new error.
    let retried = fees.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (1, 1));
    assert_eq!(fees.parked().await.unwrap()[0].position, 4);

    // Money arrives (its own fee parked behind 4), then the retry drains the
    // park in order: the fees of 4 and of the new deposit.
    let more = app.execute(deposit("a", 200)).await.unwrap().position;
    fees.wait_for(more, WAIT).await.unwrap();
    assert_eq!(fees.status().parked, 2);
    let retried = fees.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (2, 0));
    let a = app
        .load::<eda_test::bank::Account>(&"a".to_owned())
        .await
        .unwrap();
    assert_eq!(a.balance, 20 + 30 + 200 - 3 * 50);
    assert_eq!(fees.status().parked, 0);

    // An empty park: nothing to retry.
    let fees_again = fees.retry_parked().await.unwrap();
    assert_eq!(fees_again.applied, 0);
}

#[tokio::test]
async fn an_event_the_policy_cannot_decode_is_parked_and_can_be_skipped() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    open_account(&app, "a").await;
    let stream = eda::StreamId {
        aggregate_type: "Account",
        aggregate_id: "a",
    };
    let bad = eda_test::new_event("MoneyDeposited", r#"{"amount":"lots"}"#);
    store
        .append(stream, 1, vec![bad], &eda::Metadata::default())
        .await
        .unwrap();
    let fees = app.policy(Fees).start();
    fees.wait_for(Some(2), WAIT).await.unwrap();
    let parked = fees.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].error.contains("cannot decode"),
        "{}",
        parked[0].error
    );
    assert!(fees.skip_parked(parked[0].event_id).await.unwrap());
    assert!(fees.parked().await.unwrap().is_empty());
    assert_eq!(fees.status().parked, 0);
}

#[tokio::test]
async fn a_command_that_fails_every_attempt_parks_its_event_while_others_flow_on() {
    let store = Routed::new(Route::Immediate);
    let app = App::new(store.clone());
    open_account(&app, "a").await; // 1
                                   // From now on the store fails every append to a: its bonus cannot be paid.
    store.fail_appends_to(Some("a"));
    let policy = app.policy(WelcomeBonus).start();
    let b = Some(open_account(&app, "b").await); // 2 (and b's bonus)
    policy.wait_for(b, WAIT).await.unwrap();
    let parked = policy.parked().await.unwrap();
    assert_eq!(parked.len(), 1, "a's opening, after 5 attempts");
    assert!(
        parked[0].error.contains("appends to `a` fail"),
        "{}",
        parked[0].error
    );
    let balance = |id: &str| {
        let app = app.clone();
        let id = id.to_owned();
        async move {
            app.load::<eda_test::bank::Account>(&id)
                .await
                .unwrap()
                .balance
        }
    };
    assert_eq!(balance("b").await, BONUS);
    assert_eq!(balance("a").await, 0);

    store.fail_appends_to(None);
    let retried = policy.retry_parked().await.unwrap();
    assert_eq!((retried.applied, retried.parked), (1, 0));
    assert_eq!(balance("a").await, BONUS);
}

#[tokio::test]
async fn a_second_runner_stands_by_and_takes_over_when_the_first_stops() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let one = app.policy(WelcomeBonus).start();
    let opened = Some(open_account(&app, "a").await);
    one.wait_for(opened, WAIT).await.unwrap();
    let two = app.policy(WelcomeBonus).start();
    eda_test::read_models::until("the second on standby", || {
        eda_test::read_models::is_standby(&two.status().state)
    })
    .await;

    one.stop().await;
    let opened = Some(open_account(&app, "b").await);
    two.wait_for(opened, WAIT).await.unwrap();
    assert_eq!(two.status().applied, 1, "from where the first left off");
    assert_eq!(deposits(&store).await.len(), 2, "one bonus each");
}

/// Two runners of `WelcomeBonus` with `lease`: the first has reacted to an
/// opening, the second is on standby.
async fn one_active_one_standby(lease: Duration) -> (App, MemoryStore, PolicyHandle, PolicyHandle) {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let one = app.policy(WelcomeBonus).lease(lease).start();
    let opened = Some(open_account(&app, "a").await);
    one.wait_for(opened, WAIT).await.unwrap();
    let two = app.policy(WelcomeBonus).lease(lease).start();
    eda_test::read_models::until("the second on standby", || {
        eda_test::read_models::is_standby(&two.status().state)
    })
    .await;
    (app, store, one, two)
}

/// One runner reacts at a time: the second stays on standby, reacting to
/// nothing, while the first reacts to new events and renews its lease.
#[tokio::test]
async fn the_second_runner_stays_on_standby_while_the_first_reacts() {
    // The loop below outlasts the lease: the first keeps it only by renewing.
    let (app, _, one, two) = one_active_one_standby(Duration::from_secs(1)).await;
    for account in ["b", "c", "d"] {
        let opened = Some(open_account(&app, account).await);
        one.wait_for(opened, WAIT).await.unwrap();
        // Several renewals of the lease meanwhile.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let status = two.status();
    assert!(
        eda_test::read_models::is_standby(&status.state),
        "{status:?}"
    );
    assert_eq!(status.applied, 0, "the second reacted to nothing");
    one.stop().await;
    two.stop().await;
}

/// The control of the test above: with every runner taking the lease, the
/// second does not stay on standby.
#[test]
fn control_runners_that_ignore_the_lease_do_not_stand_by() {
    if !cfg!(feature = "failpoints") {
        eprintln!("skipped: the control needs the `failpoints` feature");
        return;
    }
    assert!(eda_test::crash::fails_when_broken(
        "the_second_runner_stays_on_standby_while_the_first_reacts",
        "runner.turn_ignored",
    ));
}

/// The control of the test below: a holder that does not renew its lease
/// while idle loses it, and the second runner takes over.
#[test]
fn control_an_idle_runner_that_does_not_renew_loses_its_lease() {
    if !cfg!(feature = "failpoints") {
        eprintln!("skipped: the control needs the `failpoints` feature");
        return;
    }
    assert!(eda_test::crash::fails_when_broken(
        "an_idle_runner_keeps_a_short_lease",
        "runner.no_idle_renewal",
    ));
}

/// An idle holder keeps a lease shorter than the runner's safety poll (1 s):
/// it wakes to renew it, so the second stays on standby while nothing happens.
#[tokio::test]
async fn an_idle_runner_keeps_a_short_lease() {
    let lease = Duration::from_millis(500);
    let (app, store, one, two) = one_active_one_standby(lease).await;
    // Six lease lengths with nothing to react to; the second tries to take the
    // lease about once a second.
    tokio::time::sleep(lease * 6).await;
    let status = two.status();
    assert!(
        eda_test::read_models::is_standby(&status.state),
        "{status:?}"
    );
    let opened = Some(open_account(&app, "b").await);
    one.wait_for(opened, WAIT).await.unwrap();
    assert_eq!(two.status().applied, 0, "the second reacted to nothing");
    assert_eq!(deposits(&store).await.len(), 2, "one bonus each");
    one.stop().await;
    two.stop().await;
}
