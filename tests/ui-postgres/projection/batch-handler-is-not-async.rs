use eda::prelude::*;
use eda::PostgresBatch;

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
    fn opened(&mut self, e: &Opened, tx: &PostgresBatch<'_>) -> Result<(), eda::tokio_postgres::Error> {
        tx.queue("INSERT INTO owners (owner) VALUES ($1)", (e.owner.clone(),));
        Ok(())
    }
}

fn main() {}
