//! `Committed<A>` is `Debug`, and `Clone` and `PartialEq` when the aggregate's
//! events are, whatever the aggregate's state is: it never holds the state.

use eda::prelude::*;

#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct Opened;

#[command]
#[derive(Debug, Clone)]
pub struct Open {
    #[aggregate_id]
    pub id: String,
}

/// Neither `Debug`, `Clone` nor `PartialEq`.
#[derive(Default)]
pub struct Account {
    _handle: Option<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountError")
    }
}

pub struct AccountError;

#[aggregate(error = AccountError)]
impl Account {
    #[handle]
    fn open(&self, _: Open) -> Result<Opened, AccountError> {
        Ok(Opened)
    }

    #[apply]
    fn opened(&mut self, _: &Opened) {}
}

/// Debug for an aggregate whose state is not `Debug`.
fn show(done: &Committed<Account>) -> String {
    format!("{done:?}")
}

/// Clone and compare for any aggregate whose events allow it, whatever its state.
pub fn copy<A: Aggregate>(done: &Committed<A>) -> Committed<A>
where
    A::Event: Clone + PartialEq,
{
    let copy = done.clone();
    assert!(copy == *done);
    copy
}

fn main() {
    let _ = show;
}
