//! A reader declares its own copy of another service's event, with only the
//! fields it needs (`#[event(name = "...")]`), and handles it: the stored event
//! carries more fields, written by a producer this program does not link.

#![allow(missing_docs)]

use std::time::Duration;

use eda::prelude::*;
use eda::{Metadata, NewEvent, RecordedEvent, StreamId};

/// The customers service's `CustomerRegistered`, as the mailing service needs it.
#[event(name = "CustomerRegistered")]
#[derive(Debug)]
pub struct Registered {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Default)]
pub struct Mailing {
    recipients: Vec<(String, String, String)>,
}

#[projection]
impl Mailing {
    #[on]
    fn registered(&mut self, e: &Registered, recorded: &RecordedEvent) {
        let id = recorded.aggregate_id.clone();
        self.recipients.push((id, e.name.clone(), e.email.clone()));
    }
}

#[tokio::test]
async fn a_partial_copy_of_another_services_event_is_handled() {
    let store = MemoryStore::new();
    // What the customers service stored: more fields than the copy has.
    let payload =
        r#"{"name":"Ada","email":"ada@example.com","address":"3 Harbour Road","vip":true}"#;
    let event = NewEvent {
        event_id: eda::new_event_id(),
        name: "CustomerRegistered".into(),
        version: 1,
        payload: payload.into(),
    };
    let stream = StreamId {
        aggregate_type: "Customer",
        aggregate_id: "c-1",
    };
    let appended = store
        .append(stream, 0, vec![event], &Metadata::default())
        .await
        .unwrap();

    let app = App::new(store);
    let mailing = app.project(Mailing::default()).start();
    mailing
        .wait_for(Some(appended.position), Duration::from_secs(30))
        .await
        .unwrap();
    let recipients = mailing.read(|m| m.recipients.clone());
    assert_eq!(
        recipients,
        [(
            "c-1".to_owned(),
            "Ada".to_owned(),
            "ada@example.com".to_owned()
        )]
    );
}
