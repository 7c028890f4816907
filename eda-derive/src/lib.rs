//! Attribute macros of the [eda](https://docs.rs/eda) framework. Use them through
//! `eda` (`use eda::prelude::*;`); the generated code refers to `::eda` only.

// Each macro reads its input into `ast`, checks it in `valid`, emits it in `expand`,
// or, where a check rules that out, in `fallback`; every error found follows.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod types;
mod valid;

use proc_macro::TokenStream;
use quote::quote;

use crate::ctxt::Ctxt;

/// Declares an event: derives serde, implements `eda::Event` and registers the type.
///
/// `#[event]`, `#[event(name = "MoneyWithdrawn", version = 2, upcast_from = MoneyWithdrawnV1)]`,
/// `#[event(crate = path::to::eda)]`. See the `eda` crate documentation.
#[proc_macro_attribute]
pub fn event(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let expanded = match ast::Event::from_syn(&mut cx, args.into(), input.into()) {
        Ok(event) if valid::event(&mut cx, &event) => expand::event::expand(&event),
        Ok(event) => fallback::event(&event),
        Err(input) => input,
    };
    with_errors(cx, expanded)
}

/// Declares a command: one field marked `#[aggregate_id]` routes it to its aggregate.
///
/// See the `eda` crate documentation.
#[proc_macro_attribute]
pub fn command(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let expanded = match ast::Command::from_syn(&mut cx, args.into(), input.into()) {
        Ok(command) => match valid::command(&mut cx, &command) {
            Some(id) => expand::command::expand(&command, id),
            None => fallback::command(&command),
        },
        Err(input) => input,
    };
    with_errors(cx, expanded)
}

/// Turns an impl block of `#[handle]` and `#[apply]` methods into an aggregate.
///
/// `#[aggregate(error = AccountError)]`, `#[aggregate(id = Uuid, error = E, name = "bank.Account")]`,
/// `#[aggregate(error = E, services = BankServices)]` for handlers that take
/// `&BankServices` or are `async`.
/// See the `eda` crate documentation.
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let expanded = match ast::Aggregate::from_syn(&mut cx, args.into(), input.into()) {
        Ok(agg) => match valid::aggregate(&mut cx, &agg) {
            Some(checked) => expand::aggregate::expand(&agg, &checked),
            None => fallback::aggregate(&agg),
        },
        Err(input) => input,
    };
    with_errors(cx, expanded)
}

/// A read model fed from the global log, on an impl block of `#[on]` methods, one
/// per event. The methods' signatures choose where the read model lives:
///
/// - in memory, the projection value itself:
///   `fn name(&mut self, event: &E [, recorded: &RecordedEvent])`, returning nothing;
/// - in SQLite, written in the runner's transaction, which comes last:
///   `fn name(&mut self, event: &E [, recorded: &RecordedEvent], tx: &eda::rusqlite::Transaction<'_>) -> Result<(), Err>`,
///   where `Err` converts into `Box<dyn Error + Send + Sync>` (`rusqlite::Result<()>`
///   does); an error is the runner's `ApplyError::Handler`;
/// - in PostgreSQL, the same with an `async fn` and the runner's
///   `tx: &eda::tokio_postgres::Transaction<'_>` last, returning `Result<(), Err>`
///   (`Result<(), tokio_postgres::Error>`, say). Both drivers call their
///   transaction `Transaction`, so `async` tells the kinds apart: async with a
///   transaction is PostgreSQL, without one async is an error.
///
/// The methods of one projection are all of one kind. A read model in a
/// database may have one `#[reset]` method that empties its tables in the
/// runner's transaction, `fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), Err>`
/// (`async` for PostgreSQL): with it, a read model built by an older `version`
/// is rebuilt from the log, and `ProjectionHandle::rebuild` rebuilds one on
/// demand. Arguments: `name = "..."` (the type's name by default), `version = N`
/// (1 by default; stored with the checkpoint), `crate = path`. Start one with
/// `App::project(value).start()`.
#[proc_macro_attribute]
pub fn projection(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let expanded = match ast::Projection::from_syn(&mut cx, args.into(), input.into()) {
        Ok(projection) => match valid::projection(&mut cx, &projection) {
            Some((checked, kind)) => expand::projection::expand(&projection, &checked, kind),
            None => fallback::read_side(&projection),
        },
        Err(input) => input,
    };
    with_errors(cx, expanded)
}

/// Events in, commands out: on an impl block of `#[on]` methods, one per event,
/// `fn name(&self, event: &E [, recorded: &RecordedEvent]) -> R`, where `R` is a
/// command, `Option<C>`, `Vec<C>` or a tuple of these (`eda::IntoReactions`) and
/// each command is handled by an `#[aggregate]`. The methods are not async and
/// decide from the event alone. Arguments: `name = "..."` (the type's name by
/// default; part of every idempotency key the runner derives), `crate = path`.
#[proc_macro_attribute]
pub fn policy(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let expanded = match ast::Policy::from_syn(&mut cx, args.into(), input.into()) {
        Ok(policy) => match valid::policy(&mut cx, &policy) {
            Some(checked) => expand::policy::expand(&policy, &checked),
            None => fallback::read_side(&policy),
        },
        Err(input) => input,
    };
    with_errors(cx, expanded)
}

/// The expansion, followed by the errors `cx` collected.
fn with_errors(cx: Ctxt, expanded: proc_macro2::TokenStream) -> TokenStream {
    let errors = cx.check().err().map(syn::Error::into_compile_error);
    quote!(#expanded #errors).into()
}
