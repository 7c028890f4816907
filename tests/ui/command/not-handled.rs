use eda::prelude::*;

#[command]
#[derive(Debug, Clone)]
pub struct CloseAccount {
    #[aggregate_id]
    pub account: String,
}

async fn run(app: App) {
    let _ = app.execute(CloseAccount { account: "a".into() }).await;
}

fn main() {
    let _ = run;
}
