use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Withdrawn;

#[command]
#[derive(Debug, Clone)]
pub struct Withdraw {
    #[aggregate_id]
    pub account: String,
}

#[derive(Debug)]
pub struct AccountError;

pub struct BankServices;

#[derive(Debug, Default)]
pub struct Account;

#[aggregate(error = AccountError, services = BankServices)]
impl Account {
    #[handle]
    async fn withdraw(&self, _: Withdraw, _: &BankServices) -> Result<Withdrawn, AccountError> {
        Ok(Withdrawn)
    }

    #[apply]
    async fn withdrawn(&mut self, _: &Withdrawn) {}
}

fn main() {}
