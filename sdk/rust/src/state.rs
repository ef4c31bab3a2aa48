//! The stage's key-value state: shared by every instance of the stage,
//! kept across hot swaps and restarts.

use weir_sdk_base::host;

/// Reads `key`.
pub fn get(key: &[u8]) -> Option<Vec<u8>> {
    host::state_get(key)
}

/// Writes `key`.
pub fn set(key: &[u8], value: &[u8]) {
    host::state_set(key, value)
}

/// Removes `key`.
pub fn delete(key: &[u8]) {
    host::state_delete(key)
}

/// Reads `key` as a little-endian `u64` counter (0 when absent or malformed).
pub fn get_u64(key: &[u8]) -> u64 {
    get(key).and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// Writes `key` as a little-endian `u64`.
pub fn set_u64(key: &[u8], value: u64) {
    set(key, &value.to_le_bytes())
}
