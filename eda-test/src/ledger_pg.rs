//! The ledger in PostgreSQL: the same read model as the SQLite one, with async
//! `#[on]` methods queuing their statements in the runner's batch, in the
//! schema the runner was given.

use eda::prelude::*;
use eda::tokio_postgres::{self, Client, Transaction};
use eda::{PostgresBatch, RecordedEvent};

use crate::bank::{AccountOpened, MoneyDeposited, MoneyWithdrawn};
use crate::ledger::LedgerRows;

/// A ledger projection named `ledger`: `$ty`, at `$version`.
macro_rules! ledger {
    ($(#[$doc:meta])* $ty:ident, $version:literal) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $ty;

        #[projection(name = "ledger", version = $version)]
        impl $ty {
            #[reset]
            async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
                tx.batch_execute("DELETE FROM balances; DELETE FROM applications;")
                    .await
            }

            #[on]
            async fn opened(
                &mut self,
                _: &AccountOpened,
                recorded: &RecordedEvent,
                tx: &PostgresBatch<'_>,
            ) -> Result<(), tokio_postgres::Error> {
                add(tx, recorded, 0);
                Ok(())
            }

            #[on]
            async fn deposited(
                &mut self,
                e: &MoneyDeposited,
                recorded: &RecordedEvent,
                tx: &PostgresBatch<'_>,
            ) -> Result<(), tokio_postgres::Error> {
                add(tx, recorded, e.amount as i64);
                Ok(())
            }

            #[on]
            async fn withdrawn(
                &mut self,
                e: &MoneyWithdrawn,
                recorded: &RecordedEvent,
                tx: &PostgresBatch<'_>,
            ) -> Result<(), tokio_postgres::Error> {
                add(tx, recorded, -(e.amount as i64));
                Ok(())
            }
        }
    };
}

ledger!(
    /// The bank's balances in a PostgreSQL schema: `balances (account, balance)`
    /// and `applications (event_id, position, seq)`, `seq` in the order of the
    /// applications; its `#[reset]` method empties both.
    LedgerPg,
    1
);

ledger!(
    /// The same ledger at version 2: what a new version of [`LedgerPg`]
    /// rebuilds.
    LedgerPgV2,
    2
);

/// The statement of [`add`]: `$1` the account, `$2` the amount, `$3` the
/// event id, `$4` its position. (The read-side bench's raw loop sends the same.)
pub const ADD: &str = "WITH balance AS (
         INSERT INTO balances (account, balance) VALUES ($1, $2)
         ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance
     )
     INSERT INTO applications (event_id, position) VALUES ($3, $4)";

/// Queues the addition of `amount` to the balance of `recorded`'s account and
/// the record of the application: one statement.
pub fn add(tx: &PostgresBatch<'_>, recorded: &RecordedEvent, amount: i64) {
    tx.queue(ADD, params(recorded, amount));
}

/// [`ADD`]'s parameters for `recorded` and `amount`.
pub fn params(recorded: &RecordedEvent, amount: i64) -> (String, i64, eda::Uuid, i64) {
    (
        recorded.aggregate_id.clone(),
        amount,
        recorded.event_id,
        recorded.position as i64,
    )
}

/// Creates `schema` and the ledger's tables in it (if they are missing).
pub async fn create(client: &Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.balances (account text PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS {schema}.applications (event_id uuid NOT NULL, position bigint NOT NULL, seq bigserial);"
        ))
        .await
}

/// Reads the ledger in `schema`.
pub async fn read(client: &Client, schema: &str) -> Result<LedgerRows, tokio_postgres::Error> {
    let mut rows = LedgerRows::default();
    let balances = format!("SELECT account, balance FROM {schema}.balances");
    for row in client.query(&balances, &[]).await? {
        rows.balances.insert(row.get(0), row.get(1));
    }
    let applications = format!(
        "SELECT event_id::text, count(*)::int FROM {schema}.applications GROUP BY event_id"
    );
    for row in client.query(&applications, &[]).await? {
        rows.applications
            .insert(row.get(0), u32::try_from(row.get::<_, i32>(1)).unwrap());
    }
    Ok(rows)
}

/// The positions in `schema`'s `applications`, in the order they were applied.
pub async fn applied_positions(
    client: &Client,
    schema: &str,
) -> Result<Vec<u64>, tokio_postgres::Error> {
    let query = format!("SELECT position FROM {schema}.applications ORDER BY seq");
    let rows = client.query(&query, &[]).await?;
    Ok(rows.iter().map(|row| row.get::<_, i64>(0) as u64).collect())
}
