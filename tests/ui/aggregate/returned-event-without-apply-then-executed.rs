use eda::prelude::*;

#[event]
#[derive(Debug)]
pub struct Opened;

#[command]
#[derive(Debug, Clone)]
pub struct Open {
    #[aggregate_id]
    pub account: String,
}

#[derive(Debug)]
pub struct AccountError;

#[derive(Debug, Default)]
pub struct Account;

// The handler is reported once; executing its command adds no second error.
#[aggregate(error = AccountError)]
impl Account {
    #[handle]
    fn open(&self, _: Open) -> Result<Opened, AccountError> {
        Ok(Opened)
    }
}

async fn run(app: App) {
    let _ = app.execute(Open { account: "a".into() }).await;
}

fn main() {
    let _ = run;
}
