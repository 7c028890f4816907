//! `#[event]`: the serde derives, the `Event` impl and the registration.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::ast::Event;
use crate::types::type_text;

/// The serde derives, the `Event` impl and the registration of a checked event.
pub(crate) fn expand(event: &Event) -> TokenStream {
    let Event { args, item } = event;
    let private = super::private(args.krate.as_ref());
    let ident = &item.ident;
    let name = args
        .name
        .as_ref()
        .map_or_else(|| ident.unraw().to_string(), syn::LitStr::value);
    let version = args.version.as_ref().map_or(1, |(v, _)| *v);
    let serde_crate = super::serde_crate(&private);
    let public = args.public.as_ref().map(|_| {
        let subject = match &args.subject {
            Some(subject) => quote!(::core::option::Option::Some(#subject)),
            None => quote!(::core::option::Option::None),
        };
        quote!(.public(#subject))
    });

    let upcast = args.upcast_from.as_ref().map(|old| {
        let old_text = type_text(old);
        let name_msg = format!("`upcast_from = {old_text}` must be an event with the same name, \"{name}\"");
        let version_msg = format!("`upcast_from = {old_text}` must be an event at version {} (one below {version})", version.saturating_sub(1));
        let span = old.span();
        let decode = quote_spanned! {span=>
            fn decode(__eda_version: u32, __eda_payload: &str) -> ::core::result::Result<Self, #private::DecodeErrorKind> {
                #private::decode_upcast::<Self, #old>(__eda_version, __eda_payload)
            }
        };
        let checks = quote_spanned! {span=>
            const _: () = match #private::upcast_check::<#old>(#name, #version) {
                #private::UpcastCheck::Ok => {}
                #private::UpcastCheck::WrongName => ::core::panic!("{}", #name_msg),
                #private::UpcastCheck::WrongVersion => ::core::panic!("{}", #version_msg),
            };
        };
        (decode, checks)
    });
    let (decode, checks) = upcast.unzip();
    // A reader's copy of another service's event decodes through its own
    // `Event::decode`; it is not registered (the original may be, in the
    // same binary).
    let registration = args.copy.is_none().then(|| {
        quote! {
            #private::inventory::submit! {
                #private::EventRegistration::new(
                    #name,
                    #version,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    #private::decode_boxed::<#ident>,
                )
                #public
            }
        }
    });

    quote! {
        #[derive(#private::serde::Serialize, #private::serde::Deserialize)]
        #[serde(crate = #serde_crate)]
        #item

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #private::Event for #ident {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                #decode
                fn same_value(&self, __eda_other: &Self) -> ::core::option::Option<bool> {
                    #[allow(unused_imports)]
                    use #private::{ViaPartialEq as _, WithoutPartialEq as _};
                    (&#private::Probe(self)).__eda_same_value(__eda_other)
                }
            }

            #checks

            #registration
        };
    }
}
