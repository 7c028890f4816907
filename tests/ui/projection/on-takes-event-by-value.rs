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
    fn opened(&mut self, _: Opened) {
        self.count += 1;
    }
}

fn main() {}
