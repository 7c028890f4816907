use eda::prelude::*;

#[projection]
#[derive(Debug, Default)]
pub struct Directory {
    count: usize,
}

fn main() {}
