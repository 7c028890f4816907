//! `#[command]`: the `Command` impl, with the fields the fingerprint serializes.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::ast::{AggregateId, Command};

/// The command and its `Command` impl, routed by the `id` field.
pub(crate) fn expand(command: &Command, id: &AggregateId) -> TokenStream {
    let Command { args, item, .. } = command;
    let private = super::private(args.krate.as_ref());
    let ident = &item.ident;
    let name = ident.unraw().to_string();
    let (impl_generics, ty_generics, where_clause) = item.generics.split_for_impl();
    let (member, ty) = (&id.member, &id.ty);
    let fields = fingerprint_fields(item, &private);
    // The fingerprint serializes every field, so each type parameter must be
    // serializable for the command to be one.
    let mut where_clause = where_clause
        .cloned()
        .unwrap_or_else(|| syn::parse_quote!(where));
    for param in item.generics.type_params() {
        let param = &param.ident;
        where_clause
            .predicates
            .push(syn::parse_quote!(#param: #private::serde::Serialize));
    }
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #fields

            #[automatically_derived]
            impl #impl_generics #private::Command for #ident #ty_generics #where_clause {
                type Id = #ty;
                const NAME: &'static str = #name;
                fn aggregate_id(&self) -> &Self::Id {
                    &self.#member
                }
                fn fingerprint(&self) -> ::core::option::Option<#private::Uuid> {
                    #private::fingerprint(&__EdaFields::of(self))
                }
            }
        };
    }
}

/// A struct of references to the command's fields that derives `Serialize`, so
/// the fingerprint needs no `Serialize` impl on the command itself (the user may
/// derive their own, or `Deserialize` for requests): `__EdaFields::of(command)`.
fn fingerprint_fields(item: &syn::DeriveInput, private: &TokenStream) -> TokenStream {
    let syn::Data::Struct(data) = &item.data else {
        return TokenStream::new();
    };
    let ident = &item.ident;
    let serde_crate = super::serde_crate(private);
    let mut generics = item.generics.clone();
    generics.params.insert(0, syn::parse_quote!('__eda));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let (_, command_generics, _) = item.generics.split_for_impl();
    let types = data.fields.iter().map(|f| {
        let ty = &f.ty;
        quote_spanned!(ty.span()=> &'__eda #ty)
    });
    let members: Vec<syn::Member> = data
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| match &f.ident {
            Some(ident) => syn::Member::Named(ident.clone()),
            None => syn::Member::Unnamed(syn::Index::from(i)),
        })
        .collect();
    let (declaration, construction) = match &data.fields {
        syn::Fields::Named(_) => {
            let names = members.iter();
            (
                quote!(struct __EdaFields #impl_generics #where_clause { #(#names: #types,)* }),
                quote!({ #(#members: &command.#members,)* }),
            )
        }
        _ => (
            quote!(struct __EdaFields #impl_generics (#(#types,)*) #where_clause;),
            quote!((#(&command.#members,)*)),
        ),
    };
    quote! {
        #[derive(#private::serde::Serialize)]
        #[serde(crate = #serde_crate)]
        #declaration

        impl #impl_generics __EdaFields #ty_generics #where_clause {
            fn of(command: &'__eda #ident #command_generics) -> Self {
                __EdaFields #construction
            }
        }
    }
}
