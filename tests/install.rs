//! The front door: a `weir` installed with `cargo install`, used from an
//! empty folder with an empty home (so an empty weir cache) and none of the
//! plugin toolchains on the PATH, scaffolds, builds and runs a plugin in
//! each language. Nothing of the source tree is visible to it: the SDKs come
//! from the binary, the toolchains are installed into weir's cache.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use support::*;

/// A cold Rust plugin build, or a toolchain install plus a Python/JS build.
const LIMIT: Duration = Duration::from_secs(900);

/// The installed `weir` (once per test process) and the folder holding it.
fn installed() -> &'static (tempfile::TempDir, PathBuf) {
    static INSTALLED: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir");
        let host = workspace().join("host");
        // --debug and the workspace's own target dir: the compiled
        // dependencies of this test run are reused, so the install costs a
        // link, not a ~10-minute release build on every CI run. What is
        // tested is the same: the installed binary, copied out of the tree.
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "--locked", "--debug", "--quiet", "--path"])
            .arg(&host)
            .arg("--root")
            .arg(root.path())
            .env("CARGO_TARGET_DIR", workspace().join("target"))
            .status()
            .expect("running cargo install");
        assert!(status.success(), "cargo install --path host --root {} failed", root.path().display());
        let weir = root.path().join("bin/weir");
        assert!(weir.is_file(), "cargo install wrote no {}", weir.display());
        (root, weir)
    })
}

/// The PATH of a machine with the base toolchains only: this PATH without
/// the folders that hold componentize-py, componentize-js or rolldown, with
/// the installed weir first.
fn bare_path(weir: &Path) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept = std::env::split_paths(&path)
        .filter(|dir| !["componentize-py", "componentize-js", "rolldown"].iter().any(|t| dir.join(t).exists()));
    std::env::join_paths(std::iter::once(weir.parent().unwrap().to_path_buf()).chain(kept)).expect("a PATH")
}

/// A clean user: an empty home and working folder, the installed weir.
struct User {
    home: tempfile::TempDir,
    work: tempfile::TempDir,
    weir: PathBuf,
}

impl User {
    fn new() -> Self {
        User {
            home: tempfile::tempdir().expect("temp dir"),
            work: tempfile::tempdir().expect("temp dir"),
            weir: installed().1.clone(),
        }
    }

    /// Runs the installed `weir ARGS` in the working folder.
    fn weir(&self, args: &[&str]) -> Output {
        let real_home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
        let mut command = Command::new(&self.weir);
        command
            .args(args)
            .current_dir(self.work.path())
            .env("HOME", self.home.path())
            .env("PATH", bare_path(&self.weir))
            // The base toolchains stay where they are installed (rustup and
            // cargo live under the real home unless told otherwise)...
            .env("RUSTUP_HOME", std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| real_home.join(".rustup").into()))
            .env("CARGO_HOME", std::env::var_os("CARGO_HOME").unwrap_or_else(|| real_home.join(".cargo").into()))
            // ...and so do pip's and npm's download caches (the registry
            // clients' own, not weir's: this saves downloads, not installs).
            .env("PIP_CACHE_DIR", real_home.join(".cache/pip"))
            .env("npm_config_cache", real_home.join(".npm"))
            // The Rust plugin builds in the workspace's target dir, so the
            // registry crates the tests' plugins compiled already (wit-bindgen
            // and its macros) are reused: a cold build takes minutes. The SDK
            // crates themselves are built from weir's cache.
            .env("CARGO_TARGET_DIR", workspace().join("target"))
            .env("WEIR_LOG", "info")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("WEIR_CACHE_DIR")
            .env_remove("WEIR_SDK_DIR")
            .env_remove("WEIR_COMPONENTIZE_PY")
            .env_remove("WEIR_NO_PROVISION")
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        wait_with_deadline(command.spawn().expect("starting the installed weir"), LIMIT)
    }

    /// Runs `weir ARGS`, expecting exit 0; returns (stdout, stderr).
    fn ok(&self, args: &[&str]) -> (String, String) {
        let output = self.weir(args);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(0), "weir {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        (stdout, stderr)
    }

    fn cache(&self) -> PathBuf {
        self.home.path().join(".cache/weir")
    }
}

fn new_build_run(lang: &str) {
    let user = User::new();
    user.ok(&["new", "hello", "--lang", lang]);

    // Where a toolchain is missing, --no-provision refuses with the command.
    if lang != "rust" {
        let output = user.weir(&["build", "hello", "--no-provision"]);
        let stderr = text(&output).1;
        assert_eq!(output.status.code(), Some(2), "{lang}: {stderr}");
        assert!(stderr.contains("installing it is turned off") && stderr.contains("install it with `"), "{stderr}");
    }

    let (stdout, stderr) = user.ok(&["build", "hello"]);
    let wasm = user.work.path().join(stdout.trim());
    assert!(wasm.is_file(), "{lang}: weir build printed {stdout:?}");
    // Every step says how long it took, and the first compile of a large
    // (Python, JS) component that it happens once.
    assert!(stderr.contains("done in"), "{lang}: {stderr}");
    if lang != "rust" {
        assert!(stderr.contains("the cache makes the next start instant"), "{lang}: {stderr}");
    }
    match lang {
        "python" => assert!(stderr.contains("installing componentize-py 0.25.1 into"), "{stderr}"),
        "js" => assert!(stderr.contains("installing the JS toolchain"), "{stderr}"),
        _ => {
            // The crate depends on the SDK weir unpacked into its cache.
            let manifest = std::fs::read_to_string(user.work.path().join("hello/Cargo.toml")).unwrap();
            let sdk = user.cache().join("sdk");
            assert!(manifest.contains(&format!("path = \"{}", sdk.display())), "{manifest}");
            assert!(!manifest.contains(workspace().to_str().unwrap()), "{manifest}");
        }
    }
    // The SDK is unpacked once, under weir's version.
    let unpacked: Vec<_> = std::fs::read_dir(user.cache().join("sdk")).unwrap().flatten().collect();
    assert_eq!(unpacked.len(), 1, "{lang}: {unpacked:?}");
    assert!(unpacked[0].file_name().to_string_lossy().starts_with(env!("CARGO_PKG_VERSION")), "{unpacked:?}");

    let (stdout, stderr) = user.ok(&["run", "hello/pipeline.toml"]);
    let mut values: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].as_str().unwrap().to_string())
        .collect();
    values.sort();
    assert_eq!(values.len(), 3, "{lang}: {stdout}");
    assert_eq!(values[0], "not json", "{lang}: {values:?}");
    assert!(values[1].contains("Hello, Ada!") && values[2].contains("Hello, Grace!"), "{lang}: {values:?}");
    // Built and compiled by `weir build`: the run neither rebuilds nor compiles.
    assert!(!stderr.contains("compiling component"), "{lang}: {stderr}");
}

#[test]
fn installed_weir_scaffolds_builds_and_runs_rust() {
    new_build_run("rust");
}

#[test]
fn installed_weir_scaffolds_builds_and_runs_python() {
    new_build_run("python");
}

#[test]
fn installed_weir_scaffolds_builds_and_runs_js() {
    new_build_run("js");
}
