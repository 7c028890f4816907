//! What is emitted after an error instead of the real expansion, so that one
//! mistake does not bring a cascade of follow-on errors where the item is used.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::ext::IdentExt;

use crate::ast::{Aggregate, Command, Event, ReadSide};

/// An `#[event]` the checks rejected: the item alone, as impls of a shape they
/// reject would fail too.
pub(crate) fn event(event: &Event) -> TokenStream {
    event.item.to_token_stream()
}

/// A `#[command]` that cannot implement `Command` (no id, or not a struct): the
/// command with a stub impl, so that its uses add no follow-on errors; the command
/// alone if it borrows, as any impl would fail too.
pub(crate) fn command(command: &Command) -> TokenStream {
    let Command { args, item, .. } = command;
    if item.generics.lifetimes().next().is_some() {
        return quote!(#item);
    }
    let private = crate::expand::private(args.krate.as_ref());
    let ident = &item.ident;
    let name = ident.unraw().to_string();
    let (impl_generics, ty_generics, where_clause) = item.generics.split_for_impl();
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #private::Command for #ident #ty_generics #where_clause {
                type Id = ::std::string::String;
                const NAME: &'static str = #name;
                fn aggregate_id(&self) -> &Self::Id {
                    ::core::unreachable!()
                }
            }
        };
    }
}

/// An `#[aggregate]` block without a name to expand under: the block without its
/// `#[handle]` and `#[apply]` markers, which rustc would report again as unknown
/// attributes.
pub(crate) fn aggregate(agg: &Aggregate) -> TokenStream {
    agg.item_without_markers().to_token_stream()
}

/// A `#[projection]` or `#[policy]` block without a name to expand under: the
/// block without its `#[on]` markers, which rustc would report again as unknown
/// attributes.
pub(crate) fn read_side<A>(input: &ReadSide<A>) -> TokenStream {
    input.item_without_markers().to_token_stream()
}

/// The body of a handler the checks rejected: its impls are still emitted, so uses
/// of its command add no follow-on errors, and next to a compile error the body is
/// never compiled into a program that runs.
pub(crate) fn handler_body() -> TokenStream {
    quote!(::core::unreachable!())
}
