//! Helpers shared by the behaviour tests.
#![allow(dead_code, missing_docs)]

pub mod conformance;

use eda::{Metadata, NewEvent, StreamId};

pub fn stream<'a>(aggregate_type: &'a str, aggregate_id: &'a str) -> StreamId<'a> {
    StreamId {
        aggregate_type,
        aggregate_id,
    }
}

/// An encoded event with a fresh id.
pub fn new_event(name: &'static str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: eda::__private::new_event_id(),
        name: name.into(),
        version: 1,
        payload: payload.into(),
    }
}

pub fn meta() -> Metadata {
    Metadata::default()
}
