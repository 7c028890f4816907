use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened;

#[derive(Debug, Default)]
pub struct Directory {
    count: usize,
}

#[projection]
impl Directory {
    #[on]
    fn opened(&self, _: &Opened) {}
}

fn main() {}
