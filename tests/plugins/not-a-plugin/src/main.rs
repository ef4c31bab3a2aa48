//! Test crate: a plain Rust binary. Built for `wasm32-wasip2` it is a WASI
//! command component (it exports `wasi:cli/run`), a component of another
//! world that `weir check` must refuse.

fn main() {}
