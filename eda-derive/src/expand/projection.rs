//! `#[projection]`: the block without its markers, the `Projection` impl that
//! names its events and kind, and the impl of that kind (`MemoryProjection`,
//! `SqliteProjection` or `PostgresProjection`) that routes each stored event to
//! its `#[on]` method and, in a database, empties the read model with its
//! `#[reset]` method.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::ast::Projection;
use crate::valid::{CheckedReadSide, On, ReadModel, Reset};

/// The block and its impls.
pub(crate) fn expand(
    projection: &Projection,
    checked: &CheckedReadSide,
    kind: ReadModel,
) -> TokenStream {
    let private = super::private(projection.args.krate.as_ref());
    let item = projection.item_without_markers();
    let self_ty = &item.self_ty;
    let name = &checked.name;
    let version = projection
        .args
        .version
        .as_ref()
        .map_or(1, |(v, _)| *v as u32);
    let (events, distinct_names) = super::handled_events(&private, projection, &checked.handlers);
    let apply = match kind {
        ReadModel::Memory => memory(&private, self_ty, &checked.handlers),
        ReadModel::Sqlite => sqlite(&private, self_ty, checked),
        ReadModel::Postgres => postgres(&private, self_ty, checked),
    };
    let kind = match kind {
        ReadModel::Memory => quote!(Memory),
        ReadModel::Sqlite => quote!(Sqlite),
        ReadModel::Postgres => quote!(Postgres),
    };
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #(#distinct_names)*

            #[automatically_derived]
            impl #private::Projection for #self_ty {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                const EVENTS: &'static [&'static str] = #events;
                type Kind = #private::read_model::#kind;
            }

            #apply
        };
    }
}

/// `MemoryProjection`: the `#[on]` methods change the value.
fn memory(private: &TokenStream, self_ty: &syn::Type, handlers: &[On]) -> TokenStream {
    let arms = super::dispatch(private, handlers, |on, args| {
        let method = &on.method;
        quote!(self.#method(#args);)
    });
    quote! {
        #[automatically_derived]
        impl #private::MemoryProjection for #self_ty {
            fn apply(
                &mut self,
                __eda_event: &#private::RecordedEvent,
            ) -> ::core::result::Result<(), #private::DecodeErrorKind> {
                #arms
                ::core::result::Result::Ok(())
            }
        }
    }
}

/// `SqliteProjection`: the `#[on]` methods write in the runner's transaction, and
/// their errors become `ApplyError::Handler`; the `#[reset]` method, if there
/// is one, is `reset`.
fn sqlite(private: &TokenStream, self_ty: &syn::Type, checked: &CheckedReadSide) -> TokenStream {
    let reset = checked.reset.as_ref().map(|reset| {
        let tx = &reset.transaction;
        let tx = quote_spanned!(tx.span()=> {
            let __eda_tx: &#tx = __eda_tx;
            __eda_tx
        });
        let call = reset_call(reset, tx, None);
        let result = reset_result();
        quote! {
            const RESETS: bool = true;

            fn reset(
                &mut self,
                __eda_tx: &#private::rusqlite::Transaction<'_>,
            ) -> #result {
                #call
            }
        }
    });
    let arms = super::dispatch(private, &checked.handlers, |on, args| {
        // Typed as the method declares it, so a mismatch is reported there.
        let tx = on.transaction.as_ref().map(|tx| {
            quote_spanned!(tx.span()=> {
                let __eda_tx: &#tx = __eda_tx;
                __eda_tx
            })
        });
        in_transaction(private, on, args, tx, None)
    });
    quote! {
        #[automatically_derived]
        impl #private::SqliteProjection for #self_ty {
            fn apply(
                &mut self,
                __eda_event: &#private::RecordedEvent,
                __eda_tx: &#private::rusqlite::Transaction<'_>,
            ) -> ::core::result::Result<(), #private::ApplyError> {
                #arms
                ::core::result::Result::Ok(())
            }

            #reset
        }
    }
}

