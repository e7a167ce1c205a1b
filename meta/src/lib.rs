//! The broker's metadata model (`chunk-allocation.md`, `http-api.md`).
//!
//! Everything here is deterministic: no clock (timestamps arrive as arguments), no randomness,
//! no I/O, ordered maps only. The Raft state machine applies commands by calling these
//! functions, so every member computes byte-identical state from the same log.

pub mod change;
pub mod command;
pub mod error;
pub mod failover;
pub mod migration;
pub mod slots;
pub mod store;
pub mod validate;
pub mod view;

pub use error::MetaError;
pub use store::Store;
