//! The weir Rust SDK.
//!
//! A processor is a type that implements [`Processor`] and is exported with
//! [`export_processor!`]; build it with `cargo build --target wasm32-wasip2`
//! (or `weir build`), and the resulting `.wasm` is a weir plugin.
//!
//! ```no_run
//! use weir_sdk::{Config, Message, Outcome, Processor};
//!
//! struct Upper;
//!
//! impl Processor for Upper {
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!     fn process(&mut self, message: Message) -> Outcome {
//!         let value = message.value.to_ascii_uppercase();
//!         Outcome::one(message.into_output().with_value(value))
//!     }
//! }
//!
//! weir_sdk::export_processor!(Upper);
//! ```
//!
//! Batch-level work (one call per batch, as the host makes it) is available by
//! overriding [`Processor::process_batch`]. Aggregating stages implement
//! [`Aggregator`] and use [`export_aggregator!`].
//!
//! The macros export the packed worlds (`processor-packed`,
//! `aggregator-packed`): the host hands over a whole batch as one buffer,
//! the SDK decodes it into [`Message`]s, and encodes the outcomes into one
//! reply (`docs/packed-abi.md`). An output identical to its input, as in
//! `Outcome::one(message)`, travels back as `keep`: nothing is copied. With
//! the `record-world` feature the same code exports the record worlds
//! (`processor`, `aggregator`) instead.

mod config;
mod in_place;
pub mod log;
mod packed_glue;
pub mod state;

pub use config::Config;
pub use in_place::{Decision, HeadersRef, MessageRef};
pub use weir_sdk_base::{Header, Message, Origin, Outcome, Output};

/// A per-message processor (the `processor` world).
pub trait Processor: Sized + 'static {
    /// Builds the processor from the stage's `config` table. An error refuses
    /// the plugin with that message.
    fn init(config: Config) -> Result<Self, String>;

    /// Processes one message: drop it, map it, flat-map it, route it or fail it.
    fn process(&mut self, message: Message) -> Outcome;

    /// Processes a whole batch; must return one outcome per input, in order.
    /// Override it to amortise work over the batch.
    fn process_batch(&mut self, batch: Vec<Message>) -> Vec<Outcome> {
        batch.into_iter().map(|message| self.process(message)).collect()
    }

    /// The fast path, called first for every message: decide without
    /// copying it. `Some(Decision::Keep)` forwards it unchanged,
    /// `Some(Decision::Drop)` filters it, `Some(Decision::Fail(..))` fails
    /// it; `None` (the default) hands it, decoded into an owned [`Message`],
    /// to [`Processor::process_batch`] and [`Processor::process`]. Filters
    /// and routers that only read a message decide here and never copy it.
    /// Messages decided here are not passed to `process_batch`.
    fn decide_in_place(&mut self, _message: MessageRef<'_>) -> Option<Decision> {
        None
    }
}

/// A batch stage (the `aggregator` world): sees whole batches and answers
/// all-or-nothing.
pub trait Aggregator: Sized + 'static {
    /// Builds the aggregator from the stage's `config` table.
    fn init(config: Config) -> Result<Self, String>;

    /// Processes one batch. `batch_key` is the batch's group key when the stage
    /// groups its batches. An error applies the stage's error policy to every
    /// message of the batch.
    fn process_batch(&mut self, batch_key: Option<Vec<u8>>, batch: Vec<Message>) -> Result<Vec<Output>, String>;
}

/// Counters defined by the plugin, exported by the host as metrics.
pub mod counter {
    /// Adds `delta` to the counter `name`.
    pub fn add(name: &str, delta: u64) {
        weir_sdk_base::host::counter_add(name, delta)
    }
}

/// The instance every export macro keeps (one per WASM instance, set by
/// `init`) and the `init_instance` that builds it from the stage's config.
#[doc(hidden)]
#[macro_export]
macro_rules! __instance {
    ($type:ty, $trait:ident) => {
        ::std::thread_local! {
            static INSTANCE: ::std::cell::RefCell<::std::option::Option<$type>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        fn init_instance(
            config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
        ) -> ::std::result::Result<(), ::std::string::String> {
            let instance = <$type as $crate::$trait>::init($crate::Config::new(config))?;
            INSTANCE.with(|cell| *cell.borrow_mut() = ::std::option::Option::Some(instance));
            ::std::result::Result::Ok(())
        }
    };
}

/// Exports a [`Processor`] type as the plugin's processor world: by default
/// `processor-packed` (one buffer per batch), or `processor` with the SDK's
/// `record-world` feature.
#[cfg(not(feature = "record-world"))]
#[macro_export]
macro_rules! export_processor {
    ($processor:ty) => {
        const _: () = {
            use $crate::__private::processor_packed_world::Guest;

            $crate::__instance!($processor, Processor);

            struct WeirProcessor;

            impl Guest for WeirProcessor {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    init_instance(config)
                }

                fn process_packed(batch: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                    INSTANCE.with(|cell| $crate::__private::packed::process(cell.borrow_mut().as_mut(), &batch))
                }
            }

            $crate::__private::processor_packed_world::export_processor_packed_world!(
                WeirProcessor with_types_in $crate::__private::processor_packed_world
            );
        };
    };
}

