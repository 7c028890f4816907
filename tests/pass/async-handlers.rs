//! Handlers that take the aggregate's services and handlers that are `async`, in
//! every combination; services named through another path than `services =`.

use eda::prelude::*;
use eda::Handle;

mod bank {
    pub struct Services {
        pub limit: u64,
    }
}

#[event]
#[derive(Debug)]
pub struct Opened;

#[event]
#[derive(Debug)]
pub struct Withdrawn {
    pub amount: u64,
}

#[command]
#[derive(Debug, Clone)]
pub struct Open(#[aggregate_id] pub String);

#[command]
#[derive(Debug, Clone)]
pub struct Withdraw {
    #[aggregate_id]
    pub id: String,
    pub amount: u64,
}

#[command]
#[derive(Debug, Clone)]
pub struct Check(#[aggregate_id] pub String, pub u64);

#[command]
#[derive(Debug, Clone)]
pub struct Close(#[aggregate_id] pub String);

#[derive(Debug)]
pub struct Refused;

pub type AccountResult<T> = Result<T, Refused>;

#[derive(Debug, Default)]
pub struct Account {
    open: bool,
}

#[aggregate(error = Refused, services = crate::bank::Services)]
impl Account {
    /// Sync, without services.
    #[handle]
    fn open(&self, _: Open) -> Result<Opened, Refused> {
        Ok(Opened)
    }

    /// Async, with services.
    #[handle]
    async fn withdraw(&self, cmd: Withdraw, bank: &bank::Services) -> AccountResult<Withdrawn> {
        if !self.open || cmd.amount > bank.limit {
            return Err(Refused);
        }
        Ok(Withdrawn { amount: cmd.amount })
    }

    /// Sync, with services.
    #[handle]
    fn check(&self, cmd: Check, bank: &crate::bank::Services) -> Result<(), Refused> {
        if cmd.1 > bank.limit {
            return Err(Refused);
        }
        Ok(())
    }

    /// Async, without services.
    #[handle]
    async fn close(&self, _: Close) -> Result<Option<Withdrawn>, Refused> {
        Ok(None)
    }

    #[apply]
    fn opened(&mut self, _: &Opened) {
        self.open = true;
    }

    #[apply]
    fn withdrawn(&mut self, _: &Withdrawn) {}
}

#[command]
#[derive(Debug, Clone)]
pub struct Ping(#[aggregate_id] pub u64);

#[derive(Debug, Default)]
pub struct Pinger;

/// Async handlers without any services declared.
#[aggregate(id = u64, error = std::convert::Infallible)]
impl Pinger {
    #[handle]
    async fn ping(&self, _: Ping) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
}

fn main() {
    assert!(!<Account as Handle<Open>>::ASYNC);
    assert!(<Account as Handle<Withdraw>>::ASYNC);
    assert!(!<Account as Handle<Check>>::ASYNC);
    assert!(<Account as Handle<Close>>::ASYNC);
    assert!(<Pinger as Handle<Ping>>::ASYNC);
    let _: <Pinger as Aggregate>::Services = ();
    let _: <Account as Aggregate>::Services = bank::Services { limit: 1 };

    let mut events = Vec::new();
    let services = bank::Services { limit: 10 };
    let account = Account { open: true };
    let decided = account.handle_async(Withdraw { id: "a".into(), amount: 5 }, &services, &mut events);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(decided).unwrap();
    assert!(matches!(events.as_slice(), [AccountEvent::Withdrawn(Withdrawn { amount: 5 })]));
    // A sync handler decides through `handle_async` as well.
    let decided = account.handle_async(Check("a".into(), 50), &services, &mut events);
    assert!(runtime.block_on(decided).is_err());
}
