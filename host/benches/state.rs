//! Cost of a state checkpoint, measured (not a timed test).
//!
//! `cargo bench -p weir --bench state` prints, for states of 10 000 and
//! 1 000 000 keys (`count:key-N` → an 8-byte counter, as `count-by-key`
//! keeps), the time and bytes of one checkpoint after 1 000 keys changed:
//! - whole-state save (the earlier format: every key and value written to a
//!   new file and fsynced, then renamed), and
//! - the state store (only the changed keys, one redb write transaction),
//!
//! side by side, plus the one-time cost of loading the state at start.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::plugin::state::{StageState, save_all};
use weir::store::StateStore;

const CHANGED: u64 = 1_000;
const ROUNDS: u32 = 5;

fn key(i: u64) -> Vec<u8> {
    format!("count:key-{i}").into_bytes()
}

/// The earlier whole-state save: every entry, length-prefixed, fsynced.
fn save_whole(path: &Path, state: &StageState, keys: u64) -> u64 {
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut written = 0u64;
    for i in 0..keys {
        let (k, v) = (key(i), state.get(&key(i)).unwrap());
        for item in [&k, &v] {
            out.write_all(&(item.len() as u32).to_le_bytes()).unwrap();
            out.write_all(item).unwrap();
            written += 4 + item.len() as u64;
        }
    }
    out.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
    written
}

fn best(mut run: impl FnMut() -> Duration) -> Duration {
    (0..ROUNDS).map(|_| run()).min().unwrap()
}

fn main() {
    println!("## State checkpoint: {CHANGED} changed keys, best of {ROUNDS}\n");
    println!("| keys held | whole-state save | bytes written | state store (changed keys) | ratio | load at start |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for keys in [10_000u64, 1_000_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(StateStore::open(dir.path()).unwrap());
        let state = StageState::open(store.clone(), "count", usize::MAX).unwrap();
        for i in 0..keys {
            state.set(key(i), i.to_le_bytes().to_vec()).unwrap();
        }
        save_all([&state]).unwrap();
        let mut round = 0u64;
        let mut touch = |state: &StageState| {
            round += 1;
            for i in 0..CHANGED {
                state.set(key((i * 7919 + round) % keys), round.to_le_bytes().to_vec()).unwrap();
            }
        };
        let mut whole_bytes = 0;
        let whole = best(|| {
            touch(&state);
            let _ = state.take_changes();
            let started = Instant::now();
            whole_bytes = save_whole(&dir.path().join("whole.state"), &state, keys);
            started.elapsed()
        });
        let incremental = best(|| {
            touch(&state);
            let started = Instant::now();
            save_all([&state]).unwrap();
            started.elapsed()
        });
        drop(state);
        let started = Instant::now();
        let reopened = StageState::open(store, "count", usize::MAX).unwrap();
        let load = started.elapsed();
        assert_eq!(reopened.len() as u64, keys);
        println!(
            "| {keys} | {:.1} ms | {:.1} MB | {:.2} ms | {:.0}× | {:.0} ms |",
            whole.as_secs_f64() * 1e3,
            whole_bytes as f64 / 1e6,
            incremental.as_secs_f64() * 1e3,
            whole.as_secs_f64() / incremental.as_secs_f64(),
            load.as_secs_f64() * 1e3,
        );
    }
}
