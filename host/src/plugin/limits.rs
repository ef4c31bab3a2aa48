//! Per-instance resource limits.

use std::time::Duration;

/// Resource limits of one plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// CPU time one call (one batch) may take before it is interrupted.
    pub deadline: Duration,
    /// Most outputs one call may produce (all its messages together).
    pub max_outputs: usize,
    /// Most bytes of keys, values and headers one call may produce.
    pub max_output_bytes: usize,
}

impl Limits {
    /// Default memory cap: generous for a stream processor, small enough that
    /// a runaway allocation cannot take the host down.
    pub const DEFAULT_MEMORY_MB: u64 = 64;
    /// Default per-batch deadline.
    pub const DEFAULT_DEADLINE_MS: u64 = 1_000;
    /// Default cap on one call's outputs.
    pub const DEFAULT_MAX_OUTPUTS: u64 = 1_000_000;
    /// Default cap on one call's output bytes: as much as the default memory
    /// cap, so a reply can hold whatever the instance can build.
    pub const DEFAULT_MAX_OUTPUT_MB: u64 = 64;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: (Self::DEFAULT_MEMORY_MB * 1024 * 1024) as usize,
            deadline: Duration::from_millis(Self::DEFAULT_DEADLINE_MS),
            max_outputs: Self::DEFAULT_MAX_OUTPUTS as usize,
            max_output_bytes: (Self::DEFAULT_MAX_OUTPUT_MB * 1024 * 1024) as usize,
        }
    }
}
