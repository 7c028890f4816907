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
    #[reset]
    fn reset(&mut self) {
        self.count = 0;
    }

    #[on]
    fn opened(&mut self, _: &Opened) {
        self.count += 1;
    }
}

fn main() {}
