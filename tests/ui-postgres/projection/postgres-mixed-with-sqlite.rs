use eda::prelude::*;
use eda::{rusqlite, tokio_postgres};

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
    async fn opened(
        &mut self,
        e: &Opened,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute("INSERT INTO owners (owner) VALUES ($1)", &[&e.owner])
            .await?;
        Ok(())
    }

    #[on]
    fn closed(&mut self, _: &Closed, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM owners", [])?;
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct OwnerFile;

#[projection]
impl OwnerFile {
    #[on]
    fn opened(&mut self, e: &Opened, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("INSERT INTO owners (owner) VALUES (?1)", [&e.owner])?;
        Ok(())
    }

    #[on]
    async fn closed(
        &mut self,
        _: &Closed,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute("DELETE FROM owners", &[]).await?;
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct Owners {
    count: usize,
}

#[projection]
impl Owners {
    #[on]
    async fn opened(
        &mut self,
        _: &Opened,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    #[on]
    fn closed(&mut self, _: &Closed) {
        self.count += 1;
    }
}

fn main() {}
