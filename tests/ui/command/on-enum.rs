use eda::prelude::*;

#[command]
#[derive(Debug, Clone)]
pub enum AccountCommand {
    Open { account: String },
}

#[event]
#[derive(Debug)]
pub struct Opened;

#[derive(Debug, Default)]
pub struct Account;

// Only the misplaced attribute is reported: the enum still works as a command
// here, so its uses add no errors of their own.
#[aggregate(error = std::convert::Infallible)]
impl Account {
    #[handle]
    fn handle(&self, _: AccountCommand) -> Result<Opened, std::convert::Infallible> {
        Ok(Opened)
    }
    #[apply]
    fn opened(&mut self, _: &Opened) {}
}

async fn run(app: App) {
    let _ = app
        .execute(AccountCommand::Open {
            account: "a".into(),
        })
        .await;
}

fn main() {
    let _ = run;
}
