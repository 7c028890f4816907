use eda::prelude::*;

#[command(name = "Deposit")]
#[derive(Debug, Clone)]
pub struct Deposit {
    #[aggregate_id]
    pub account: String,
}

fn main() {}
