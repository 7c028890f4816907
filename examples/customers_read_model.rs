//! The read side, told as a short story: `cargo run --example customers_read_model`.
//!
//! Customers register, correct a misspelt address (`CorrectAddress`: a fix, no
//! rules about moving) and relocate (`RelocateCustomer`: a move, with its own rule
//! and event). The events go to one SQLite file; a customer directory (a SQLite
//! read model) lives in another, fed from the log by its runner, with its
//! checkpoint in the same transaction as its rows. A policy reacts to each
//! relocation with a command, executed exactly once in effect. Both files are
//! fresh ones in the temporary directory.

#![allow(missing_docs)]

use std::time::Duration;

use eda::prelude::*;
use eda::rusqlite::{self, Transaction};
use eda::RecordedEvent;

// ---- The customers domain -------------------------------------------------

#[event]
#[derive(Debug, Clone)]
pub struct CustomerRegistered {
    pub name: String,
    pub email: String,
    pub address: String,
}

/// The address on file was wrong: the customer did not move.
#[event]
#[derive(Debug, Clone)]
pub struct AddressCorrected {
    pub address: String,
}

/// The customer moved.
#[event]
#[derive(Debug, Clone)]
pub struct CustomerRelocated {
    pub address: String,
}

#[event]
#[derive(Debug, Clone)]
pub struct AddressCheckScheduled {
    pub address: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct RegisterCustomer {
    #[aggregate_id]
    pub id: String,
    pub name: String,
    pub email: String,
    pub address: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct CorrectAddress {
    #[aggregate_id]
    pub id: String,
    pub address: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct RelocateCustomer {
    #[aggregate_id]
    pub id: String,
    pub address: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct ScheduleAddressCheck {
    #[aggregate_id]
    pub id: String,
    pub address: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    #[error("the customer is already registered")]
    AlreadyRegistered,
    #[error("no such customer")]
    NotRegistered,
    /// A relocation to the address the customer lives at is not a move.
    #[error("the customer already lives there")]
    SameAddress,
}

#[derive(Debug, Default)]
pub struct Customer {
    address: Option<String>,
}

#[aggregate(error = CustomerError)]
impl Customer {
    #[handle]
    fn register(&self, c: RegisterCustomer) -> Result<CustomerRegistered, CustomerError> {
        if self.address.is_some() {
            return Err(CustomerError::AlreadyRegistered);
        }
        Ok(CustomerRegistered {
            name: c.name,
            email: c.email,
            address: c.address,
        })
    }

    #[handle]
    fn correct(&self, c: CorrectAddress) -> Result<AddressCorrected, CustomerError> {
        self.address.as_ref().ok_or(CustomerError::NotRegistered)?;
        Ok(AddressCorrected { address: c.address })
    }

    #[handle]
    fn relocate(&self, c: RelocateCustomer) -> Result<CustomerRelocated, CustomerError> {
        let current = self.address.as_ref().ok_or(CustomerError::NotRegistered)?;
        if *current == c.address {
            return Err(CustomerError::SameAddress);
        }
        Ok(CustomerRelocated { address: c.address })
    }

    #[handle]
    fn schedule_check(
        &self,
        c: ScheduleAddressCheck,
    ) -> Result<AddressCheckScheduled, CustomerError> {
        self.address.as_ref().ok_or(CustomerError::NotRegistered)?;
        Ok(AddressCheckScheduled { address: c.address })
    }

    #[apply]
    fn registered(&mut self, e: &CustomerRegistered) {
        self.address = Some(e.address.clone());
    }

    #[apply]
    fn corrected(&mut self, e: &AddressCorrected) {
        self.address = Some(e.address.clone());
    }

    #[apply]
    fn relocated(&mut self, e: &CustomerRelocated) {
        self.address = Some(e.address.clone());
    }

    #[apply]
    fn check_scheduled(&mut self, _: &AddressCheckScheduled) {}
}

// ---- The read side ------------------------------------------------------

/// The customer directory: a table in its own SQLite file.
#[derive(Debug, Default)]
pub struct Directory;

#[projection(name = "customer_directory")]
impl Directory {
    #[on]
    fn registered(
        &mut self,
        e: &CustomerRegistered,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO customers (id, name, email, address, moves) VALUES (?1, ?2, ?3, ?4, 0)",
            (&recorded.aggregate_id, &e.name, &e.email, &e.address),
        )?;
        Ok(())
    }

    #[on]
    fn corrected(
        &mut self,
        e: &AddressCorrected,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE customers SET address = ?2 WHERE id = ?1",
            (&recorded.aggregate_id, &e.address),
        )?;
        Ok(())
    }

    #[on]
    fn relocated(
        &mut self,
        e: &CustomerRelocated,
        recorded: &RecordedEvent,
        tx: &Transaction<'_>,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE customers SET address = ?2, moves = moves + 1 WHERE id = ?1",
            (&recorded.aggregate_id, &e.address),
        )?;
        Ok(())
    }
}

/// When a customer moves (not when an address is corrected), schedule a check
/// of the new address.
#[derive(Debug, Default)]
pub struct AddressChecks;

#[policy(name = "address_checks")]
impl AddressChecks {
    #[on]
    fn relocated(
        &self,
        e: &CustomerRelocated,
        recorded: &RecordedEvent,
    ) -> Option<ScheduleAddressCheck> {
        Some(ScheduleAddressCheck {
            id: recorded.aggregate_id.clone(),
            address: e.address.clone(),
        })
    }
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir();
    let (events, read) = (
        dir.join("eda-customers.db"),
        dir.join("eda-customers-read.db"),
    );
    for path in [&events, &read] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    println!(
        "events in {}, the directory in {}",
        events.display(),
        read.display()
    );
    let store = SqliteStore::open(&events).await?;
    let app = App::new(store.clone());

