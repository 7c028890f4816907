//! `#[projection]`: the block without its markers and the `Projection` impl that
//! routes each stored event to its `#[on]` method.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::ast::Projection;
use crate::valid::CheckedProjection;

/// The block and its `Projection` impl.
pub(crate) fn expand(projection: &Projection, checked: &CheckedProjection) -> TokenStream {
    let private = super::private(projection.args.krate.as_ref());
    let item = projection.item_without_markers();
    let self_ty = &item.self_ty;
    let name = &checked.name;
    let version = projection
        .args
        .version
        .as_ref()
        .map_or(1, |(v, _)| *v as u32);
    let names = checked.handlers.iter().map(|on| {
        let event = &on.event;
        quote_spanned!(event.span()=> <#event as #private::Event>::NAME)
    });
    let arms = checked.handlers.iter().map(|on| {
        let (event, method) = (&on.event, &on.method);
        // Typed where the method names it, so a wrong type is reported there.
        let envelope = on.envelope.as_ref().map(|recorded| {
            quote_spanned!(recorded.span()=> , {
                let __eda_recorded: &#recorded = __eda_event;
                __eda_recorded
            })
        });
        quote_spanned! {event.span()=>
            if __eda_event.name == <#event as #private::Event>::NAME {
                let __eda_decoded = <#event as #private::Event>::decode(
                    __eda_event.event_version,
                    &__eda_event.payload,
                )?;
                self.#method(&__eda_decoded #envelope);
                return ::core::result::Result::Ok(());
            }
        }
    });
    let handled: Vec<&syn::Type> = checked.handlers.iter().map(|on| &on.event).collect();
    let owner = projection
        .ident
        .as_ref()
        .map_or_else(String::new, |ident| ident.unraw().to_string());
    let distinct_names =
        super::distinct_event_names(&private, &handled, ("handled", "handle"), &owner);
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #(#distinct_names)*

            #[automatically_derived]
            impl #private::Projection for #self_ty {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                const EVENTS: &'static [&'static str] = &[#(#names),*];
                type Kind = #private::read_model::Memory;
            }

            #[automatically_derived]
            impl #private::MemoryProjection for #self_ty {

                fn apply(
                    &mut self,
                    __eda_event: &#private::RecordedEvent,
                ) -> ::core::result::Result<(), #private::DecodeErrorKind> {
                    #(#arms)*
                    ::core::result::Result::Ok(())
                }
            }
        };
    }
}
