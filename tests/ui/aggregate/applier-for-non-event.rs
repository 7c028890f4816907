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

#[derive(Debug)]
pub struct Renamed;

#[aggregate(error = AccountError)]
impl Account {
    #[apply]
    fn renamed(&mut self, _: &Renamed) {}
}

fn main() {}
