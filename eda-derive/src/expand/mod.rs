//! The expansion of each macro once its input passed the checks; the helpers they share.

pub(crate) mod aggregate;
pub(crate) mod command;
pub(crate) mod event;
pub(crate) mod projection;

use proc_macro2::TokenStream;
use quote::quote;

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
