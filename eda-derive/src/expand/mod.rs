//! The expansion of each macro once its input passed the checks; the helpers they share.

pub(crate) mod aggregate;
pub(crate) mod command;
pub(crate) mod event;
pub(crate) mod policy;
pub(crate) mod projection;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::ast::ReadSide;
use crate::valid::On;

/// Path of the runtime's `__private` module: `::eda::__private`, or `<crate>::__private`.
pub(crate) fn private(krate: Option<&syn::Path>) -> TokenStream {
    match krate {
        Some(path) => quote!(#path::__private),
        None => quote!(::eda::__private),
    }
}

/// The `#[serde(crate = "...")]` value that reaches serde through `private`.
pub(crate) fn serde_crate(private: &TokenStream) -> String {
    format!("{}::serde", private.to_string().replace(' ', ""))
}

/// One constant per pair of `events` that fails to compile when both are stored
/// under one name, spanned at the later type: routing by stored name would be
/// ambiguous. `verb` (past and imperative) and `owner` say who takes them
/// ("applied by `Account`", "apply only the newest version").
pub(crate) fn distinct_event_names(
    private: &TokenStream,
    events: &[&syn::Type],
    (past, imperative): (&str, &str),
    owner: &str,
) -> Vec<TokenStream> {
    let mut checks = Vec::new();
    for (i, a) in events.iter().enumerate() {
        for b in &events[i + 1..] {
            let message = format!(
                "`{}` and `{}` are both {past} by `{owner}` but have the same event name; {imperative} only the newest version (older versions are upcast to it)",
                crate::types::type_text(a),
                crate::types::type_text(b),
            );
            checks.push(quote::quote_spanned! {syn::spanned::Spanned::span(b)=>
                const _: () = if #private::str_eq(<#a as #private::Event>::NAME, <#b as #private::Event>::NAME) {
                    ::core::panic!("{}", #message)
                };
            });
        }
    }
    checks
}

/// What the `Projection` and `Policy` impls share: the stored names of the events
/// the `#[on]` methods take, and the checks that no two of them share a name.
pub(crate) fn handled_events<A>(
    private: &TokenStream,
    input: &ReadSide<A>,
    handlers: &[On],
) -> (TokenStream, Vec<TokenStream>) {
    let names = handlers.iter().map(|on| {
        let event = &on.event;
        quote_spanned!(event.span()=> <#event as #private::Event>::NAME)
    });
    let handled: Vec<&syn::Type> = handlers.iter().map(|on| &on.event).collect();
    let owner = input
        .ident
        .as_ref()
        .map_or_else(String::new, |ident| ident.unraw().to_string());
    (
        quote!(&[#(#names),*]),
        distinct_event_names(private, &handled, ("handled", "handle"), &owner),
    )
}

/// One `if` per `#[on]` method: when `__eda_event` has the name of the method's
/// event, it is decoded into `__eda_decoded` and `call` (given the method's
/// arguments: the decoded event and, if it takes it, the recorded event) runs.
pub(crate) fn dispatch(
    private: &TokenStream,
    handlers: &[On],
    call: impl Fn(&On, TokenStream) -> TokenStream,
) -> TokenStream {
    let arms = handlers.iter().map(|on| {
        let event = &on.event;
        // Typed where the method names it, so a wrong type is reported there.
        let envelope = on.envelope.as_ref().map(|recorded| {
            quote_spanned!(recorded.span()=> , {
                let __eda_recorded: &#recorded = __eda_event;
                __eda_recorded
            })
        });
        let call = call(on, quote!(&__eda_decoded #envelope));
        quote_spanned! {event.span()=>
            if __eda_event.name == <#event as #private::Event>::NAME {
                let __eda_decoded = <#event as #private::Event>::decode(
                    __eda_event.event_version,
                    &__eda_event.payload,
                )?;
                #call
                return ::core::result::Result::Ok(());
            }
        }
    });
    quote!(#(#arms)*)
}

/// `tokens` with every token at `span`: a path to the runtime that the type checker
/// may report, reported at the user's code instead of the attribute.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}
