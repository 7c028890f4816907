use eda::prelude::*;

#[command]
#[derive(Debug, Clone)]
pub struct Rename<'a> {
    #[aggregate_id]
    pub account: String,
    pub name: &'a str,
}

fn main() {}
