use eda::prelude::*;
use eda::rusqlite::{self, Transaction};

#[event]
#[derive(Debug)]
pub struct Opened {
    pub owner: String,
}

#[event]
#[derive(Debug)]
pub struct Closed;

#[derive(Debug, Default)]
pub struct OwnerTable;

#[projection]
impl OwnerTable {
    #[on]
    fn opened(&mut self, e: &Opened, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("INSERT INTO owners (owner) VALUES (?1)", [&e.owner])?;
        Ok(())
    }

    #[on]
    fn closed(&mut self, _: &Closed) {}
}

#[derive(Debug, Default)]
pub struct Owners {
    count: usize,
}

#[projection]
impl Owners {
    #[on]
    fn opened(&mut self, _: &Opened) {
        self.count += 1;
    }

    #[on]
    fn closed(&mut self, _: &Closed, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM owners", [])?;
        Ok(())
    }
}

fn main() {}
