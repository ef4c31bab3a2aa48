//! Logging to the host's log, tagged with the stage name.

use weir_sdk_base::host::{self, Level};

/// Logs at trace level.
pub fn trace(text: &str) {
    host::log(Level::Trace, text)
}
/// Logs at debug level.
pub fn debug(text: &str) {
    host::log(Level::Debug, text)
}
/// Logs at info level.
pub fn info(text: &str) {
    host::log(Level::Info, text)
}
/// Logs at warn level.
pub fn warn(text: &str) {
    host::log(Level::Warn, text)
}
/// Logs at error level.
pub fn error(text: &str) {
    host::log(Level::Error, text)
}
