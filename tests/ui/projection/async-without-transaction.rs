use eda::prelude::*;
use eda::RecordedEvent;

#[event]
#[derive(Debug)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Default)]
pub struct OwnerTable;

#[projection]
impl OwnerTable {
    #[on]
    async fn opened(&mut self, _: &Opened, _: &RecordedEvent) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

fn main() {}
