//! pgcutover: move a live PostgreSQL database to another PostgreSQL with no lost writes.
//!
//! Layers, lowest first (a module only uses the ones before it): `secret`, `config`, `pg`
//! (connections, catalog, slot, clusters), `status`, `statefile`, `load` (the native full
//! load), `cdc` (the change stream), `validate` (proof that the copy is right), then the
//! daemon's edges: `http`, `daemon`, `cleanup`, `demo`, `cli`.

pub mod cdc;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod http;
pub mod load;
pub mod pg;
pub mod secret;
pub mod statefile;
pub mod status;
pub mod validate;
