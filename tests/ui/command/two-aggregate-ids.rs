use eda::prelude::*;

#[command]
#[derive(Debug, Clone)]
pub struct Transfer {
    #[aggregate_id]
    pub from: String,
    #[aggregate_id]
    pub to: String,
}

fn main() {}
