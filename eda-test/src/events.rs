//! Streams, encoded events and metadata for calling a store directly, and what
//! a test reads back from one.

use eda::{Metadata, NewEvent, StreamId};

/// The stream of an aggregate.
pub fn stream<'a>(aggregate_type: &'a str, aggregate_id: &'a str) -> StreamId<'a> {
    StreamId {
        aggregate_type,
        aggregate_id,
    }
}

/// An encoded event with a fresh id.
pub fn new_event(name: &'static str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: eda::new_event_id(),
        name: name.into(),
        version: 1,
        payload: payload.into(),
    }
}

/// Empty metadata.
pub fn meta() -> Metadata {
    Metadata::default()
}

/// The `amount` of every event in `events` that has one, sorted: with the amounts
/// a test sent, it shows every command stored exactly once.
pub fn stored_amounts(events: &[eda::RecordedEvent]) -> Vec<u64> {
    let mut amounts: Vec<u64> = events
        .iter()
        .filter_map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.payload).ok()?["amount"].as_u64()
        })
        .collect();
    amounts.sort_unstable();
    amounts
}
