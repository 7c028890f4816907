use eda::prelude::*;

#[command]
#[derive(Debug, Clone)]
pub enum AccountCommand {
    Open { account: String },
}

fn main() {}
