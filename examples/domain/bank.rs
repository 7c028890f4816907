//! The bank domain shared by the `bank` example, the tests and the benchmarks.
#![allow(missing_docs, dead_code)]

use eda::prelude::*;

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

/// The first schema of a withdrawal, before it carried a reference.
#[event(name = "MoneyWithdrawn", version = 1)]
#[derive(Debug, Clone, PartialEq)]
pub struct MoneyWithdrawnV1 {
    pub amount: u64,
}

#[event(name = "MoneyWithdrawn", version = 2, upcast_from = MoneyWithdrawnV1)]
#[derive(Debug, Clone, PartialEq)]
pub struct MoneyWithdrawn {
    pub amount: u64,
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
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountError {
    AlreadyOpen,
    NotOpen,
    ZeroAmount,
    InsufficientFunds { balance: u64, requested: u64 },
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

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Account {
    pub owner: Option<String>,
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
