//! Two types claiming one event name and version are reported when an `App` is
//! built. Its own test binary, since the duplicate poisons every App in it.

#![allow(missing_docs)]

use eda::prelude::*;

mod billing {
    use eda::prelude::*;

    #[event(name = "InvoiceSent")]
    #[derive(Debug)]
    pub struct InvoiceSent {
        pub number: u32,
    }
}

mod mailing {
    use eda::prelude::*;

    #[event(name = "InvoiceSent")]
    #[derive(Debug)]
    pub struct InvoiceMailed {
        pub to: String,
    }
}

#[test]
fn building_an_app_reports_both_types() {
    let _ = (
        billing::InvoiceSent { number: 1 },
        mailing::InvoiceMailed { to: String::new() },
    );
    let err = App::builder(MemoryStore::new()).build().unwrap_err();
    assert_eq!(
        err.to_string(),
        "event `InvoiceSent` version 1 is declared twice: by `registry_duplicates::billing::InvoiceSent` \
         and by `registry_duplicates::mailing::InvoiceMailed`"
    );
    assert_eq!(eda::registry().duplicates().len(), 1);
}

#[test]
#[should_panic(expected = "event `InvoiceSent` version 1 is declared twice")]
fn app_new_panics_with_the_same_message() {
    let _ = App::new(MemoryStore::new());
}
