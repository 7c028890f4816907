use eda::prelude::*;
use eda::rusqlite::Transaction;

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
    fn opened(&mut self, e: &Opened, tx: &Transaction<'_>) {
        tx.execute("INSERT INTO owners (owner) VALUES (?1)", [&e.owner])
            .unwrap();
    }
}

fn main() {}
