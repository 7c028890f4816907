use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened;

#[command]
#[derive(Debug, Clone)]
pub struct Open {
    #[aggregate_id]
    pub account: u64,
}

#[derive(Debug, Default)]
pub struct Account;

#[aggregate(id = String, error = std::convert::Infallible)]
impl Account {
    #[handle]
    fn open(&self, _: Open) -> Result<Opened, std::convert::Infallible> {
        Ok(Opened)
    }

    #[apply]
    fn opened(&mut self, _: &Opened) {}
}

fn main() {}
