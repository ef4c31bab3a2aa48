//! `weir check PLUGIN.wasm`.

use std::path::Path;

use super::{EXIT_OK, EXIT_USAGE, report_error};
use crate::plugin::Runtime;

pub(super) fn check(path: &Path) -> i32 {
    let runtime = match Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            report_error(format!("{e:#}"));
            return super::EXIT_RUNTIME;
        }
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            report_error(format!("{}: cannot read: {e}", path.display()));
            return EXIT_USAGE;
        }
    };
    match runtime.describe(&bytes) {
        Ok((plugin, description)) => {
            println!("{}: ok", path.display());
            println!("  world    {}", description.world.wit_name(description.encoding));
            println!("  version  {}", plugin.version().to_hex());
            println!("  exports  {}", description.exports.join(", "));
            println!(
                "  imports  {}",
                if description.imports.is_empty() { "(none)".to_string() } else { description.imports.join(", ") }
            );
            EXIT_OK
        }
        Err(e) => {
            report_error(format!("{}: {e:#}", path.display()));
            EXIT_USAGE
        }
    }
}
