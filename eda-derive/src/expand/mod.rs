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
