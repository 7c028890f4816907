use eda::prelude::*;
use eda::rusqlite::{self, Transaction};

#[event]
#[derive(Debug)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Default)]
pub struct OwnerTable;

#[projection]
impl OwnerTable {
    #[reset]
    fn reset(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM owners", [])?;
        Ok(())
    }

    #[reset]
    fn clear(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM owners", [])?;
        Ok(())
    }

    #[on]
    fn opened(&mut self, e: &Opened, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("INSERT INTO owners (owner) VALUES (?1)", [&e.owner])?;
        Ok(())
    }
}

fn main() {}
