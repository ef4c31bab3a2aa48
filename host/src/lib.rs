//! weir: a stream processor whose user logic runs as sandboxed WebAssembly
//! components.
//!
//! - [`plugin`]: the wasmtime runtime that loads, sandboxes and calls plugins.
//! - [`pipeline`]: sources → stages → sinks, with batching, dispatch, routing,
//!   error policies and at-least-once acknowledgement.
//! - [`connectors`]: sources and sinks, one module per system.
//! - [`config`]: the pipeline file.
//! - [`cli`]: the `weir` command.
//! - [`admin`] and [`telemetry`]: the admin listener and its `/metrics`.

pub mod admin;
pub mod config;
pub mod message;
pub mod plugin;
pub mod store;

pub use message::{Header, Message, Origin, Outcome, Output};
pub mod cli;
pub mod connectors;
pub mod flow;
pub mod pipeline;
pub mod telemetry;
