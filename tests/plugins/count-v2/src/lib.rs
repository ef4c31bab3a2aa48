//! Test plugin: a second version of `count-by-key` (same state layout, one
//! output per key and batch, plus `"v":2`), to show that stage state carries
//! over a hot swap.

use weir_sdk::{Aggregator, Config, Message, Output, state};

struct CountV2;

impl Aggregator for CountV2 {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(CountV2)
    }

    fn process_batch(&mut self, _key: Option<Vec<u8>>, batch: Vec<Message>) -> Result<Vec<Output>, String> {
        let mut order: Vec<Vec<u8>> = Vec::new();
        let mut counts: Vec<u64> = Vec::new();
        for message in &batch {
            let key = message.key.clone().unwrap_or_else(|| b"<none>".to_vec());
            match order.iter().position(|k| *k == key) {
                Some(i) => counts[i] += 1,
                None => {
                    order.push(key);
                    counts.push(1);
                }
            }
        }
        let mut outputs = Vec::new();
        for (key, n) in order.into_iter().zip(counts) {
            let state_key = [b"count:".as_slice(), &key].concat();
            let total = state::get_u64(&state_key) + n;
            state::set_u64(&state_key, total);
            let text = String::from_utf8_lossy(&key).to_string();
            let value = format!(r#"{{"key":"{text}","count":{total},"v":2}}"#);
            outputs.push(Output::new(value).with_key(key));
        }
        Ok(outputs)
    }
}

weir_sdk::export_aggregator!(CountV2);
