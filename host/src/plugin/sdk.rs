//! The guest SDKs and the WIT, carried inside the `weir` binary.
//!
//! `weir new` and `weir build` need the SDK sources (the Rust crates a
//! scaffolded plugin depends on, the Python and JS SDKs a build bundles, the
//! WIT). So that an installed `weir` works anywhere, without the source tree
//! it was built from, the binary embeds them and unpacks them on first use
//! into `CACHE/sdk/VERSION-HASH/` (`sdk/rust`, `sdk/python`, `sdk/js`,
//! `wit/`). The folder name pins the copy to this binary's version and to the
//! content itself, so an upgraded (or locally modified) `weir` never picks up
//! stale SDK files. `WEIR_SDK_DIR` points at another `sdk/` folder instead,
//! for SDK development.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use include_dir::{Dir, include_dir};

/// `sdk/rust`: the crates, each with its own copy of the WIT (followed
/// symlinks), so that the unpacked crates build without the source tree.
static RUST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../sdk/rust");
/// `sdk/python`: the `weir_sdk` package and its packaging files.
static PYTHON: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../sdk/python");
/// `wit/`: the `weir:processor` package.
static WIT: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../wit");

/// `sdk/js`: the modules and the manifest and lock file of the toolchain,
/// named one by one (`node_modules` and the tests stay out of the binary).
const JS: &[(&str, &[u8])] = &[
    ("weir.js", include_bytes!("../../../sdk/js/weir.js")),
    ("packed.js", include_bytes!("../../../sdk/js/packed.js")),
    ("package.json", include_bytes!("../../../sdk/js/package.json")),
    ("package-lock.json", include_bytes!("../../../sdk/js/package-lock.json")),
    ("README.md", include_bytes!("../../../sdk/js/README.md")),
];

