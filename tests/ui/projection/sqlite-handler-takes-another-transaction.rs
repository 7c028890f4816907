use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Default)]
pub struct OwnerTable;

pub mod db {
    pub struct Transaction;

    impl Transaction {
        pub fn insert(&self, _: &str) {}
    }
}

#[projection]
impl OwnerTable {
    #[on]
    fn opened(&mut self, e: &Opened, tx: &db::Transaction) -> Result<(), std::io::Error> {
        tx.insert(&e.owner);
        Ok(())
    }
}

fn main() {}