    // The read model's table is the application's; the runner adds its checkpoint.
    rusqlite::Connection::open(&read)?.execute_batch(
        "CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT, email TEXT, address TEXT, moves INTEGER)",
    )?;
    let directory = app.project(Directory).database(&read).start().await?;
    let checks = app.policy(AddressChecks).start();

    let ada = |address: &str| RegisterCustomer {
        id: "c-1".into(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        address: address.into(),
    };
    app.execute(ada("12 Mian Street")).await?;
    println!("Ada registers at 12 Mian Street");
    let corrected = app
        .execute(CorrectAddress {
            id: "c-1".into(),
            address: "12 Main Street".into(),
        })
        .await?;
    directory.wait_for(corrected.position, WAIT).await?;
    println!(
        "the clerk corrects the spelling; the directory says: {}",
        row(&read, "c-1")?
    );

    let refused = app
        .execute(RelocateCustomer {
            id: "c-1".into(),
            address: "12 Main Street".into(),
        })
        .await;
    if let Err(CommandError::Rejected(error)) = refused {
        println!("a move to where she lives is refused: {error}");
    }

    let moved = app
        .execute(RelocateCustomer {
            id: "c-1".into(),
            address: "3 Harbour Road".into(),
        })
        .await?;
    directory.wait_for(moved.position, WAIT).await?;
    println!("Ada moves; read your writes: {}", row(&read, "c-1")?);

    checks.wait_for(moved.position, WAIT).await?;
    let log = store.read_all(0, 100).await?;
    let scheduled: Vec<_> = log
        .iter()
        .filter(|e| e.name == "AddressCheckScheduled")
        .collect();
    println!(
        "the policy scheduled {} address check(s), caused by event {}",
        scheduled.len(),
        scheduled[0].metadata.causation_id.unwrap_or_default()
    );

    let end = log.last().map(|e| e.position);
    directory.wait_for(end, WAIT).await?;
    checks.wait_for(end, WAIT).await?;
    for status in [directory.status(), checks.status()] {
        println!(
            "runner {}: checkpoint {}, {} events applied, {} parked, {:?}",
            status.name, status.checkpoint, status.applied, status.parked, status.state
        );
    }
    directory.stop().await;
    checks.stop().await;
    app.close().await?;
    Ok(())
}

/// The directory's row for customer `id`, as the application would query it.
fn row(path: &std::path::Path, id: &str) -> rusqlite::Result<String> {
    rusqlite::Connection::open(path)?.query_row(
        "SELECT name, address, moves FROM customers WHERE id = ?1",
        [id],
        |r| {
            let (name, address, moves): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            Ok(format!("{name}, {address} ({moves} move(s))"))
        },
    )
}
