//! Constants of the version 1 layout (`docs/packed-abi.md`). Sizes are in
//! 32-bit words unless named `_BYTES`.

/// First four bytes of a batch.
pub const BATCH_MAGIC: [u8; 4] = *b"WPKB";
/// First four bytes of a reply.
pub const REPLY_MAGIC: [u8; 4] = *b"WPKR";
/// The layout version this crate reads and writes.
pub const VERSION: u32 = 1;

/// Words in the batch header.
pub const BATCH_HEADER_WORDS: usize = 8;
/// Words in one message entry.
pub const MESSAGE_WORDS: usize = 16;
/// Words in one header entry (batch and reply).
pub const HEADER_WORDS: usize = 4;
/// Words in the reply header.
pub const REPLY_HEADER_WORDS: usize = 12;
/// Words in one outcome entry.
pub const OUTCOME_WORDS: usize = 4;
/// Words in one output entry.
pub const OUTPUT_WORDS: usize = 12;
/// Words in one route entry.
pub const ROUTE_WORDS: usize = 2;

/// Flag bits of a message entry (word 0).
pub mod message_flags {
    /// The key is present (it may be empty).
    pub const KEY: u32 = 1 << 0;
    /// The timestamp is present.
    pub const TIMESTAMP: u32 = 1 << 1;
    /// The origin is present.
    pub const ORIGIN: u32 = 1 << 2;
    /// The origin has a partition.
    pub const PARTITION: u32 = 1 << 3;
    /// The origin has a numeric offset.
    pub const OFFSET: u32 = 1 << 4;
    /// The origin has an opaque id.
    pub const ID: u32 = 1 << 5;
    /// Every bit version 1 defines.
    pub const ALL: u32 = KEY | TIMESTAMP | ORIGIN | PARTITION | OFFSET | ID;
}

/// Flag bits of an output entry (word 0).
pub mod output_flags {
    /// The key is present (it may be empty).
    pub const KEY: u32 = 1 << 0;
    /// The timestamp is present.
    pub const TIMESTAMP: u32 = 1 << 1;
    /// The route is present.
    pub const ROUTE: u32 = 1 << 2;
    /// Every bit version 1 defines.
    pub const ALL: u32 = KEY | TIMESTAMP | ROUTE;
}

/// Outcome kinds (word 0 of an outcome entry).
pub mod outcome_kind {
    /// Emit a range of outputs (zero filters the input).
    pub const EMIT: u32 = 0;
    /// Forward the input unchanged.
    pub const KEEP: u32 = 1;
    /// Fail the input with a reason.
    pub const FAIL: u32 = 2;
}
