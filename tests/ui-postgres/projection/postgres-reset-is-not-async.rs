use eda::prelude::*;
use eda::tokio_postgres::{self, Transaction};

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
    fn reset(&mut self, _tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        Ok(())
    }

    #[on]
    async fn opened(
        &mut self,
        e: &Opened,
        tx: &Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute("INSERT INTO owners (owner) VALUES ($1)", &[&e.owner]).await?;
        Ok(())
    }
}

fn main() {}
