//! Valid ranges of the numeric settings and URI parameters, checked when a
//! pipeline is loaded so that no value can panic, wrap around or stall the
//! host later (a thread per instance, a `Duration` from a rate, a byte count
//! from MiB). README's pipeline-file section lists them.

use std::fmt::Display;
use std::ops::RangeInclusive;

/// `batch_size` of a source, `batch.max_size` of a stage or sink.
pub const BATCH_SIZE: RangeInclusive<u64> = 1..=100_000;
/// `batch.max_wait_ms` of a stage or sink: at most a minute, so an open
/// batch never holds messages (and a shutdown) for long.
pub const MAX_WAIT_MS: RangeInclusive<u64> = 0..=60_000;
/// A stage's `concurrency`: one thread and one store per instance.
pub const CONCURRENCY: RangeInclusive<u64> = 1..=256;
/// `limits.memory_mb`: a 32-bit linear memory holds at most 4 GiB.
pub const MEMORY_MB: RangeInclusive<u64> = 1..=4096;
/// `limits.max_outputs`: outputs of one call.
pub const MAX_OUTPUTS: RangeInclusive<u64> = 1..=100_000_000;
/// `limits.max_output_mb`: output bytes of one call.
pub const MAX_OUTPUT_MB: RangeInclusive<u64> = 1..=4096;
/// `limits.state_mb`: the stage's state lives in host memory.
pub const STATE_MB: RangeInclusive<u64> = 1..=65_536;
/// `limits.deadline_ms`: up to an hour.
pub const DEADLINE_MS: RangeInclusive<u64> = 1..=3_600_000;
/// A stage's `retries`.
pub const RETRIES: RangeInclusive<u64> = 0..=100;
/// A stage's `retry_backoff_ms` (the first backoff; it doubles).
pub const RETRY_BACKOFF_MS: RangeInclusive<u64> = 0..=60_000;
/// `retries` of a sink or the dead letter (or `"forever"`).
pub const SINK_RETRIES: RangeInclusive<u64> = 0..=1_000_000;
/// `[shutdown] drain_timeout_ms`: from 100 ms to an hour.
pub const DRAIN_TIMEOUT_MS: RangeInclusive<u64> = 100..=3_600_000;
/// `[state] checkpoint_interval_ms`: from 10 ms to an hour.
pub const CHECKPOINT_INTERVAL_MS: RangeInclusive<u64> = 10..=3_600_000;
/// `[memory] max_in_flight_mb`: from 1 MiB to 1 TiB.
pub const MAX_IN_FLIGHT_MB: RangeInclusive<u64> = 1..=1 << 20;
/// Redis `claim_idle_ms`: up to a day (0 = never claim).
pub const CLAIM_IDLE_MS: RangeInclusive<u64> = 0..=86_400_000;
/// A source's `max_message_bytes`: up to 1 GiB.
pub const MAX_MESSAGE_BYTES: RangeInclusive<u64> = 1..=1 << 30;
/// Redis `maxlen`.
pub const MAXLEN: RangeInclusive<u64> = 1..=i64::MAX as u64;
/// `gen://?rate=`, messages per second.
pub const GEN_RATE: RangeInclusive<f64> = 0.001..=10_000_000.0;
/// Redis `block_ms`.
pub const BLOCK_MS: RangeInclusive<u64> = 1..=60_000;
/// Redis `db`.
pub const REDIS_DB: RangeInclusive<i64> = 0..=1_000_000;
/// `[admin] max_body_mb`: a plugin upload (Python components are ~19 MiB,
/// JavaScript ~12 MiB, 16 MiB ahead-of-time compiled), held in memory while
/// it is compiled.
pub const ADMIN_MAX_BODY_MB: RangeInclusive<u64> = 1..=1024;
/// HTTP collector `max_body_bytes`: up to 1 GiB.
pub const HTTP_MAX_BODY_BYTES: RangeInclusive<u64> = 1..=1 << 30;
/// HTTP collector `busy_timeout_ms`: up to a minute.
pub const HTTP_BUSY_TIMEOUT_MS: RangeInclusive<u64> = 0..=60_000;
/// Kafka `commit_interval_ms`.
pub const COMMIT_INTERVAL_MS: RangeInclusive<u64> = 1..=3_600_000;

/// `value` if it lies in `range`, else a refusal naming `key` and the range.
pub fn check<T: PartialOrd + Display + Copy>(key: &str, value: T, range: &RangeInclusive<T>) -> Result<T, String> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!("`{key}` = {value} is out of range: it must be between {} and {}", range.start(), range.end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_key_and_the_range() {
        assert_eq!(check("concurrency", 4, &CONCURRENCY), Ok(4));
        assert_eq!(
            check("concurrency", 100_000, &CONCURRENCY).unwrap_err(),
            "`concurrency` = 100000 is out of range: it must be between 1 and 256"
        );
        assert!(check("rate", f64::NAN, &GEN_RATE).is_err());
        assert!(check("rate", f64::INFINITY, &GEN_RATE).is_err());
    }
}
