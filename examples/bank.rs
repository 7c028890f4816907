//! A bank account's life, told as a short story: `cargo run --example bank`.
//!
//! The events go to a SQLite file (the embedded default store), by default a fresh
//! one in the temporary directory. `cargo run --example bank -- my.db` uses another
//! file, and `cargo run --example bank --features postgres -- postgres://postgres@127.0.0.1/test`
//! PostgreSQL; both keep the events of earlier runs, so each run opens a new account.
//!
//! The domain (the events, commands and `Account` aggregate) is
//! `eda-test/src/bank.rs`, which the tests and benchmarks drive too.

use eda::prelude::*;
use eda_test::bank::{Account, AccountError, DepositMoney, OpenAccount, WithdrawMoney};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (app, account) = match std::env::args().nth(1) {
        Some(url) if url.starts_with("postgres://") => (postgres(&url).await?, fresh_account()),
        Some(path) => {
            println!("events are stored in {path}");
            (App::new(SqliteStore::open(&path).await?), fresh_account())
        }
        None => {
            let path = std::env::temp_dir().join("eda-bank-example.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            println!("events are stored in {}", path.display());
            (
                App::new(SqliteStore::open(&path).await?),
                "acc-1".to_string(),
            )
        }
    };

    let opened = app
        .execute(OpenAccount {
            account: account.clone(),
            owner: "Ada".into(),
        })
        .await?;
    println!("Ada opens account {account}: version {}", opened.version);

    let deposited = app
        .execute(DepositMoney {
            account: account.clone(),
            amount: 100,
        })
        .await?;
    println!("she deposits 100: version {}", deposited.version);

    let withdrawal = WithdrawMoney {
        account: account.clone(),
        amount: 30,
        reference: "rent".into(),
    };
    let withdrawn = app
        .execute(withdrawal.clone())
        .idempotency_key(format!("rent-2026-11-{account}"))
        .await?;
    println!("she withdraws 30 for rent: version {}", withdrawn.version);

    let again = app
        .execute(withdrawal)
        .idempotency_key(format!("rent-2026-11-{account}"))
        .await?;
    println!(
        "the same withdrawal is retried: still version {} (duplicate: {}, nothing appended)",
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
            println!("she tries to withdraw {requested}: rejected, only {balance} left");
        }
        other => return Err(format!("expected a rejected overdraft, got {other:?}").into()),
    }

    let (state, version): (Account, u64) = app.load_with_version(&account).await?;
    println!(
        "replaying {version} events gives owner {} and balance {}",
        state.owner.as_deref().unwrap_or("?"),
        state.balance
    );
    // Everything into the database file before the program ends (SQLite keeps
    // recent commits in its write-ahead log until then).
    app.close().await?;
    Ok(())
}

/// An account id no earlier run used.
fn fresh_account() -> String {
    format!("acc-{}", &eda::Uuid::now_v7().simple().to_string()[20..])
}

#[cfg(feature = "postgres")]
async fn postgres(url: &str) -> Result<App, Box<dyn std::error::Error>> {
    println!("events are stored in PostgreSQL at {url}");
    Ok(App::new(eda::PostgresStore::connect(url).await?))
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_: &str) -> Result<App, Box<dyn std::error::Error>> {
    Err("this example was built without PostgreSQL: add `--features postgres`".into())
}