/// Exports an [`Aggregator`] type as the plugin's aggregator world: by
/// default `aggregator-packed`, or `aggregator` with the SDK's `record-world`
/// feature.
#[cfg(not(feature = "record-world"))]
#[macro_export]
macro_rules! export_aggregator {
    ($aggregator:ty) => {
        const _: () = {
            use $crate::__private::aggregator_packed_world::Guest;

            $crate::__instance!($aggregator, Aggregator);

            struct WeirAggregator;

            impl Guest for WeirAggregator {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    init_instance(config)
                }

                fn process_batch_packed(
                    batch_key: ::std::option::Option<::std::vec::Vec<u8>>,
                    batch: ::std::vec::Vec<u8>,
                ) -> ::std::vec::Vec<u8> {
                    INSTANCE.with(|cell| {
                        $crate::__private::packed::aggregate(cell.borrow_mut().as_mut(), batch_key, &batch)
                    })
                }
            }

            $crate::__private::aggregator_packed_world::export_aggregator_packed_world!(
                WeirAggregator with_types_in $crate::__private::aggregator_packed_world
            );
        };
    };
}

/// Exports a [`Processor`] type as the plugin's `processor` world (the
/// `record-world` feature is on).
#[cfg(feature = "record-world")]
#[macro_export]
macro_rules! export_processor {
    ($processor:ty) => {
        const _: () = {
            use $crate::__private::processor_world::Guest;

            $crate::__instance!($processor, Processor);

            struct WeirProcessor;

            impl Guest for WeirProcessor {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    init_instance(config)
                }

                fn process(batch: ::std::vec::Vec<$crate::Message>) -> ::std::vec::Vec<$crate::Outcome> {
                    INSTANCE.with(|cell| match cell.borrow_mut().as_mut() {
                        ::std::option::Option::Some(processor) => $crate::__private::record::process(processor, batch),
                        ::std::option::Option::None => $crate::__private::not_initialised(batch.len()),
                    })
                }
            }

            $crate::__private::processor_world::export_processor_world!(
                WeirProcessor with_types_in $crate::__private::processor_world
            );
        };
    };
}

/// Exports an [`Aggregator`] type as the plugin's `aggregator` world (the
/// `record-world` feature is on).
#[cfg(feature = "record-world")]
#[macro_export]
macro_rules! export_aggregator {
    ($aggregator:ty) => {
        const _: () = {
            use $crate::__private::aggregator_world::Guest;

            $crate::__instance!($aggregator, Aggregator);

            struct WeirAggregator;

            impl Guest for WeirAggregator {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    init_instance(config)
                }

                fn process_batch(
                    batch_key: ::std::option::Option<::std::vec::Vec<u8>>,
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Output>, ::std::string::String> {
                    INSTANCE.with(|cell| match cell.borrow_mut().as_mut() {
                        ::std::option::Option::Some(aggregator) => {
                            $crate::Aggregator::process_batch(aggregator, batch_key, batch)
                        }
                        ::std::option::Option::None => ::std::result::Result::Err("plugin used before init".into()),
                    })
                }
            }

            $crate::__private::aggregator_world::export_aggregator_world!(
                WeirAggregator with_types_in $crate::__private::aggregator_world
            );
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use weir_sdk_aggregator_packed_world as aggregator_packed_world;
    pub use weir_sdk_aggregator_world as aggregator_world;
    pub use weir_sdk_processor_packed_world as processor_packed_world;
    pub use weir_sdk_processor_world as processor_world;

    pub mod packed {
        pub use crate::packed_glue::{aggregate, process};
    }

    pub mod record {
        pub use crate::packed_glue::process_records as process;
    }

    use crate::Outcome;

    /// Keeps the one-outcome-per-input contract even when a hand-written
    /// `process_batch` gets it wrong, so the host can tell which message failed.
    pub fn checked_outcomes(inputs: usize, mut outcomes: Vec<Outcome>) -> Vec<Outcome> {
        if outcomes.len() != inputs {
            let reason = format!("process_batch returned {} outcomes for {} messages", outcomes.len(), inputs);
            outcomes.clear();
            outcomes.resize_with(inputs, || Outcome::fail(reason.clone()));
        }
        outcomes
    }

    pub fn not_initialised(inputs: usize) -> Vec<Outcome> {
        (0..inputs).map(|_| Outcome::fail("plugin used before init")).collect()
    }
}
