//! Little-endian word access and the checks every reader shares.

use std::fmt;
use std::ops::Range;

/// Why a buffer is not a valid packed batch or reply. The text names the
/// table, the entry and the field, so a plugin author can find the bug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault(pub String);

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fault {}

macro_rules! fault {
    ($($arg:tt)*) => { $crate::words::Fault(format!($($arg)*)) };
}
pub(crate) use fault;

/// Word `index` of `bytes` (which must hold it).
#[inline(always)]
pub(crate) fn word(bytes: &[u8], index: usize) -> u32 {
    let at = index * 4;
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => panic!("word {index} is outside a {}-byte table entry", bytes.len()),
    }
}

/// All words of a fixed-size table entry, read once.
#[inline(always)]
pub(crate) fn words<const N: usize>(entry: &[u8]) -> [u32; N] {
    let mut out = [0u32; N];
    for (word, chunk) in out.iter_mut().zip(entry.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

/// Overwrites word `index` of `bytes`.
#[inline(always)]
pub(crate) fn put(bytes: &mut [u8], index: usize, value: u32) {
    let at = index * 4;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// The byte range `off .. off + len`, if it lies within `total` bytes.
/// Overflow-safe on 32-bit targets too.
#[inline(always)]
pub(crate) fn span(total: usize, off: u32, len: u32) -> Option<Range<usize>> {
    let start = off as usize;
    let end = start.checked_add(len as usize)?;
    (end <= total).then_some(start..end)
}

/// A table of `count` entries of `entry_words` words at `off`, checked to
/// lie within `buf`.
pub(crate) fn table<'a>(
    buf: &'a [u8],
    what: &str,
    off: u32,
    count: u32,
    entry_words: usize,
) -> Result<&'a [u8], Fault> {
    let bytes = (count as usize)
        .checked_mul(entry_words * 4)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| fault!("{what} table of {count} entries is absurdly large"))?;
    let range = span(buf.len(), off, bytes).ok_or_else(|| {
        fault!("{what} table ({count} entries at offset {off}) runs past the end of the {}-byte buffer", buf.len())
    })?;
    Ok(&buf[range])
}

/// Checks a header, total length and reserved words common to both buffers.
pub(crate) fn check_header(
    buf: &[u8],
    what: &str,
    magic: [u8; 4],
    header_words: usize,
    total_word: usize,
) -> Result<(), Fault> {
    if buf.len() < header_words * 4 {
        return Err(fault!("{what} of {} bytes is shorter than its {}-byte header", buf.len(), header_words * 4));
    }
    if buf[..4] != magic {
        return Err(fault!(
            "{what} starts with {:02x?}, not the magic {:?}",
            &buf[..4],
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = word(buf, 1);
    if version != crate::layout::VERSION {
        return Err(fault!("{what} has layout version {version}; this host reads version {}", crate::layout::VERSION));
    }
    let total = word(buf, total_word);
    if total as usize != buf.len() {
        return Err(fault!("{what} says it is {total} bytes long but is {} bytes", buf.len()));
    }
    if word(buf, header_words - 1) != 0 {
        return Err(fault!("{what} header: reserved word {} is not 0", header_words - 1));
    }
    Ok(())
}

/// Checks that `bytes[range]` is UTF-8 and returns it as text.
pub(crate) fn text(buf: &[u8], range: Range<usize>, what: impl FnOnce() -> String) -> Result<&str, Fault> {
    std::str::from_utf8(&buf[range]).map_err(|e| fault!("{} is not valid UTF-8 ({e})", what()))
}

/// Pads `buf` with zeros to a multiple of 8 bytes.
pub(crate) fn align8(buf: &mut Vec<u8>) {
    let padded = buf.len().next_multiple_of(8);
    buf.resize(padded, 0);
}
