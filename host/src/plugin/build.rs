//! `weir build`: turns a plugin source folder into a component.
//!
//! Rust folders (`Cargo.toml`) are built with plain `cargo build --release
//! --target wasm32-wasip2`; the component's path is read from cargo's own
//! artifact messages, so workspace target dirs and renamed crates just work.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The language of a plugin source folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// A Rust crate (`Cargo.toml`).
    Rust,
}

/// Detects the language of a plugin folder.
pub fn detect(dir: &Path) -> Result<Language> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    if dir.join("Cargo.toml").is_file() {
        return Ok(Language::Rust);
    }
    bail!("{} is not a plugin folder weir can build: expected a Rust crate (Cargo.toml)", dir.display())
}

/// The WASI target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Builds the plugin in `dir` and returns the path of the component.
/// Compiler output goes to this process's stderr as it happens.
pub fn build(dir: &Path) -> Result<PathBuf> {
    match detect(dir)? {
        Language::Rust => build_rust(dir),
    }
}

fn build_rust(dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml").canonicalize().with_context(|| format!("reading {}", dir.display()))?;
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        // DWARF is ~95% of a plugin and slows every compile; panics keep
        // their file:line without it.
        .args(["build", "--release", "--target", TARGET, "--config", "profile.release.strip=\"debuginfo\""])
        .args(["--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("cargo not found: install Rust from https://rustup.rs"),
            _ => anyhow::anyhow!("cannot run cargo: {e}"),
        })?;

    // Relay diagnostics while cargo runs; remember them to explain failures.
    let stderr = child.stderr.take().expect("piped stderr");
    let relay = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });

    let mut wasm = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if msg["reason"] != "compiler-artifact" || msg["manifest_path"].as_str() != manifest.to_str() {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            wasm = files.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".wasm")).map(PathBuf::from).or(wasm);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    let diagnostics = relay.join().unwrap_or_default();
    if !status.success() {
        if diagnostics.contains(TARGET)
            && (diagnostics.contains("target may not be installed")
                || diagnostics.contains("can't find crate for `std`")
                || diagnostics.contains("can't find crate for `core`"))
        {
            bail!("the {TARGET} target is not installed: run `rustup target add {TARGET}`");
        }
        bail!("building {} failed (cargo exited with {status})", dir.display());
    }
    wasm.with_context(|| {
        format!(
            "cargo built {} but produced no .wasm: is it a library with `crate-type = [\"cdylib\"]`?",
            dir.display()
        )
    })
}
