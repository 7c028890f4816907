use eda::prelude::*;

#[command]
#[derive(Debug)]
pub struct Deposit {
    #[aggregate_id]
    pub account: String,
}

fn main() {}
