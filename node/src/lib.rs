//! spocnet node: the library behind the `spoc-node` service and the `spoc` CLI.
//!
//! The IO-free core (`identity`, `charter`, `log`, `docs`, `replica`, `reconcile`) decides
//! what is valid, what the documents say and which logs two nodes hold differently; `store`
//! makes it durable. See ARCHITECTURE.md for the bird's-eye view and the invariants.

pub mod api;
pub mod charter;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod docs;
pub mod identity;
pub mod log;
pub mod network;
pub mod operator;
pub mod reconcile;
pub mod replica;
pub mod service;
pub mod store;
pub mod testnet;
