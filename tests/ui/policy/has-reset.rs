use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened {
    pub owner: String,
}

#[command]
#[derive(Debug, Clone)]
pub struct Welcome {
    #[aggregate_id]
    pub owner: String,
}

#[derive(Debug, Default)]
pub struct Mailbox;

#[aggregate(error = std::convert::Infallible)]
impl Mailbox {
    #[handle]
    fn welcome(&self, _: Welcome) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct Greeter;

#[policy]
impl Greeter {
    #[reset]
    fn reset(&mut self) {}

    #[on]
    fn opened(&self, e: &Opened) -> Welcome {
        Welcome {
            owner: e.owner.clone(),
        }
    }
}

fn main() {}
