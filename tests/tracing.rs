//! `execute`, `append` and `load` run in spans that name the aggregate type, id and
//! version, so a trace shows which aggregate a slow or failing command touched.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use eda::prelude::*;
use eda_test::bank::{Account, DepositMoney, OpenAccount};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event as TraceEvent, Metadata as TraceMetadata, Subscriber};

/// A span's name and its fields as text.
type Span = (String, BTreeMap<String, String>);

/// Every span, in creation order.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<Span>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &TraceMetadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((span.metadata().name().to_owned(), fields));
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        let index = span.into_u64() as usize - 1;
        values.record(&mut Fields(&mut spans[index].1));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &TraceEvent<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

use tracing::subscriber::with_default;

#[test]
fn execute_append_and_load_are_spans_with_aggregate_and_version() {
    let recorder = Recorder::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    with_default(recorder.clone(), || {
        rt.block_on(async {
            let app = App::new(MemoryStore::new());
            app.execute(OpenAccount {
                account: "acc-7".into(),
                owner: "ada".into(),
            })
            .await
            .unwrap();
            app.execute(DepositMoney {
                account: "acc-7".into(),
                amount: 5,
            })
            .await
            .unwrap();
            let _: Account = app.load(&"acc-7".to_string()).await.unwrap();
        })
    });
    let spans = recorder.spans.lock().unwrap().clone();
    let named = |name: &str| {
        spans
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect::<Vec<_>>()
    };

    let executes = named("eda.execute");
    assert_eq!(executes.len(), 2, "{spans:?}");
    assert_eq!(
        executes[1].get("command").map(String::as_str),
        Some("DepositMoney")
    );
    assert_eq!(
        executes[1].get("aggregate_type").map(String::as_str),
        Some("Account")
    );
    assert_eq!(
        executes[1].get("aggregate_id").map(String::as_str),
        Some("acc-7")
    );
    assert_eq!(
        executes[1].get("version").map(String::as_str),
        Some("2"),
        "{spans:?}"
    );

    let appends = named("eda.append");
    assert_eq!(appends.len(), 2, "{spans:?}");
    assert_eq!(
        appends[1].get("expected_version").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        appends[1].get("aggregate_id").map(String::as_str),
        Some("acc-7")
    );

    let loads = named("eda.load");
    assert_eq!(loads.len(), 1, "{spans:?}");
    assert_eq!(
        loads[0].get("aggregate_id").map(String::as_str),
        Some("acc-7")
    );
    assert_eq!(loads[0].get("version").map(String::as_str), Some("2"));
}
