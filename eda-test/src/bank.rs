//! The bank domain shared by the `bank` example, the tests and the benchmarks: an
//! account is opened, money is deposited and withdrawn, never below zero.

use eda::prelude::*;

/// An account was opened for its owner.
#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct AccountOpened {
    /// Who holds the account.
    pub owner: String,
}

/// Money was paid in.
#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct MoneyDeposited {
    /// How much.
    pub amount: u64,
}

/// The first schema of a withdrawal, before it carried a reference.
#[event(name = "MoneyWithdrawn", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct MoneyWithdrawnV1 {
    /// How much.
    pub amount: u64,
}

/// Money was paid out; the second schema of the event, which an old one is upcast to.
#[event(name = "MoneyWithdrawn", version = 2, upcast_from = MoneyWithdrawnV1)]
#[derive(Debug, Clone, PartialEq)]
pub struct MoneyWithdrawn {
    /// How much.
    pub amount: u64,
    /// What for (empty in a withdrawal of the first schema).
    pub reference: String,
}

impl From<MoneyWithdrawnV1> for MoneyWithdrawn {
    fn from(old: MoneyWithdrawnV1) -> Self {
        MoneyWithdrawn {
            amount: old.amount,
            reference: String::new(),
        }
    }
}

/// Open an account (refused if it is open already).
#[command]
#[derive(Debug, Clone)]
pub struct OpenAccount {
    /// The account's id.
    #[aggregate_id]
    pub account: String,
    /// Who holds it.
    pub owner: String,
}

/// Pay money into an open account.
#[command]
#[derive(Debug, Clone)]
pub struct DepositMoney {
    /// The account's id.
    #[aggregate_id]
    pub account: String,
    /// How much (not zero).
    pub amount: u64,
}

/// Pay money out of an open account, no more than its balance.
#[command]
#[derive(Debug, Clone)]
pub struct WithdrawMoney {
    /// The account's id.
    #[aggregate_id]
    pub account: String,
    /// How much.
    pub amount: u64,
    /// What for.
    pub reference: String,
}

/// Why an account refused a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountError {
    /// Opening an account that is open.
    AlreadyOpen,
    /// Moving money on an account that was never opened.
    NotOpen,
    /// Depositing nothing.
    ZeroAmount,
    /// Withdrawing more than the balance.
    InsufficientFunds {
        /// The balance at the time.
        balance: u64,
        /// The amount asked for.
        requested: u64,
    },
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccountError::AlreadyOpen => f.write_str("the account is already open"),
            AccountError::NotOpen => f.write_str("the account is not open"),
            AccountError::ZeroAmount => f.write_str("the amount must be positive"),
            AccountError::InsufficientFunds { balance, requested } => {
                write!(
                    f,
                    "insufficient funds: balance {balance}, requested {requested}"
                )
            }
        }
    }
}

impl std::error::Error for AccountError {}

/// A bank account, the aggregate of this domain.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Account {
    /// Who holds it, once opened.
    pub owner: Option<String>,
    /// Deposits less withdrawals.
    pub balance: u64,
}

#[aggregate(error = AccountError)]
impl Account {
    #[handle]
    fn open(&self, cmd: OpenAccount) -> Result<AccountOpened, AccountError> {
        if self.owner.is_some() {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(AccountOpened { owner: cmd.owner })
    }

    #[handle]
    fn deposit(&self, cmd: DepositMoney) -> Result<MoneyDeposited, AccountError> {
        self.ensure_open()?;
        if cmd.amount == 0 {
            return Err(AccountError::ZeroAmount);
        }
        Ok(MoneyDeposited { amount: cmd.amount })
    }

    #[handle]
    fn withdraw(&self, cmd: WithdrawMoney) -> Result<MoneyWithdrawn, AccountError> {
        self.ensure_open()?;
        if cmd.amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: cmd.amount,
            });
        }
        Ok(MoneyWithdrawn {
            amount: cmd.amount,
            reference: cmd.reference,
        })
    }

    #[apply]
    fn opened(&mut self, e: &AccountOpened) {
        self.owner = Some(e.owner.clone());
    }

    #[apply]
    fn deposited(&mut self, e: &MoneyDeposited) {
        self.balance += e.amount;
    }

    #[apply]
    fn withdrawn(&mut self, e: &MoneyWithdrawn) {
        self.balance -= e.amount;
    }

    fn ensure_open(&self) -> Result<(), AccountError> {
        self.owner.as_ref().map(|_| ()).ok_or(AccountError::NotOpen)
    }
}

/// Opens account `id` for ada through `app`, which must succeed: the opening's
/// position in the log.
pub async fn open_account(app: &App, id: &str) -> u64 {
    let open = OpenAccount {
        account: id.into(),
        owner: "ada".into(),
    };
    match app.execute(open).await {
        Ok(opened) => opened.position.expect("an opening stores an event"),
        Err(error) => panic!("opening account {id}: {error}"),
    }
}

/// The bonus [`WelcomeBonus`] pays into every new account.
pub const BONUS: u64 = 10;

/// A policy: every account opened gets a welcome bonus deposited.
#[derive(Debug, Default)]
pub struct WelcomeBonus;

#[policy(name = "welcome-bonus")]
impl WelcomeBonus {
    #[on]
    fn opened(&self, _: &AccountOpened, recorded: &eda::RecordedEvent) -> Option<DepositMoney> {
        Some(DepositMoney {
            account: recorded.aggregate_id.clone(),
            amount: BONUS,
        })
    }
}