/// What `reset` returns: the `#[reset]` method's error, boxed.
fn reset_result() -> TokenStream {
    quote! {
        ::core::result::Result<
            (),
            ::std::boxed::Box<
                dyn ::core::error::Error + ::core::marker::Send + ::core::marker::Sync,
            >,
        >
    }
}

/// The call of the `#[reset]` method with the transaction `tx`, `awaited` if
/// it is async: its error boxed.
fn reset_call(reset: &Reset, tx: TokenStream, awaited: Option<TokenStream>) -> TokenStream {
    let method = &reset.method;
    let output = &reset.output;
    quote_spanned! {output.span()=>
        let __eda_result: #output = self.#method(#tx) #awaited;
        let __eda_result: ::core::result::Result<(), _> = __eda_result;
        ::core::result::Result::map_err(__eda_result, ::core::convert::Into::into)
    }
}

/// `PostgresProjection`: the `#[on]` methods are awaited in turn, writing in
/// the runner's transaction; their errors become `ApplyError::Handler`.
fn postgres(private: &TokenStream, self_ty: &syn::Type, checked: &CheckedReadSide) -> TokenStream {
    let reset = checked.reset.as_ref().map(|reset| {
        let tx = &reset.transaction;
        let tx = {
            let private = super::respan(private.clone(), tx.span());
            quote_spanned!(tx.span()=> {
                if <#tx as #private::PostgresTransaction<'_>>::FLUSHES {
                    __eda_tx.transaction().await;
                }
                let __eda_tx: &#tx = <#tx as #private::PostgresTransaction<'_>>::of(__eda_tx);
                __eda_tx
            })
        };
        let call = reset_call(reset, tx, Some(quote!(.await)));
        let result = reset_result();
        quote! {
            const RESETS: bool = true;

            fn reset<'__eda>(
                &'__eda mut self,
                __eda_tx: &'__eda #private::PostgresBatch<'_>,
            ) -> impl ::core::future::Future<Output = #result>
                   + ::core::marker::Send
                   + '__eda {
                async move {
                    #call
                }
            }
        }
    });
    let arms = super::dispatch(private, &checked.handlers, |on, args| {
        // Typed as the method declares it, through a trait whose message says
        // which transaction an async method takes (a SQLite one is no
        // PostgreSQL transaction).
        let tx = on.transaction.as_ref().map(|tx| {
            let private = super::respan(private.clone(), tx.span());
            quote_spanned!(tx.span()=> {
                if <#tx as #private::PostgresTransaction<'_>>::FLUSHES {
                    __eda_tx.transaction().await;
                }
                let __eda_tx: &#tx = <#tx as #private::PostgresTransaction<'_>>::of(__eda_tx);
                __eda_tx
            })
        });
        in_transaction(private, on, args, tx, Some(quote!(.await)))
    });
    quote! {
        #[automatically_derived]
        impl #private::PostgresProjection for #self_ty {
            fn apply<'__eda>(
                &'__eda mut self,
                __eda_event: &'__eda #private::RecordedEvent,
                __eda_tx: &'__eda #private::PostgresBatch<'_>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), #private::ApplyError>,
            > + ::core::marker::Send + '__eda {
                async move {
                    #arms
                    ::core::result::Result::Ok(())
                }
            }

            #reset
        }
    }
}

/// The call of a database read model's `#[on]` method with `args` and the
/// transaction `tx`, `awaited` if it is async: its error returned as
/// `ApplyError::Handler`.
fn in_transaction(
    private: &TokenStream,
    on: &On,
    args: TokenStream,
    tx: Option<TokenStream>,
    awaited: Option<TokenStream>,
) -> TokenStream {
    let method = &on.method;
    // A checked handler in a transaction declares its return type; the checks
    // of what it returns are spanned there.
    let span = on
        .output
        .as_ref()
        .map_or_else(|| method.span(), Spanned::span);
    let output = on.output.as_ref().map(|output| quote!(: #output));
    let private = super::respan(private.clone(), span);
    quote_spanned! {span=>
        let __eda_result #output = self.#method(#args, #tx) #awaited;
        let __eda_result: ::core::result::Result<(), _> = __eda_result;
        ::core::result::Result::map_err(__eda_result, #private::ApplyError::handler)?;
    }
}
