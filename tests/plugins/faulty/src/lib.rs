//! Test plugin: misbehaves on chosen messages, so that the host's handling of
//! traps, deadlines, memory limits, failures and init errors can be tested.
//!
//! Config (all optional; each `*_on` is a substring looked for in the value,
//! read as lossy UTF-8, and checked in this order):
//! - `panic_on`: panic with "poison message".
//! - `loop_on`: spin forever (the host's deadline must stop it).
//! - `alloc_on`: allocate 1 MiB chunks forever (the memory cap must stop it).
//! - `fail_on`: fail the message with "asked to fail: <value>".
//! - `init_fail`: refuse to start, with this text as the error.
//!
//! Every other message passes through unchanged. Messages are handled one at
//! a time, so a bad message traps in the middle of its batch.

use std::hint::black_box;

use weir_sdk::{Config, Message, Outcome, Processor};

struct Faulty {
    panic_on: Option<String>,
    loop_on: Option<String>,
    alloc_on: Option<String>,
    fail_on: Option<String>,
}

impl Processor for Faulty {
    fn init(config: Config) -> Result<Self, String> {
        if let Some(reason) = config.get("init_fail") {
            return Err(reason.to_owned());
        }
        let pattern = |name: &str| config.get(name).map(str::to_owned);
        Ok(Faulty {
            panic_on: pattern("panic_on"),
            loop_on: pattern("loop_on"),
            alloc_on: pattern("alloc_on"),
            fail_on: pattern("fail_on"),
        })
    }

    fn process(&mut self, message: Message) -> Outcome {
        let value = String::from_utf8_lossy(&message.value);
        let hit = |pattern: &Option<String>| pattern.as_deref().is_some_and(|p| value.contains(p));
        if hit(&self.panic_on) {
            panic!("poison message");
        }
        if hit(&self.loop_on) {
            spin_forever();
        }
        if hit(&self.alloc_on) {
            hog_memory();
        }
        if hit(&self.fail_on) {
            return Outcome::fail(format!("asked to fail: {value}"));
        }
        Outcome::one(message)
    }
}

/// Busy-loops until the host interrupts the instance.
fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates (and touches) 1 MiB chunks until the allocation traps.
fn hog_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(black_box(vec![0xA5; CHUNK]));
        black_box(&chunks);
    }
}

weir_sdk::export_processor!(Faulty);

#[cfg(test)]
mod tests {
    use super::*;

    fn faulty(pairs: &[(&str, &str)]) -> Result<Faulty, String> {
        Faulty::init(Config::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    fn message(value: &str) -> Message {
        Message { key: None, value: value.into(), headers: vec![], timestamp_ms: None, origin: None }
    }

    #[test]
    fn fails_or_passes_through() {
        let mut f = faulty(&[("fail_on", "bad")]).unwrap();
        assert!(matches!(f.process(message("a bad one")), Outcome::Fail(r) if r == "asked to fail: a bad one"));
        assert!(matches!(f.process(message("fine")), Outcome::Emit(o) if o.len() == 1 && o[0].value == b"fine"));
        assert_eq!(faulty(&[("init_fail", "nope")]).err().as_deref(), Some("nope"));
    }

    #[test]
    #[should_panic(expected = "poison message")]
    fn panics_on_poison() {
        faulty(&[("panic_on", "poison")]).unwrap().process(message("poison"));
    }
}
