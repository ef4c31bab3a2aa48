//! Host-side bindings of the `weir:processor` WIT package.
//!
//! The processor world owns the shared types and the `host` interface; the
//! aggregator world reuses them so a message is one Rust type everywhere.

/// Bindings of the `processor` world (and of the shared `types` and `host`).
pub mod processor {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "weir:processor/processor",
    });
}

/// Bindings of the `aggregator` world.
pub mod aggregator {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "weir:processor/aggregator",
        with: {
            "weir:processor/types@0.1.0": super::processor::weir::processor::types,
            "weir:processor/host@0.1.0": super::processor::weir::processor::host,
        },
    });
}

pub use processor::weir::processor::host::{Host, Level};
pub use processor::weir::processor::types::{Header, Message, Origin, Outcome, Output};
