//! `kith-examples` will hold runnable examples of Kith.
//!
//! They will be the quickstart (an embedded node), an echo bot and a
//! command-line chat.
