use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened;

#[derive(Debug, Default)]
pub struct Directory {
    count: usize,
}

#[projection(name = "directory", checkpoint = "table")]
impl Directory {
    #[on]
    fn opened(&mut self, _: &Opened) {
        self.count += 1;
    }
}

fn main() {}
