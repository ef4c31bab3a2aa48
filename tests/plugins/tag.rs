// Shared body of the tag-v1 / tag-v2 test plugins: every message passes
// through with header `v` = VERSION. Two crates, so two distinct components
// (content hashes) to hot-swap between.

use weir_sdk::{Config, Message, Outcome, Processor};

struct Tag;

impl Processor for Tag {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Tag)
    }

    fn process(&mut self, message: Message) -> Outcome {
        Outcome::one(message.into_output().with_header("v", VERSION))
    }
}

weir_sdk::export_processor!(Tag);
