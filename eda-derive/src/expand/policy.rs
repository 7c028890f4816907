//! `#[policy]`: the block without its markers and the `Policy` impl that routes
//! each stored event to its `#[on]` method and collects the commands it returns.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::ast::Policy;
use crate::valid::CheckedReadSide;

/// The block and its `Policy` impl.
pub(crate) fn expand(policy: &Policy, checked: &CheckedReadSide) -> TokenStream {
    let private = super::private(policy.args.krate.as_ref());
    let item = policy.item_without_markers();
    let self_ty = &item.self_ty;
    let name = &checked.name;
    let (events, distinct_names) = super::handled_events(&private, policy, &checked.handlers);
    let arms = super::dispatch(&private, &checked.handlers, |on, args| {
        let method = &on.method;
        match &on.output {
            // `impl IntoReactions` names no type to check.
            Some(syn::Type::ImplTrait(_)) | None => quote! {
                #private::IntoReactions::into_reactions(self.#method(#args), __eda_reactions);
            },
            // Spanned at the return type, so that a type that is not commands is
            // reported there, with `IntoReactions`'s explanation.
            Some(output) => quote_spanned! {output.span()=>
                let __eda_result: #output = self.#method(#args);
                <#output as #private::IntoReactions>::into_reactions(__eda_result, __eda_reactions);
            },
        }
    });
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #(#distinct_names)*

            #[automatically_derived]
            impl #private::Policy for #self_ty {
                const NAME: &'static str = #name;
                const EVENTS: &'static [&'static str] = #events;

                fn react(
                    &self,
                    __eda_event: &#private::RecordedEvent,
                    __eda_reactions: &mut #private::Reactions,
                ) -> ::core::result::Result<(), #private::DecodeErrorKind> {
                    #arms
                    ::core::result::Result::Ok(())
                }
            }
        };
    }
}
