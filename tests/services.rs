//! Services in command handlers: the bank account of the cqrs-es demo, whose
//! withdrawals ask an ATM and whose checks ask a validator while deciding, through
//! `App` and through `Fixture` with test doubles.

#![allow(missing_docs)]

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use eda::prelude::*;
use eda::testing::Fixture;

// ---- the domain -------------------------------------------------------------------

/// Asked whether it may dispense cash; answers with an authorization code or a
/// refusal. Async, as a network call would be.
pub trait Atm: Send + Sync {
    fn may_dispense<'a>(
        &'a self,
        atm_id: &'a str,
        amount: u64,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;
}

/// Checks a check's number against the issuing bank's records.
pub trait CheckValidator: Send + Sync {
    fn validate(&self, account: &str, check_number: &str, amount: u64) -> Result<(), String>;
}

pub struct BankServices {
    pub atm: Arc<dyn Atm>,
    pub checks: Arc<dyn CheckValidator>,
}

#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct AccountOpened {
    pub owner: String,
}

#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct MoneyDeposited {
    pub amount: u64,
}

#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct MoneyWithdrawn {
    pub amount: u64,
    pub atm_id: String,
    pub authorization: String,
}

#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct CheckWritten {
    pub check_number: String,
    pub amount: u64,
}

#[command]
#[derive(Debug, Clone)]
pub struct OpenAccount {
    #[aggregate_id]
    pub account: String,
    pub owner: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct DepositMoney {
    #[aggregate_id]
    pub account: String,
    pub amount: u64,
}

#[command]
#[derive(Debug, Clone)]
pub struct WithdrawMoney {
    #[aggregate_id]
    pub account: String,
    pub amount: u64,
    pub atm_id: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct WriteCheck {
    #[aggregate_id]
    pub account: String,
    pub check_number: String,
    pub amount: u64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
    #[error("the ATM refused: {0}")]
    AtmRefused(String),
    #[error("invalid check: {0}")]
    InvalidCheck(String),
}

#[derive(Debug, Default)]
pub struct Account {
    open: bool,
    balance: u64,
}

#[aggregate(error = AccountError, services = BankServices)]
impl Account {
    #[handle]
    fn open(&self, cmd: OpenAccount) -> Result<AccountOpened, AccountError> {
        Ok(AccountOpened { owner: cmd.owner })
    }

    #[handle]
    fn deposit(&self, cmd: DepositMoney) -> Result<MoneyDeposited, AccountError> {
        Ok(MoneyDeposited { amount: cmd.amount })
    }

    #[handle]
    async fn withdraw(
        &self,
        cmd: WithdrawMoney,
        bank: &BankServices,
    ) -> Result<MoneyWithdrawn, AccountError> {
        self.covers(cmd.amount)?;
        let authorization = bank
            .atm
            .may_dispense(&cmd.atm_id, cmd.amount)
            .await
            .map_err(AccountError::AtmRefused)?;
        Ok(MoneyWithdrawn {
            amount: cmd.amount,
            atm_id: cmd.atm_id,
            authorization,
        })
    }

    #[handle]
    fn write_check(
        &self,
        cmd: WriteCheck,
        bank: &BankServices,
    ) -> Result<CheckWritten, AccountError> {
        self.covers(cmd.amount)?;
        bank.checks
            .validate(&cmd.account, &cmd.check_number, cmd.amount)
            .map_err(AccountError::InvalidCheck)?;
        Ok(CheckWritten {
            check_number: cmd.check_number,
            amount: cmd.amount,
        })
    }

    fn covers(&self, amount: u64) -> Result<(), AccountError> {
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        if amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: amount,
            });
        }
        Ok(())
    }

    #[apply]
    fn opened(&mut self, _: &AccountOpened) {
        self.open = true;
    }

    #[apply]
    fn deposited(&mut self, e: &MoneyDeposited) {
        self.balance += e.amount;
    }

    #[apply]
    fn withdrawn(&mut self, e: &MoneyWithdrawn) {
        self.balance -= e.amount;
    }

    #[apply]
    fn check_written(&mut self, e: &CheckWritten) {
        self.balance -= e.amount;
    }
}

