//! Emits every message unchanged. The baseline for benchmarks and a template
//! for new processors.
//!
//! It decides in place: every message is kept where it lies, so on the
//! packed world nothing is decoded or copied (the cost floor of a stage).

use weir_sdk::{Config, Decision, Message, MessageRef, Outcome, Processor};

struct Passthrough;

impl Processor for Passthrough {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn decide_in_place(&mut self, _message: MessageRef<'_>) -> Option<Decision> {
        Some(Decision::Keep)
    }

    fn process(&mut self, message: Message) -> Outcome {
        Outcome::one(message)
    }
}

weir_sdk::export_processor!(Passthrough);
