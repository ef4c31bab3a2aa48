//! `weir build DIR`.

use std::path::Path;

use super::{EXIT_OK, EXIT_USAGE, report_error};
use crate::plugin::{Runtime, build};

pub(super) fn build(dir: &Path, abi: build::Abi, aot: bool) -> i32 {
    let started = std::time::Instant::now();
    let built = if aot { build::build_aot(dir, abi) } else { build::build_abi(dir, abi) };
    let wasm = match built {
        Ok(wasm) => wasm,
        Err(e) => {
            report_error(format!("{e:#}"));
            return EXIT_USAGE;
        }
    };
    // Check what was built, so a plugin that will not load fails here.
    let checked = Runtime::new().and_then(|r| r.load_file(&wasm));
    match checked {
        Ok(plugin) => {
            eprintln!(
                "built {} ({}, version {}) in {:.1?}",
                wasm.display(),
                plugin.world().short_name(plugin.encoding()),
                plugin.version(),
                started.elapsed()
            );
            println!("{}", wasm.display());
            EXIT_OK
        }
        Err(e) => {
            report_error(format!("built {} but it is not a valid plugin: {e:#}", wasm.display()));
            EXIT_USAGE
        }
    }
}