/// A second aggregate with the same services: the ATM's cash cassette.
#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct CashLoaded {
    pub amount: u64,
    pub authorization: String,
}

#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct CassetteSealed;

#[command]
#[derive(Debug, Clone)]
pub struct LoadCash {
    #[aggregate_id]
    pub atm_id: String,
    pub amount: u64,
}

#[command]
#[derive(Debug, Clone)]
pub struct SealCassette {
    #[aggregate_id]
    pub atm_id: String,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CassetteError {
    #[error("the cassette is sealed")]
    Sealed,
    #[error("the ATM refused: {0}")]
    Refused(String),
}

#[derive(Debug, Default)]
pub struct Cassette {
    sealed: bool,
}

#[aggregate(error = CassetteError, services = BankServices)]
impl Cassette {
    #[handle]
    async fn load(&self, cmd: LoadCash, bank: &BankServices) -> Result<CashLoaded, CassetteError> {
        if self.sealed {
            return Err(CassetteError::Sealed);
        }
        let authorization = bank
            .atm
            .may_dispense(&cmd.atm_id, cmd.amount)
            .await
            .map_err(CassetteError::Refused)?;
        Ok(CashLoaded {
            amount: cmd.amount,
            authorization,
        })
    }

    /// Async without services: awaits, but consults nothing.
    #[handle]
    async fn seal(&self, _: SealCassette) -> Result<CassetteSealed, CassetteError> {
        YieldOnce(false).await;
        if self.sealed {
            return Err(CassetteError::Sealed);
        }
        Ok(CassetteSealed)
    }

    #[apply]
    fn loaded(&mut self, _: &CashLoaded) {}

    #[apply]
    fn sealed(&mut self, _: &CassetteSealed) {
        self.sealed = true;
    }
}

// ---- test doubles -----------------------------------------------------------------

/// Returns `Pending` once, so a handler awaiting it really suspends.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Records every question and answers with an authorization code, or refuses
/// amounts above `limit`. Suspends once before answering.
#[derive(Default)]
struct RecordingAtm {
    limit: Option<u64>,
    calls: Mutex<Vec<(String, u64)>>,
}

impl RecordingAtm {
    fn calls(&self) -> Vec<(String, u64)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Atm for RecordingAtm {
    fn may_dispense<'a>(
        &'a self,
        atm_id: &'a str,
        amount: u64,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
        Box::pin(async move {
            YieldOnce(false).await;
            let mut calls = self.calls.lock().unwrap();
            calls.push((atm_id.to_owned(), amount));
            match self.limit {
                Some(limit) if amount > limit => Err(format!("{atm_id} holds only {limit}")),
                _ => Ok(format!("auth-{}", calls.len())),
            }
        })
    }
}

/// An ATM that needs the caller's tokio runtime (a timer).
struct SlowAtm;

impl Atm for SlowAtm {
    fn may_dispense<'a>(
        &'a self,
        _: &'a str,
        _: u64,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
        Box::pin(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            Ok("slow-auth".to_owned())
        })
    }
}

/// Accepts checks whose number starts with `"ok"`, counting the questions.
#[derive(Default)]
struct CountingValidator {
    calls: AtomicUsize,
}

impl CheckValidator for CountingValidator {
    fn validate(&self, _: &str, check_number: &str, _: u64) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if check_number.starts_with("ok") {
            Ok(())
        } else {
            Err(format!("check {check_number} is unknown"))
        }
    }
}

struct Doubles {
    atm: Arc<RecordingAtm>,
    checks: Arc<CountingValidator>,
}

