use eda::prelude::*;

#[derive(Debug)]
pub struct OldShape {
    pub amount: u64,
}

#[event(version = 2, upcast_from = OldShape)]
#[derive(Debug)]
pub struct MoneyWithdrawn {
    pub amount: u64,
}

impl From<OldShape> for MoneyWithdrawn {
    fn from(old: OldShape) -> Self {
        MoneyWithdrawn { amount: old.amount }
    }
}

fn main() {}
