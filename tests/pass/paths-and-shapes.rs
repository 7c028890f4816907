//! Inputs that must compile: events named through module paths, the generated enum
//! in return types, integer ids, an aggregate without handlers.

use eda::prelude::*;

mod events {
    use eda::prelude::*;

    #[event]
    #[derive(Debug)]
    pub struct Opened;

    #[event(name = "bank.Closed", version = 7)]
    #[derive(Debug)]
    pub struct Closed {
        pub reason: String,
    }
}

use events::Opened;

#[command]
#[derive(Debug, Clone)]
pub struct Open(#[aggregate_id] pub u128);

#[command]
#[derive(Debug, Clone)]
pub struct Close {
    #[aggregate_id]
    pub id: u128,
    #[allow(dead_code)]
    pub reason: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct Both {
    #[aggregate_id]
    pub id: u128,
}

#[derive(Debug)]
pub struct Refused;

#[derive(Debug, Default)]
pub struct Account {
    open: bool,
}

#[aggregate(id = u128, error = Refused)]
impl Account {
    #[handle]
    fn open(&self, _: Open) -> Result<events::Opened, Refused> {
        Ok(Opened)
    }

    #[handle]
    fn close(&self, cmd: Close) -> Result<Vec<AccountEvent>, Refused> {
        Ok(vec![events::Closed { reason: cmd.reason }.into()])
    }

    #[handle]
    fn both(&self, _: Both) -> Result<(AccountEvent, Option<events::Closed>), Refused> {
        Ok((Opened.into(), None))
    }

    #[apply]
    fn opened(&mut self, _: &Opened) {
        self.open = true;
    }

    #[apply]
    fn closed(&mut self, _: &events::Closed) {
        self.open = false;
    }
}

#[derive(Debug, Default)]
pub struct ReadOnly;

#[aggregate]
impl ReadOnly {
    #[apply]
    fn opened(&mut self, _: &Opened) {}
}

fn main() {
    let _ = App::new(MemoryStore::new());
    let _ = Account::default().open;
}