impl Doubles {
    fn new(limit: Option<u64>) -> Self {
        Doubles {
            atm: Arc::new(RecordingAtm {
                limit,
                ..RecordingAtm::default()
            }),
            checks: Arc::default(),
        }
    }

    fn services(&self) -> BankServices {
        BankServices {
            atm: self.atm.clone(),
            checks: self.checks.clone(),
        }
    }

    fn app(&self, store: MemoryStore) -> App {
        App::builder(store)
            .services(self.services())
            .build()
            .unwrap()
    }
}

fn open(account: &str) -> OpenAccount {
    OpenAccount {
        account: account.into(),
        owner: "ada".into(),
    }
}

fn deposit(account: &str, amount: u64) -> DepositMoney {
    DepositMoney {
        account: account.into(),
        amount,
    }
}

fn withdraw(account: &str, amount: u64) -> WithdrawMoney {
    WithdrawMoney {
        account: account.into(),
        amount,
        atm_id: "atm-7".into(),
    }
}

fn check(account: &str, number: &str, amount: u64) -> WriteCheck {
    WriteCheck {
        account: account.into(),
        check_number: number.into(),
        amount,
    }
}

async fn funded(app: &App, account: &str, amount: u64) {
    app.execute(open(account)).await.unwrap();
    app.execute(deposit(account, amount)).await.unwrap();
}

// ---- through App ------------------------------------------------------------------

#[tokio::test]
async fn the_atm_is_asked_with_the_commands_data_and_its_answer_is_stored() {
    let doubles = Doubles::new(None);
    let app = doubles.app(MemoryStore::new());
    funded(&app, "a", 100).await;

    let done = app.execute(withdraw("a", 30)).await.unwrap();
    assert_eq!(doubles.atm.calls(), vec![("atm-7".to_owned(), 30)]);
    assert_eq!(done.version, 3);
    assert!(matches!(
        done.events.as_slice(),
        [AccountEvent::MoneyWithdrawn(MoneyWithdrawn { amount: 30, atm_id, authorization })]
            if atm_id == "atm-7" && authorization == "auth-1"
    ));
    let account: Account = app.load(&"a".to_string()).await.unwrap();
    assert_eq!(account.balance, 70);
}

#[tokio::test]
async fn the_atm_is_not_asked_when_funds_are_short() {
    let doubles = Doubles::new(None);
    let app = doubles.app(MemoryStore::new());
    funded(&app, "a", 10).await;

    let err = app.execute(withdraw("a", 30)).await.unwrap_err();
    assert!(matches!(
        err,
        CommandError::Rejected(AccountError::InsufficientFunds {
            balance: 10,
            requested: 30
        })
    ));
    assert!(doubles.atm.calls().is_empty());
}

