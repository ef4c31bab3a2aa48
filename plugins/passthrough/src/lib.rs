//! Emits every message unchanged. The baseline for benchmarks and a template
//! for new processors.

use weir_sdk::{Config, Message, Outcome, Processor};

struct Passthrough;

impl Processor for Passthrough {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn process(&mut self, message: Message) -> Outcome {
        Outcome::one(message)
    }
}

weir_sdk::export_processor!(Passthrough);
