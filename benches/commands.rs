//! Command throughput of `App::execute` on `MemoryStore`, against a hand-written
//! baseline with the same rules. Run with `cargo bench --bench commands`.
//!
//! (a) 10,000 accounts x (1 open + 9 deposits) = 100,000 commands, sequential;
//!     also through a store without `ImmediateStore`, where `App` awaits every
//!     call as on a durable store (the price of the general path).
//! (b) one account with 10,000 stored events, then 1,000 more commands on it
//!     from a fresh `App` (the first command replays the stream); also without the
//!     cache, where every command replays the whole stream.
//!
//! Each scenario runs `EDA_BENCH_RUNS` times (default 7); the median is printed.

#![allow(missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use eda::prelude::*;
use eda_test::bank::{self, AccountError, DepositMoney, OpenAccount};
use eda_test::{Route, Routed};

const ACCOUNTS: usize = 10_000;
const DEPOSITS: usize = 9;
const LONG_STREAM: usize = 10_000;
const TAIL_COMMANDS: usize = 1_000;

fn main() {
    let runs: usize = std::env::var("EDA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let ids: Vec<String> = (0..ACCOUNTS).map(|i| format!("acc-{i}")).collect();
    let commands = (ACCOUNTS * (1 + DEPOSITS)) as f64;

    // EDA_BENCH_ONLY=a or =b runs one scenario (for profiling).
    let only = std::env::var("EDA_BENCH_ONLY").unwrap_or_default();
    println!("eda command benchmark: {runs} runs per scenario, median reported");
    if only != "b" {
        many_accounts(runs, &rt, &ids, commands);
    }
    if only != "a" {
        long_stream_tail(runs, &rt);
    }
}

fn many_accounts(runs: usize, rt: &tokio::runtime::Runtime, ids: &[String], commands: f64) {
    // Take turns, so that all see the same machine (this kind of machine shares
    // its cores with neighbours).
    let [baseline, eda, awaited] = alternate(
        runs,
        [
            &mut || baseline_many_accounts(ids),
            &mut || rt.block_on(eda_many_accounts(ids, MemoryStore::new())),
            &mut || rt.block_on(eda_many_accounts(ids, Routed::new(Route::Awaited))),
        ],
    );
    report(
        "(a) baseline: HashMap of structs, same rules",
        commands,
        baseline,
        None,
    );
    report(
        "(a) App::execute on MemoryStore",
        commands,
        eda,
        Some(baseline),
    );
    report(
        "(a) the same, every store call awaited",
        commands,
        awaited,
        Some(baseline),
    );
}

fn long_stream_tail(runs: usize, rt: &tokio::runtime::Runtime) {
    let baseline = median(runs, baseline_long_stream);
    report(
        "(b) baseline: one struct, same rules",
        TAIL_COMMANDS as f64,
        baseline,
        None,
    );
    let prepared = rt.block_on(long_stream());
    let tail = median(runs, || {
        rt.block_on(tail_commands(&prepared, 10_000, TAIL_COMMANDS))
    });
    report(
        "(b) 1,000 commands on a 10,000-event stream (cache)",
        TAIL_COMMANDS as f64,
        tail,
        None,
    );
    let few = 50;
    let uncached = median(runs.min(3), || {
        rt.block_on(tail_commands(&prepared, 0, few))
    });
    report(
        "(b) the same without cache (full replay per command)",
        few as f64,
        uncached,
        None,
    );
}

/// Runs each of `tasks` in turns, `runs` times each; the median of each.
fn alternate<const N: usize>(
    runs: usize,
    mut tasks: [&mut dyn FnMut() -> Duration; N],
) -> [Duration; N] {
    let mut times: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::new());
    for _ in 0..runs.max(1) {
        for (task, times) in tasks.iter_mut().zip(&mut times) {
            times.push(task());
        }
    }
    times.map(middle)
}

fn middle(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    middle((0..runs.max(1)).map(|_| f()).collect())
}

