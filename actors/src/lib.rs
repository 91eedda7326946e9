//! `kith` will be the crate applications depend on.
//!
//! It will expose `Client`, `Conversation` and the event stream, and run the
//! actix actors behind them (Supervisor, GroupActor, KeyPackageManager,
//! InstallationDiscovery, NetworkPoller) as thin drivers of `kith-engine`.
