use eda::prelude::*;

#[event(name = "MoneyWithdrawn", version = 1)]
#[derive(Debug)]
pub struct MoneyWithdrawnV1 {
    pub amount: u64,
}

#[event(name = "MoneyWithdrawn", version = 2, upcast_from = MoneyWithdrawnV1)]
#[derive(Debug)]
pub struct MoneyWithdrawn {
    pub amount: u64,
}

fn main() {}