fn report(name: &str, commands: f64, time: Duration, baseline: Option<Duration>) {
    let per_second = commands / time.as_secs_f64();
    let ns = time.as_nanos() as f64 / commands;
    print!(
        "{name:<55} {:>12.0} commands/s  {ns:>9.0} ns/command",
        per_second
    );
    if let Some(baseline) = baseline {
        print!(
            "  ({:.1}% of the baseline's speed)",
            100.0 * baseline.as_secs_f64() / time.as_secs_f64()
        );
    }
    println!();
}

async fn eda_many_accounts(ids: &[String], store: impl EventStore) -> Duration {
    let app = App::new(store);
    let start = Instant::now();
    for id in ids {
        app.execute(OpenAccount {
            account: id.clone(),
            owner: "owner".into(),
        })
        .await
        .expect("open");
        for _ in 0..DEPOSITS {
            app.execute(DepositMoney {
                account: id.clone(),
                amount: 10,
            })
            .await
            .expect("deposit");
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(
        app.load::<bank::Account>(&ids[0])
            .await
            .expect("load")
            .balance,
        90
    );
    elapsed
}

/// The same rules without a framework: what the machine can do at best.
fn baseline_many_accounts(ids: &[String]) -> Duration {
    #[derive(Default)]
    struct Plain {
        owner: Option<String>,
        balance: u64,
        version: u64,
    }
    fn open(
        accounts: &mut HashMap<String, Plain>,
        id: &str,
        owner: &str,
    ) -> Result<(), AccountError> {
        let account = accounts.entry(id.to_owned()).or_default();
        if account.owner.is_some() {
            return Err(AccountError::AlreadyOpen);
        }
        account.owner = Some(owner.to_owned());
        account.version += 1;
        Ok(())
    }
    fn deposit(
        accounts: &mut HashMap<String, Plain>,
        id: &str,
        amount: u64,
    ) -> Result<(), AccountError> {
        let account = accounts.get_mut(id).ok_or(AccountError::NotOpen)?;
        if amount == 0 {
            return Err(AccountError::ZeroAmount);
        }
        account.balance += amount;
        account.version += 1;
        Ok(())
    }
    let mut accounts = HashMap::new();
    let start = Instant::now();
    for id in ids {
        let cmd = OpenAccount {
            account: id.clone(),
            owner: "owner".into(),
        };
        open(&mut accounts, &cmd.account, &cmd.owner).expect("open");
        for _ in 0..DEPOSITS {
            let cmd = DepositMoney {
                account: id.clone(),
                amount: 10,
            };
            deposit(&mut accounts, &cmd.account, cmd.amount).expect("deposit");
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(std::hint::black_box(&accounts)[&ids[0]].balance, 90);
    elapsed
}

/// The long account as a plain struct: what (b) costs without storing anything.
fn baseline_long_stream() -> Duration {
    let mut account = bank::Account {
        owner: Some("owner".into()),
        balance: (LONG_STREAM - 1) as u64,
    };
    let start = Instant::now();
    for _ in 0..TAIL_COMMANDS {
        let cmd = DepositMoney {
            account: "long".into(),
            amount: 1,
        };
        if account.owner.is_none() || cmd.amount == 0 {
            panic!("rejected");
        }
        account.balance += cmd.amount;
    }
    let elapsed = start.elapsed();
    assert!(std::hint::black_box(&account).balance >= LONG_STREAM as u64);
    elapsed
}

async fn long_stream() -> MemoryStore {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    app.execute(OpenAccount {
        account: "long".into(),
        owner: "owner".into(),
    })
    .await
    .expect("open");
    for _ in 1..LONG_STREAM {
        app.execute(DepositMoney {
            account: "long".into(),
            amount: 1,
        })
        .await
        .expect("deposit");
    }
    store
}

/// `commands` deposits on the long stream from a fresh `App` with `cache` capacity;
/// the store is shared between runs, so the stream keeps growing a little.
async fn tail_commands(store: &MemoryStore, cache: usize, commands: usize) -> Duration {
    let app = App::builder(store.clone())
        .cache_capacity(cache)
        .build()
        .expect("app");
    let start = Instant::now();
    for _ in 0..commands {
        app.execute(DepositMoney {
            account: "long".into(),
            amount: 1,
        })
        .await
        .expect("deposit");
    }
    start.elapsed()
}
