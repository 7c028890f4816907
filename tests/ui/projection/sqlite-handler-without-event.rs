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
    #[on]
    fn opened(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM owners", [])?;
        Ok(())
    }
}

fn main() {}
