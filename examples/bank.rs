//! A bank account's life, told as a short story: `cargo run --example bank`.

#[path = "domain/bank.rs"]
mod bank;

use bank::{Account, AccountError, DepositMoney, OpenAccount, WithdrawMoney};
use eda::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = App::new(MemoryStore::new());
    let account = "acc-1".to_string();

    let opened = app
        .execute(OpenAccount {
            account: account.clone(),
            owner: "Ada".into(),
        })
        .await?;
    println!(
        "Ada opens account {account}            -> version {}",
        opened.version
    );

    let deposited = app
        .execute(DepositMoney {
            account: account.clone(),
            amount: 100,
        })
        .await?;
    println!(
        "she deposits 100                    -> version {}",
        deposited.version
    );

    let withdrawal = WithdrawMoney {
        account: account.clone(),
        amount: 30,
        reference: "rent".into(),
    };
    let withdrawn = app
        .execute(withdrawal.clone())
        .idempotency_key("rent-2026-11")
        .await?;
    println!(
        "she withdraws 30 for rent           -> version {}",
        withdrawn.version
    );

    let again = app
        .execute(withdrawal)
        .idempotency_key("rent-2026-11")
        .await?;
    println!(
        "the same withdrawal is retried      -> version {} (duplicate: {}, nothing appended)",
        again.version, again.duplicate
    );

    let overdraft = app
        .execute(WithdrawMoney {
            account: account.clone(),
            amount: 500,
            reference: "car".into(),
        })
        .await;
    match overdraft {
        Err(CommandError::Rejected(AccountError::InsufficientFunds { balance, requested })) => {
            println!(
                "she tries to withdraw {requested}           -> rejected: only {balance} left"
            );
        }
        other => return Err(format!("expected a rejected overdraft, got {other:?}").into()),
    }

    let (state, version): (Account, u64) = app.load_with_version(&account).await?;
    println!(
        "replaying {version} events gives owner {} and balance {}",
        state.owner.as_deref().unwrap_or("?"),
        state.balance
    );
    Ok(())
}
