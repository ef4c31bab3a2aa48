//! Test plugin: tags every message with the id of the instance that handled
//! it, so tests can check dispatch, hot swaps and instance replacement.
//!
//! Each instance picks a random 64-bit id at init. Every output is its input
//! unchanged plus the header `instance` = that id as 16 hex digits.
//!
//! Config (all optional):
//! - `delay_us_max` (integer, default 0): before emitting a message, busy-wait
//!   for (FNV-1a hash of the value) % (`delay_us_max` + 1) microseconds: a
//!   jitter that is stable for a given value.
//! - `version` (text): also add the header `v` = this text.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use weir_sdk::{Config, Message, Outcome, Processor};

struct Probe {
    instance: String,
    delay_us_max: u64,
    version: Option<String>,
}

impl Processor for Probe {
    fn init(config: Config) -> Result<Self, String> {
        // RandomState is seeded from WASI's random source, fresh per instance.
        let id = RandomState::new().hash_one(0u8);
        Ok(Probe {
            instance: format!("{id:016x}"),
            delay_us_max: config.parse_or("delay_us_max", 0)?,
            version: config.get("version").map(str::to_owned),
        })
    }

    fn process(&mut self, message: Message) -> Outcome {
        if self.delay_us_max > 0 {
            let hash = fnv1a(&message.value);
            let micros = self.delay_us_max.checked_add(1).map_or(hash, |modulus| hash % modulus);
            busy_wait(Duration::from_micros(micros));
        }
        let mut output = message.into_output().with_header("instance", self.instance.as_str());
        if let Some(version) = &self.version {
            output = output.with_header("v", version.as_str());
        }
        Outcome::one(output)
    }
}

/// The 64-bit FNV-1a hash: stable across runs, builds and instances.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Spins (without yielding) for `duration`, as CPU-bound work would.
fn busy_wait(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

weir_sdk::export_processor!(Probe);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn tags_with_instance_and_version() {
        let config = vec![("version".to_string(), "2".to_string()), ("delay_us_max".to_string(), "50".to_string())];
        let mut probe = Probe::init(Config::new(config)).expect("valid config");
        let other = Probe::init(Config::new(vec![])).expect("valid config");
        assert_ne!(probe.instance, other.instance);
        let message = Message { key: None, value: b"x".to_vec(), headers: vec![], timestamp_ms: None, origin: None };
        let Outcome::Emit(outputs) = probe.process(message) else { panic!("failed") };
        let headers: Vec<_> = outputs[0].headers.iter().map(|h| (h.name.as_str(), h.value.as_slice())).collect();
        assert_eq!(headers, [("instance", probe.instance.as_bytes()), ("v", &b"2"[..])]);
        assert!(Probe::init(Config::new(vec![("delay_us_max".into(), "-1".into())])).is_err());
    }
}
