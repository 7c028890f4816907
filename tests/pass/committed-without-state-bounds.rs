//! `Committed<A>` is `Debug`, and `Clone` and `PartialEq` when the aggregate's
//! events are, whatever the aggregate's state is: it never holds the state.

use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Started;

#[command]
#[derive(Debug, Clone)]
pub struct Start(#[aggregate_id] pub u64);

/// Neither `Debug`, `Clone` nor `PartialEq`.
#[derive(Default)]
pub struct Machine(Option<std::sync::Mutex<()>>);

#[aggregate(id = u64, error = std::convert::Infallible)]
impl Machine {
    #[handle]
    fn start(&self, _: Start) -> Result<Started, std::convert::Infallible> {
        Ok(Started)
    }

    #[apply]
    fn started(&mut self, _: &Started) {
        self.0 = None;
    }
}

/// `Debug` for an aggregate whose state is not.
pub fn show(done: &Committed<Machine>) -> String {
    format!("{done:?}")
}

/// `Clone` and `==` for any aggregate whose events have them, whatever its state.
pub fn copy<A: Aggregate>(done: &Committed<A>) -> Committed<A>
where
    A::Event: Clone + PartialEq,
{
    let copy = done.clone();
    assert!(copy == *done);
    copy
}

fn main() {}
