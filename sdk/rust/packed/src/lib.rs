//! The packed batch ABI of weir's `processor-packed` and `aggregator-packed`
//! worlds, version 1: a whole batch crosses the WebAssembly boundary as one
//! buffer, and the plugin's outcomes come back as one buffer.
//!
//! The layout is specified in `docs/packed-abi.md`; this crate is its
//! reference implementation, shared by the host (which writes batches and
//! reads replies) and the Rust SDK (which reads batches and writes replies).
//!
//! - [`BatchWriter`] / [`Batch`]: the host → plugin buffer.
//! - [`ReplyWriter`] / [`Reply`]: the plugin → host buffer.
//!
//! Readers never trust their input: [`Reply::parse`] and [`Batch::parse`]
//! check every table, span, range and string before handing out views, and
//! report the first fault as a [`Fault`]. After a successful parse, views
//! index the buffer without further checks that could fail.

mod batch;
pub mod layout;
mod reply;
mod words;

pub use batch::{Batch, BatchWriter, HeaderIter, MessageView, OriginRef, TooLarge};
pub use reply::{OutcomeView, OutputIter, OutputView, Reply, ReplyWriter};
pub use words::Fault;
