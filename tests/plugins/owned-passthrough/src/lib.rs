//! Test crate: `plugins/passthrough` without its in-place fast path. Every
//! message is decoded into an owned `Message` and handed back, as a typical
//! map plugin does: the benchmarks compare the two paths.

use weir_sdk::{Config, Message, Outcome, Processor};

struct OwnedPassthrough;

impl Processor for OwnedPassthrough {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(OwnedPassthrough)
    }

    fn process(&mut self, message: Message) -> Outcome {
        Outcome::one(message)
    }
}

weir_sdk::export_processor!(OwnedPassthrough);
