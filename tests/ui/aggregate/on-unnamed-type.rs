use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened;

#[command]
#[derive(Debug, Clone)]
pub struct Open {
    #[aggregate_id]
    pub account: String,
}

#[derive(Debug)]
pub struct AccountError;

#[aggregate(error = AccountError)]
impl [u8; 4] {
    #[handle]
    fn open(&self, _: Open) -> Result<Opened, AccountError> {
        Ok(Opened)
    }

    #[apply]
    fn opened(&mut self, _: &Opened) {}
}

fn main() {}
