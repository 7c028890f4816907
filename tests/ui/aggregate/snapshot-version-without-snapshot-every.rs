use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened;

#[event]
#[derive(Debug)]
pub struct Closed;

#[command]
#[derive(Debug, Clone)]
pub struct Open {
    #[aggregate_id]
    pub account: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct Close {
    #[aggregate_id]
    pub account: String,
}

#[derive(Debug)]
pub struct AccountError;

#[derive(Debug, Default)]
pub struct Account;

#[aggregate(error = AccountError, snapshot_version = 2)]
impl Account {
    #[apply]
    fn opened(&mut self, _: &Opened) {}
}

fn main() {}
