//! The `weir` binary.

// Lifting plugin outputs allocates a few small buffers per message; mimalloc
// handles that pattern far better than glibc's malloc (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(weir::cli::main());
}
