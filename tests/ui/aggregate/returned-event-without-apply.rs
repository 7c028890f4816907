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

#[aggregate(error = AccountError)]
impl Account {
    #[handle]
    fn open(&self, _: Open) -> Result<Opened, AccountError> {
        Ok(Opened)
    }

    #[handle]
    fn close(&self, _: Close) -> Result<(Option<Opened>, Vec<Closed>), AccountError> {
        Ok((None, vec![Closed]))
    }

    #[apply]
    fn opened(&mut self, _: &Opened) {}
}

fn main() {}
