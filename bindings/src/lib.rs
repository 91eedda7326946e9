//! `kith-ffi`: Kith for Kotlin, Swift and Python, through uniffi.
//!
//! A flat, thin layer over the `kith` crate with no logic of its own: each
//! exported call converts its arguments, runs the same `kith` call on a
//! runtime this layer owns, and converts the answer back. Ids cross the
//! boundary as strings (inbox ids as EIP-55 addresses, conversation,
//! installation and message ids as lowercase hex), so that every language
//! can print, store and compare them.
//!
//! One module per area, as in matrix-rust-sdk's `matrix-sdk-ffi`:
//!
//! - [`runtime`]: the tokio runtime every call runs on, so that Kotlin
//!   coroutines, Swift `async` and Python `asyncio` can await it from
//!   their own executors;
//! - [`error`]: [`KithError`], one flat enum that mirrors `kith::Error`;
//! - [`wallet`]: [`Wallet`], a private key or a foreign [`WalletSigner`];
//! - [`node`]: [`EmbeddedNode`], a node inside the process;
//! - [`client`]: [`KithClient`] and its [`ClientOptions`];
//! - [`conversation`]: [`KithConversation`], a group or a DM;
//! - [`events`]: [`KithEvent`], delivered to a foreign [`EventListener`];
//! - [`content`]: typed message [`Content`] (replies, reactions,
//!   attachments, ...) and remote attachment encryption;
//! - [`query`]: [`MessageQuery`] and [`ConversationQuery`], for pages of
//!   messages and the conversation list;
//! - [`gating`]: token-gated groups ([`Gating`]) and the foreign
//!   [`GatingVerifier`] that answers their token rules;
//! - [`types`]: the records and enums the calls take and return.
//!
//! Bindings are generated from the built library with the in-tree
//! generator, which is always the uniffi version this crate was built with:
//!
//! ```text
//! cargo build -p kith-ffi
//! cargo run -p kith-ffi --bin uniffi-bindgen -- generate \
//!     --library target/debug/libkith_ffi.so --language python --out-dir out
//! ```

pub mod client;
pub mod content;
pub mod conversation;
pub mod error;
pub mod events;
pub mod gating;
pub mod node;
pub mod query;
pub mod runtime;
pub mod types;
pub mod wallet;

pub use client::{ClientOptions, ClientTuning, KithClient, create_client};
pub use content::{
    Attachment, Content, EncryptedAttachment, FieldChange, GroupUpdated, Reaction, ReactionAction,
    RemoteAttachment, Reply, ReplyContent, message_content, remote_attachment_decrypt,
    remote_attachment_encrypt,
};
pub use conversation::KithConversation;
pub use error::{KithError, SignerError, VerifierError};
pub use events::{EventListener, EventStream, KithEvent};
pub use gating::{Admission, Gating, GatingVerdict, GatingVerifier, Require, TokenRule};
pub use node::EmbeddedNode;
pub use query::{
    ConversationItem, ConversationQuery, Direction, MessageCursor, MessagePage, MessageQuery,
};
pub use types::*;
pub use wallet::{Wallet, WalletSigner};

uniffi::setup_scaffolding!("kith");