#[tokio::test]
async fn a_refusal_by_the_service_is_a_rejection_and_stores_nothing() {
    let doubles = Doubles::new(Some(50));
    let store = MemoryStore::new();
    let app = doubles.app(store.clone());
    funded(&app, "a", 100).await;

    let err = app.execute(withdraw("a", 80)).await.unwrap_err();
    assert_eq!(
        err.into_rejection(),
        Some(AccountError::AtmRefused("atm-7 holds only 50".into()))
    );
    assert_eq!(doubles.atm.calls(), vec![("atm-7".to_owned(), 80)]);
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn a_sync_handler_asks_the_check_validator() {
    let doubles = Doubles::new(None);
    let app = doubles.app(MemoryStore::new());
    funded(&app, "a", 100).await;

    let done = app.execute(check("a", "ok-1", 40)).await.unwrap();
    assert_eq!(done.version, 3);
    let err = app.execute(check("a", "forged", 40)).await.unwrap_err();
    assert_eq!(
        err.into_rejection(),
        Some(AccountError::InvalidCheck("check forged is unknown".into()))
    );
    // Once per command: a rejection is not decided a second time on the same state.
    assert_eq!(doubles.checks.calls.load(Ordering::SeqCst), 2);
    let err = app.execute(check("a", "ok-2", 500)).await.unwrap_err();
    assert!(matches!(
        err,
        CommandError::Rejected(AccountError::InsufficientFunds { .. })
    ));
    assert_eq!(doubles.checks.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_app_without_the_services_says_which_are_missing() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());

    for err in [
        app.execute(open("a")).await.unwrap_err(),
        app.execute(withdraw("a", 1)).await.unwrap_err(),
    ] {
        match &err {
            CommandError::MissingServices {
                aggregate_type,
                services,
            } => {
                assert_eq!(*aggregate_type, "Account");
                assert!(services.ends_with("BankServices"), "{services}");
            }
            other => panic!("expected MissingServices, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("BankServices"), "{message}");
        assert!(
            message.contains("App::builder(..).services(value)"),
            "{message}"
        );
    }
    assert_eq!(store.len(), 0);
    // Services of another type do not stand in for them.
    let other = App::builder(store).services(42_u32).build().unwrap();
    assert!(matches!(
        other.execute(open("a")).await,
        Err(CommandError::MissingServices { .. })
    ));
}

#[tokio::test]
async fn two_aggregate_types_share_one_services_value() {
    let doubles = Doubles::new(None);
    let app = doubles.app(MemoryStore::new());
    funded(&app, "a", 100).await;

    app.execute(withdraw("a", 10)).await.unwrap();
    let loaded = app
        .execute(LoadCash {
            atm_id: "atm-9".into(),
            amount: 500,
        })
        .await
        .unwrap();
    assert!(matches!(
        loaded.events.as_slice(),
        [CassetteEvent::CashLoaded(CashLoaded { amount: 500, authorization })] if authorization == "auth-2"
    ));
    assert_eq!(
        doubles.atm.calls(),
        vec![("atm-7".to_owned(), 10), ("atm-9".to_owned(), 500)]
    );
}

#[tokio::test]
async fn an_async_handler_without_services_runs_through_app() {
    let app = Doubles::new(None).app(MemoryStore::new());
    let seal = SealCassette {
        atm_id: "atm-9".into(),
    };
    assert_eq!(app.execute(seal.clone()).await.unwrap().version, 1);
    assert!(matches!(
        app.execute(seal).await,
        Err(CommandError::Rejected(CassetteError::Sealed))
    ));
}

#[tokio::test]
async fn the_handler_runs_again_after_a_version_conflict() {
    let doubles = Doubles::new(None);
    let store = MemoryStore::new();
    let stale = doubles.app(store.clone());
    let other = doubles.app(store.clone());
    funded(&stale, "a", 100).await; // stale's cache is at version 2
    other.execute(deposit("a", 50)).await.unwrap(); // the store at version 3

    // Decided at version 2 (the ATM is asked), refused by the store, caught up to
    // version 3 and decided again (the ATM is asked again).
    let done = stale.execute(withdraw("a", 30)).await.unwrap();
    assert_eq!(done.version, 4);
    assert_eq!(
        doubles.atm.calls(),
        vec![("atm-7".to_owned(), 30), ("atm-7".to_owned(), 30)],
        "one call per decision: before and after the conflict"
    );
    assert!(matches!(
        done.events.as_slice(),
        [AccountEvent::MoneyWithdrawn(MoneyWithdrawn { authorization, .. })] if authorization == "auth-2"
    ));
    let account: Account = other.load(&"a".to_string()).await.unwrap();
    assert_eq!(account.balance, 120);
}

#[tokio::test]
async fn concurrent_async_commands_on_one_account_queue() {
    let doubles = Doubles::new(None);
    let app = doubles.app(MemoryStore::new());
    funded(&app, "a", 100).await;

    let runs = (0..10).map(|_| {
        let app = app.clone();
        tokio::spawn(async move { app.execute(withdraw("a", 15)).await })
    });
    let mut accepted = 0;
    for run in runs {
        match run.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(CommandError::Rejected(AccountError::InsufficientFunds { .. })) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, 6);
    assert_eq!(
        doubles.atm.calls().len(),
        6,
        "one App: no conflicts, no second asks"
    );
    let account: Account = app.load(&"a".to_string()).await.unwrap();
    assert_eq!(account.balance, 10);
}

// ---- through Fixture --------------------------------------------------------------

fn history() -> (AccountOpened, MoneyDeposited) {
    (
        AccountOpened {
            owner: "ada".into(),
        },
        MoneyDeposited { amount: 100 },
    )
}

fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("the fixture should panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap()
}

#[test]
fn fixture_runs_an_async_handler_with_doubles() {
    let doubles = Doubles::new(Some(50));
    let state = Fixture::<Account>::given(history())
        .with_services(doubles.services())
        .when(withdraw("a", 30))
        .then_expect_events(MoneyWithdrawn {
            amount: 30,
            atm_id: "atm-7".into(),
            authorization: "auth-1".into(),
        });
    assert_eq!(state.balance, 70);
    Fixture::<Account>::given(history())
        .with_services(doubles.services())
        .when(withdraw("a", 60))
        .then_expect_error(AccountError::AtmRefused("atm-7 holds only 50".into()));
    assert_eq!(
        doubles.atm.calls(),
        vec![("atm-7".to_owned(), 30), ("atm-7".to_owned(), 60)]
    );
}

#[test]
fn fixture_runs_a_sync_handler_with_doubles() {
    let doubles = Doubles::new(None);
    Fixture::<Account>::given(history())
        .with_services(doubles.services())
        .when(check("a", "ok-7", 10))
        .then_expect_events(CheckWritten {
            check_number: "ok-7".into(),
            amount: 10,
        });
    Fixture::<Account>::given(history())
        .with_services(doubles.services())
        .when(check("a", "bad", 10))
        .then_expect_error(AccountError::InvalidCheck("check bad is unknown".into()));
    assert_eq!(doubles.checks.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn fixture_runs_an_async_handler_without_services() {
    let seal = SealCassette {
        atm_id: "atm-9".into(),
    };
    Fixture::<Cassette>::given(())
        .with_services(Doubles::new(None).services())
        .when(seal.clone())
        .then_expect_events(CassetteSealed);
    Fixture::<Cassette>::given(CassetteSealed)
        .with_services(Doubles::new(None).services())
        .when(seal)
        .then_expect_error(CassetteError::Sealed);
}

#[tokio::test]
async fn fixture_when_async_awaits_doubles_on_the_callers_runtime() {
    let services = BankServices {
        atm: Arc::new(SlowAtm),
        checks: Arc::new(CountingValidator::default()),
    };
    Fixture::<Account>::given(history())
        .with_services(services)
        .when_async(withdraw("a", 30))
        .await
        .then_expect_events(MoneyWithdrawn {
            amount: 30,
            atm_id: "atm-7".into(),
            authorization: "slow-auth".into(),
        });
    // Sync handlers work through `when_async` too.
    Fixture::<Account>::given(history())
        .with_services(Doubles::new(None).services())
        .when_async(check("a", "ok-1", 1))
        .await
        .then_expect_events(CheckWritten {
            check_number: "ok-1".into(),
            amount: 1,
        });
}

#[test]
fn fixture_without_services_names_the_missing_type() {
    let message = panic_message(|| {
        let _ = Fixture::<Account>::given(history()).when(withdraw("a", 30));
    });
    assert!(
        message.contains("`Account` declares `services ="),
        "{message}"
    );
    assert!(message.contains("BankServices"), "{message}");
    assert!(message.contains(".with_services(doubles)"), "{message}");
    // Even for a handler that does not take them: the aggregate declares them.
    let message = panic_message(|| {
        let _ = Fixture::<Account>::given(()).when(open("a"));
    });
    assert!(message.contains("BankServices"), "{message}");
}
