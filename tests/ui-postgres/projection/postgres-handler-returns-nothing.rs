use eda::prelude::*;
use eda::tokio_postgres::Transaction;

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
    async fn opened(&mut self, e: &Opened, tx: &Transaction<'_>) {
        tx.execute("INSERT INTO owners (owner) VALUES ($1)", &[&e.owner])
            .await
            .unwrap();
    }
}

fn main() {}
