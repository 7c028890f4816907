use eda::prelude::*;

#[event(name = "MoneyWithdrawn", version = 1)]
#[derive(Debug)]
pub struct MoneyWithdrawnV1 {
    pub amount: u64,
}

#[event(name = "MoneyWithdrawn", version = 3, upcast_from = MoneyWithdrawnV1)]
#[derive(Debug)]
pub struct MoneyWithdrawn {
    pub amount: u64,
}

impl From<MoneyWithdrawnV1> for MoneyWithdrawn {
    fn from(old: MoneyWithdrawnV1) -> Self {
        MoneyWithdrawn { amount: old.amount }
    }
}

fn main() {}
