use eda::prelude::*;

#[event(name = "Withdrawn", version = 1)]
#[derive(Debug)]
pub struct WithdrawnV1 {
    pub amount: u64,
}

#[event(name = "MoneyWithdrawn", version = 2, upcast_from = WithdrawnV1)]
#[derive(Debug)]
pub struct MoneyWithdrawn {
    pub amount: u64,
}

impl From<WithdrawnV1> for MoneyWithdrawn {
    fn from(old: WithdrawnV1) -> Self {
        MoneyWithdrawn { amount: old.amount }
    }
}

fn main() {}
