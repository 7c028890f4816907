use eda::prelude::*;

#[command]
#[derive(Debug, Clone)]
pub struct Deposit {
    pub account: String,
    pub amount: u64,
}

fn main() {}
