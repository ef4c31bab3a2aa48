//! Host-side bindings of the `weir:processor` WIT package.
//!
//! The processor world owns the shared types and the `host` interface; the
//! other worlds reuse them so a message is one Rust type everywhere.

/// Bindings of the `processor` world (and of the shared `types` and `host`).
pub mod processor {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "weir:processor/processor",
        // A write past the stage's state quota traps the call.
        imports: { "weir:processor/host.state-set": trappable },
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

/// Bindings of the `processor-packed` world.
pub mod processor_packed {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "weir:processor/processor-packed",
        with: {
            "weir:processor/types@0.1.0": super::processor::weir::processor::types,
            "weir:processor/host@0.1.0": super::processor::weir::processor::host,
        },
    });
}

/// Bindings of the `aggregator-packed` world.
pub mod aggregator_packed {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "weir:processor/aggregator-packed",
        with: {
            "weir:processor/types@0.1.0": super::processor::weir::processor::types,
            "weir:processor/host@0.1.0": super::processor::weir::processor::host,
        },
    });
}

pub use processor::weir::processor::host::{Host, Level};
/// The record worlds' outcome; the host's own [`crate::message::Outcome`]
/// adds `Keep`.
pub use processor::weir::processor::types::Outcome as RecordOutcome;
pub use processor::weir::processor::types::{Header, Message, Origin, Output};
