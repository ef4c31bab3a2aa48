//! Rebuilds `weir` when a file is added to (or removed from) what it embeds
//! (`plugin/sdk.rs`): `include_dir!` reads the folders when it expands, and
//! without this cargo would only notice changes to files it already saw.

fn main() {
    for dir in ["../sdk/rust", "../sdk/python/weir_sdk", "../wit"] {
        println!("cargo:rerun-if-changed={dir}");
    }
    // The packaging files of the Python SDK, and the JS files (named one by
    // one in plugin/sdk.rs, so a new one is a code change anyway).
    println!("cargo:rerun-if-changed=../sdk/python/pyproject.toml");
    println!("cargo:rerun-if-changed=../sdk/python/README.md");
}
