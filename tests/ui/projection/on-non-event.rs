use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened;

#[derive(Debug, Default)]
pub struct Directory {
    count: usize,
}

#[derive(Debug)]
pub struct NotAnEvent;

#[projection]
impl Directory {
    #[on]
    fn noted(&mut self, _: &NotAnEvent) {
        self.count += 1;
    }
}

fn main() {}
