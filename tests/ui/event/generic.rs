use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Changed<T> {
    pub value: T,
}

fn main() {}
