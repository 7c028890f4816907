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

#[event(name = "Opened", version = 2, upcast_from = Opened)]
#[derive(Debug)]
pub struct OpenedV2;

impl From<Opened> for OpenedV2 {
    fn from(_: Opened) -> Self {
        OpenedV2
    }
}

#[aggregate(error = AccountError)]
impl Account {
    #[apply]
    fn opened(&mut self, _: &Opened) {}

    #[apply]
    fn opened_v2(&mut self, _: &OpenedV2) {}
}

fn main() {}
