//! Attribute macros of the [eda](https://docs.rs/eda) framework. Use them through
//! `eda` (`use eda::prelude::*;`); the generated code refers to `::eda` only.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod types;
mod valid;

use proc_macro::TokenStream;

/// Declares an event: derives serde, implements `eda::Event` and registers the type.
///
/// `#[event]`, `#[event(name = "MoneyWithdrawn", version = 2, upcast_from = MoneyWithdrawnV1)]`,
/// `#[event(crate = path::to::eda)]`. See the `eda` crate documentation.
#[proc_macro_attribute]
pub fn event(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::event::expand(args.into(), input.into()).into()
}

/// Declares a command: one field marked `#[aggregate_id]` routes it to its aggregate.
///
/// See the `eda` crate documentation.
#[proc_macro_attribute]
pub fn command(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::command::expand(args.into(), input.into()).into()
}

/// Turns an impl block of `#[handle]` and `#[apply]` methods into an aggregate.
///
/// `#[aggregate(error = AccountError)]`, `#[aggregate(id = Uuid, error = E, name = "bank.Account")]`,
/// `#[aggregate(error = E, services = BankServices)]` for handlers that take
/// `&BankServices` or are `async`.
/// See the `eda` crate documentation.
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::aggregate::expand(args.into(), input.into()).into()
}
