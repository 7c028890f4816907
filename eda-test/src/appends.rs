//! The workload and checker of the SQLite crash and fault tests: numbered appends
//! of `PER_APPEND` events, and a check of what a store holds against what was
//! acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use eda::prelude::*;
use eda::{NewEvent, StreamId};

/// The one stream the workload appends to.
pub const STREAM: StreamId<'static> = StreamId {
    aggregate_type: "Crash",
    aggregate_id: "loop",
};
/// Events per append.
pub const PER_APPEND: u64 = 3;

/// The events of append `n`; each payload names its append.
pub fn batch(n: u64) -> Vec<NewEvent> {
    (0..PER_APPEND)
        .map(|part| NewEvent {
            event_id: eda::new_event_id(),
            name: "Tick".into(),
            version: 1,
            payload: format!(r#"{{"append":{n},"part":{part}}}"#),
        })
        .collect()
}

/// Checks the SQLite store at `path`: it opens, versions have no gaps, every
/// acknowledged (`ok`) append is stored once and whole, every append is whole, and
/// nothing but `ok` and the one `unknown` append is stored. Returns the events
/// stored per append; `Err` names the first violation.
pub async fn check(
    path: &Path,
    ok: &BTreeSet<u64>,
    unknown: Option<u64>,
) -> Result<BTreeMap<u64, u64>, String> {
    let store = SqliteStore::open(path)
        .await
        .map_err(|e| format!("the store does not open: {e}"))?;
    let events = store
        .read_stream(STREAM, 0)
        .await
        .map_err(|e| e.to_string())?;
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    if versions != (1..=versions.len() as u64).collect::<Vec<_>>() {
        return Err(format!("versions with gaps: {versions:?}"));
    }
    let mut parts: BTreeMap<u64, u64> = BTreeMap::new();
    for event in &events {
        let payload: serde_json::Value =
            serde_json::from_str(&event.payload).map_err(|e| e.to_string())?;
        *parts
            .entry(payload["append"].as_u64().unwrap_or(u64::MAX))
            .or_default() += 1;
    }
    for n in ok {
        if parts.get(n) != Some(&PER_APPEND) {
            return Err(format!(
                "acknowledged append {n} is missing or partial: {:?}",
                parts.get(n)
            ));
        }
    }
    for (n, count) in &parts {
        if *count != PER_APPEND {
            return Err(format!(
                "append {n} is partly stored ({count} of {PER_APPEND} events)"
            ));
        }
        if !ok.contains(n) && unknown != Some(*n) {
            return Err(format!("append {n} was never sent but is stored"));
        }
    }
    Ok(parts)
}
