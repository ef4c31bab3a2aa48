//! Types and host bindings shared by every weir plugin world.
//!
//! Generated from the imports-only `imports` world so that the processor and
//! aggregator worlds (each in its own crate) reuse one set of Rust types, and
//! a plugin links the type section of its own world only.

#![doc(hidden)]

mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "weir:processor/imports",
        generate_all,
    });
}

mod helpers;

pub use bindings::weir::processor::types::{Header, Message, Origin, Outcome, Output};
pub use bindings::weir::processor::{host, types};