/// Where the SDKs are: `WEIR_SDK_DIR` if set, else the embedded copy,
/// unpacked to the cache on first use. Returns the `sdk/` folder (holding
/// `rust/`, `python/`, `js/`).
pub fn sdk_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_SDK_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            anyhow::bail!("WEIR_SDK_DIR={} is not a folder (it should be a weir source tree's sdk/)", dir.display());
        }
        return Ok(dir);
    }
    static UNPACKED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    UNPACKED.get_or_init(|| unpacked().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

/// The embedded files, as (path relative to the unpacked root, contents),
/// sorted by path. Build leftovers (`__pycache__`, `target`) are left out.
pub fn files() -> Vec<(PathBuf, &'static [u8])> {
    fn walk(dir: &'static Dir<'static>, prefix: &Path, out: &mut Vec<(PathBuf, &'static [u8])>) {
        for file in dir.files() {
            out.push((prefix.join(file.path()), file.contents()));
        }
        for sub in dir.dirs() {
            walk(sub, prefix, out);
        }
    }
    let mut out = Vec::new();
    walk(&RUST, Path::new("sdk/rust"), &mut out);
    walk(&PYTHON, Path::new("sdk/python"), &mut out);
    walk(&WIT, Path::new("wit"), &mut out);
    out.extend(JS.iter().map(|(name, bytes)| (Path::new("sdk/js").join(name), *bytes)));
    out.retain(|(path, _)| {
        let leftover = path
            .components()
            .any(|c| matches!(c.as_os_str().to_str(), Some("__pycache__" | "target" | "node_modules")));
        // Of sdk/python, the package and its packaging files (not a wheel
        // build's `build/` or `*.egg-info`, nor the tests).
        let python_extra = path.starts_with("sdk/python")
            && !path.starts_with("sdk/python/weir_sdk")
            && !["sdk/python/pyproject.toml", "sdk/python/README.md"].iter().any(|f| path == Path::new(f));
        !leftover && !python_extra
    });
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The name of the unpacked folder: this binary's version and a hash of
/// the embedded files.
pub fn pinned_name() -> String {
    let mut hasher = blake3::Hasher::new();
    for (path, bytes) in files() {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    format!("{}-{}", env!("CARGO_PKG_VERSION"), &hasher.finalize().to_hex()[..16])
}

/// weir's own cache folder for SDKs and toolchains: the parent of
/// `WEIR_CACHE_DIR` is not ours to guess, so it is `WEIR_CACHE_DIR` itself
/// when set (and not `off`), else `~/.cache/weir`.
pub fn cache_root() -> Result<PathBuf> {
    match std::env::var_os("WEIR_CACHE_DIR") {
        Some(dir) if !dir.is_empty() && dir != "off" => Ok(PathBuf::from(dir)),
        _ => dirs::cache_dir()
            .map(|d| d.join("weir"))
            .context("no cache folder: set HOME (or XDG_CACHE_HOME, or WEIR_CACHE_DIR) to a writable folder"),
    }
}

/// Unpacks the embedded SDK unless this version of it is there already.
/// The copy is written beside its final place and renamed into it, so a
/// crash or a concurrent `weir` never leaves (or sees) a half-written SDK.
fn unpacked() -> Result<PathBuf> {
    unpack_into(&cache_root()?)
}

/// [`unpacked`] under the cache folder `cache`.
fn unpack_into(cache: &Path) -> Result<PathBuf> {
    let parent = cache.join("sdk");
    let root = parent.join(pinned_name());
    let done = root.join(".complete");
    if done.is_file() {
        return Ok(root.join("sdk"));
    }
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a folder in {}", parent.display()))?;
    for (path, bytes) in files() {
        let target = staging.path().join(&path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))?;
    }
    std::fs::write(staging.path().join(".complete"), env!("CARGO_PKG_VERSION"))
        .with_context(|| format!("writing in {}", staging.path().display()))?;
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &root) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another weir unpacked the same files first: use its copy.
        if !done.is_file() {
            return Err(e).with_context(|| format!("unpacking the weir SDK into {}", root.display()));
        }
    } else {
        tracing::debug!("unpacked the weir SDK into {}", root.display());
    }
    Ok(root.join("sdk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &str) -> &'static str {
        let (_, bytes) = files().into_iter().find(|(p, _)| p == Path::new(path)).unwrap_or_else(|| panic!("{path}"));
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn embeds_every_sdk_and_the_wit_without_build_leftovers() {
        let files = files();
        for needed in [
            "sdk/rust/Cargo.toml",
            "sdk/rust/src/lib.rs",
            "sdk/rust/base/wit/processor.wit",
            "sdk/rust/processor-packed-world/wit/processor.wit",
            "sdk/python/weir_sdk/__init__.py",
            "sdk/python/pyproject.toml",
            "sdk/js/weir.js",
            "sdk/js/package-lock.json",
            "wit/processor.wit",
        ] {
            assert!(files.iter().any(|(p, _)| p == Path::new(needed)), "{needed} is not embedded");
        }
        assert!(!files.iter().any(|(p, _)| p.to_string_lossy().contains("node_modules")));
        assert!(!files.iter().any(|(p, _)| p.to_string_lossy().contains("__pycache__")));
        // The crates' WIT is the package's WIT (symlinks, followed).
        assert_eq!(text("sdk/rust/base/wit/processor.wit"), text("wit/processor.wit"));
    }

    #[test]
    fn the_sdk_packages_carry_weir_s_version() {
        let version = env!("CARGO_PKG_VERSION");
        let rust: toml::Table = text("sdk/rust/Cargo.toml").parse().unwrap();
        assert_eq!(rust["package"]["version"].as_str(), Some(version), "sdk/rust");
        let python: toml::Table = text("sdk/python/pyproject.toml").parse().unwrap();
        assert_eq!(python["project"]["version"].as_str(), Some(version), "sdk/python");
        let js: serde_json::Value = serde_json::from_str(text("sdk/js/package.json")).unwrap();
        assert_eq!(js["version"].as_str(), Some(version), "sdk/js");
    }

    #[test]
    fn unpacks_once_into_a_folder_named_by_version_and_content() {
        let cache = tempfile::tempdir().unwrap();
        let root = unpack_into(cache.path()).unwrap();
        assert!(root.ends_with(Path::new(&pinned_name()).join("sdk")), "{}", root.display());
        assert_eq!(std::fs::read_to_string(root.join("../wit/processor.wit")).unwrap(), text("wit/processor.wit"));
        assert!(root.join("rust/Cargo.toml").is_file() && root.join("js/weir.js").is_file());
        // A second call reuses the copy.
        std::fs::write(root.join("marker"), "x").unwrap();
        assert_eq!(unpack_into(cache.path()).unwrap(), root);
        assert!(root.join("marker").is_file());
    }
}
