//! The flow layer: what moves a batch from a source to its acknowledgement,
//! below both the connectors and the pipeline.
//!
//! - [`ack`]: ack tokens and the per-partition watermark tracker.
//! - [`batch`]: batches in flight and the size/time batcher.
//! - [`checkpoint`]: stage state and source positions made durable together.
//! - [`budget`]: the in-flight memory budget (backpressure in bytes).
//! - [`control`]: stop and halt, shared by every task.
//! - [`dead_letter`]: the dead-letter channel.
//! - [`source`]: what a running source is given ([`SourceContext`]).
//! - [`backoff`]: exponential backoff for reconnects and retries.
//!
//! Connectors use this layer and the pipeline wires it; this layer uses
//! neither of them.

pub mod ack;
pub mod backoff;
pub mod batch;
pub mod budget;
pub mod checkpoint;
pub mod control;
pub mod dead_letter;
pub mod source;

pub use source::{SourceContext, SourceStats, Stopped};
