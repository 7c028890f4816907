use eda::prelude::*;

#[event(name = "Moved", version = 1)]
#[derive(Debug)]
pub struct MovedV1 {
    pub to: String,
}

#[event(name = "Moved", version = 2, upcast_from = MovedV1)]
#[derive(Debug)]
pub struct Moved {
    pub to: String,
    pub since: String,
}

impl From<MovedV1> for Moved {
    fn from(old: MovedV1) -> Self {
        Moved { to: old.to, since: String::new() }
    }
}

#[derive(Debug, Default)]
pub struct Addresses {
    last: String,
}

#[projection]
impl Addresses {
    #[on]
    fn moved_v1(&mut self, e: &MovedV1) {
        self.last = e.to.clone();
    }

    #[on]
    fn moved(&mut self, e: &Moved) {
        self.last = e.to.clone();
    }
}

fn main() {}
