//! Test plugin: misbehaves on chosen messages, so that the host's handling of
//! traps, deadlines, memory limits, failures and init errors can be tested.
//!
//! Config (all optional; each `*_on` is a substring looked for in the value,
//! read as lossy UTF-8, and checked in this order):
//! - `panic_on`: panic with "poison message".
//! - `loop_on`: spin forever (the host's deadline must stop it).
//! - `alloc_on`: allocate 1 MiB chunks forever (the memory cap must stop it).
//! - `stack_on`: recurse with large local arrays until the guest's own stack
//!   (in linear memory) overflows.
//! - `sleep_on`: sleep for an hour (a WASI sleep: the host's deadline must
//!   end it although no guest code runs meanwhile).
//! - `hoard_on`: store 1 MiB in the stage's state under the message's value
//!   (the state quota must stop it).
//! - `chatter_on`: log a 1 MiB line, add a counter with a 1 KiB name, then
//!   300 counters named `c0`..`c299`, then log 1,000 lines `chatter N` and
//!   print 1,000 to stderr (the host's caps must bound all of it).
//! - `fail_on`: fail the message with "asked to fail: <value>".
//! - `init_fail`: refuse to start, with this text as the error.
//! - `init_sleep`: sleep for an hour in `init`.
//!
//! Every other message passes through unchanged. Messages are handled one at
//! a time, so a bad message traps in the middle of its batch.

use std::hint::black_box;
use std::time::Duration;

use weir_sdk::{Config, Message, Outcome, Processor, counter, log, state};

struct Faulty {
    panic_on: Option<String>,
    loop_on: Option<String>,
    alloc_on: Option<String>,
    stack_on: Option<String>,
    sleep_on: Option<String>,
    hoard_on: Option<String>,
    chatter_on: Option<String>,
    fail_on: Option<String>,
}

const AN_HOUR: Duration = Duration::from_secs(3600);

impl Processor for Faulty {
    fn init(config: Config) -> Result<Self, String> {
        if let Some(reason) = config.get("init_fail") {
            return Err(reason.to_owned());
        }
        if config.get("init_sleep").is_some() {
            std::thread::sleep(AN_HOUR);
        }
        let pattern = |name: &str| config.get(name).map(str::to_owned);
        Ok(Faulty {
            panic_on: pattern("panic_on"),
            loop_on: pattern("loop_on"),
            alloc_on: pattern("alloc_on"),
            stack_on: pattern("stack_on"),
            sleep_on: pattern("sleep_on"),
            hoard_on: pattern("hoard_on"),
            chatter_on: pattern("chatter_on"),
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
        if hit(&self.stack_on) {
            black_box(overflow_stack(0));
        }
        if hit(&self.sleep_on) {
            std::thread::sleep(AN_HOUR);
        }
        if hit(&self.hoard_on) {
            state::set(&message.value, &vec![7u8; 1 << 20]);
        }
        if hit(&self.chatter_on) {
            log::info(&"x".repeat(1 << 20));
            counter::add(&"n".repeat(1024), 1);
            for i in 0..300 {
                counter::add(&format!("c{i}"), 1);
            }
            for i in 0..1000 {
                log::info(&format!("chatter {i}"));
                eprintln!("chatter {i}");
            }
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

/// Recurses with a 64 KiB local array per frame: the shadow stack in linear
/// memory runs out long before the engine's call stack does.
#[inline(never)]
fn overflow_stack(depth: u64) -> u64 {
    // Never true; keeps the recursion from being unconditional.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let mut frame = [0u8; 64 * 1024];
    frame[(depth as usize) % frame.len()] = depth as u8;
    black_box(&mut frame);
    u64::from(frame[0]) + overflow_stack(depth + 1)
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
