//! The plugin build toolchains, found or installed on demand.
//!
//! `weir build` needs the `wasm32-wasip2` target (Rust), componentize-py
//! (Python) or componentize-js and rolldown (JavaScript), at the versions the
//! SDKs are tested with. When one is missing, weir installs the pinned
//! version into its own cache (a private Python venv; an npm prefix made
//! from the JS SDK's lock file), saying so in one line, so a fresh machine
//! builds plugins without a setup step. `--no-provision` (or
//! `WEIR_NO_PROVISION=1`) turns this off: weir then refuses with the exact
//! command to run. An install that fails (offline, say) names the command too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use super::progress::Step;

/// componentize-py version the Python SDK is tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Whether missing toolchains may be installed; set once by the CLI.
static PROVISION: AtomicBool = AtomicBool::new(true);

/// Allows or forbids installing missing toolchains (`--no-provision`).
pub fn set_provisioning(allowed: bool) {
    PROVISION.store(allowed, Ordering::Relaxed);
}

/// Whether missing toolchains may be installed: not after `--no-provision`,
/// nor with `WEIR_NO_PROVISION` set to anything but `0` or `false`.
pub fn provisioning() -> bool {
    let env_off = std::env::var("WEIR_NO_PROVISION").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    PROVISION.load(Ordering::Relaxed) && !env_off
}

/// Where weir installs toolchains: `CACHE/tools`.
fn tools_dir() -> Result<PathBuf> {
    Ok(super::sdk::cache_root()?.join("tools"))
}

/// Why a toolchain is not installed, and what to run instead.
fn refuse(what: &str, commands: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} is not installed, and installing it is turned off (--no-provision / WEIR_NO_PROVISION): \
         install it with `{commands}`"
    )
}

/// Installs into `dir` with `install` (which fills the folder), once: a
/// lock keeps concurrent weirs from installing twice, and a stamp marks a
/// finished install, so a failed one is cleaned up and retried next time.
fn install_once(what: &str, dir: &Path, commands: &str, install: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let stamp = dir.join(".weir-installed");
    if stamp.is_file() {
        return Ok(());
    }
    if !provisioning() {
        return Err(refuse(what, commands));
    }
    let parent = dir.parent().context("a toolchain folder has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().context("a toolchain folder has a name")?.to_string_lossy();
    let lock_path = parent.join(format!("{name}.lock"));
    let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    if stamp.is_file() {
        return Ok(()); // another weir installed it while this one waited
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the unfinished install {}", dir.display()))?;
    }
    let step = Step::start(format!("installing {what} into {} (once)", dir.display()));
    if let Err(e) = install(dir) {
        let _ = std::fs::remove_dir_all(dir);
        return Err(e.context(format!(
            "could not install {what} (offline?): run `{commands}`, or install it yourself and put it on the PATH"
        )));
    }
    std::fs::write(&stamp, what).with_context(|| format!("writing {}", stamp.display()))?;
    step.done();
    Ok(())
}

/// Runs an installer, keeping its output for the error if it fails.
fn run_installer(mut command: Command) -> Result<()> {
    let shown = format!("{command:?}");
    let output = command.output().with_context(|| format!("cannot run {shown}"))?;
    if !output.status.success() {
        let mut said = String::from_utf8_lossy(&output.stderr).to_string();
        said.push_str(&String::from_utf8_lossy(&output.stdout));
        let tail: Vec<&str> = said.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{shown} failed ({}):\n{}", output.status, tail.join("\n"));
    }
    Ok(())
}

/// The componentize-py to build Python plugins with: `WEIR_COMPONENTIZE_PY`,
/// else the one in weir's venv, else the pinned version on the PATH, else
/// installed into weir's venv.
pub fn componentize_py() -> Result<PathBuf> {
    if let Some(tool) = std::env::var_os("WEIR_COMPONENTIZE_PY").filter(|t| !t.is_empty()) {
        return Ok(PathBuf::from(tool));
    }
    let venv = tools_dir()?.join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let in_venv = venv.join("bin/componentize-py");
    let stamp = venv.join(".weir-installed");
    if stamp.is_file() {
        if in_venv.is_file() {
            return Ok(in_venv);
        }
        // Half removed by hand: install it again.
        let _ = std::fs::remove_file(&stamp);
    }
    // The pinned version on the PATH is as good (and what CI installs).
    let on_path = Command::new("componentize-py").arg("--version").output();
    if on_path.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(COMPONENTIZE_PY_VERSION))
    {
        return Ok(PathBuf::from("componentize-py"));
    }
    let pin = format!("componentize-py=={COMPONENTIZE_PY_VERSION}");
    let commands = format!("python3 -m venv {0} && {0}/bin/pip install {pin}", venv.display());
    install_once(&format!("componentize-py {COMPONENTIZE_PY_VERSION}"), &venv, &commands, |venv| {
        let python = std::env::var_os("WEIR_PYTHON").unwrap_or_else(|| "python3".into());
        if Command::new(&python).arg("--version").output().is_err() {
            bail!(
                "python3 not found: install Python 3.10 or later with its venv module (e.g. `apt-get install python3-venv`)"
            );
        }
        let mut venv_cmd = Command::new(&python);
        venv_cmd.args(["-m", "venv"]).arg(venv);
        run_installer(venv_cmd)?;
        let mut pip = Command::new(venv.join("bin/pip"));
        pip.args(["install", "--quiet", "--disable-pip-version-check", &pin]);
        run_installer(pip)
    })?;
    Ok(in_venv)
}

/// The JS build tools: componentize-js and rolldown.
#[derive(Debug, Clone)]
pub struct JsTools {
    /// The componentize-js command.
    pub componentize: PathBuf,
    /// The rolldown command.
    pub rolldown: PathBuf,
}

/// The JS toolchain for a plugin in `dir` with the JS SDK in `sdk`: the
/// plugin's own `node_modules`, else the SDK folder's, else weir's npm prefix
/// made from the SDK's lock file (installed when missing).
pub fn js_tools(dir: &Path, sdk: &Path) -> Result<JsTools> {
    let found = |root: &Path| {
        let bin = root.join("node_modules/.bin");
        let tools = JsTools { componentize: bin.join("componentize-js"), rolldown: bin.join("rolldown") };
        (tools.componentize.is_file() && tools.rolldown.is_file()).then_some(tools)
    };
    if let Some(tools) = found(dir).or_else(|| found(sdk)) {
        return Ok(tools);
    }
    let lock = sdk.join("package-lock.json");
    let manifest = sdk.join("package.json");
    let mut hasher = blake3::Hasher::new();
    for file in [&manifest, &lock] {
        hasher.update(&std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    }
    // One prefix per lock file: a new SDK's toolchain never mixes with an old one.
    let prefix = tools_dir()?.join(format!("js-{}", &hasher.finalize().to_hex()[..16]));
    let commands = format!(
        "mkdir -p {0} && cp {1} {2} {0}/ && npm install --prefix {0} --no-audit --no-fund",
        prefix.display(),
        manifest.display(),
        lock.display()
    );
    if Command::new("npm").arg("--version").output().is_err() {
        bail!(
            "npm not found: install Node.js 20 or later with npm (e.g. `apt-get install nodejs npm`); weir then \
             installs the JS toolchain itself"
        );
    }
    install_once("the JS toolchain (componentize-js, rolldown)", &prefix, &commands, |prefix| {
        std::fs::create_dir_all(prefix).with_context(|| format!("creating {}", prefix.display()))?;
        for file in [&manifest, &lock] {
            let to = prefix.join(file.file_name().expect("a file name"));
            std::fs::copy(file, &to).with_context(|| format!("copying {} to {}", file.display(), to.display()))?;
        }
        // `npm install` (not `npm ci`): npm 11's ci refuses this lock file
        // over optional per-platform bindings it does not list; install
        // still follows the lock.
        let mut npm = Command::new("npm");
        npm.args(["install", "--no-audit", "--no-fund", "--prefix"]).arg(prefix);
        run_installer(npm)
    })?;
    found(&prefix).with_context(|| {
        format!(
            "the JS toolchain in {} lacks componentize-js or rolldown: remove the folder and build again",
            prefix.display()
        )
    })
}

/// Installs the Rust target `target` with rustup, for the toolchain that
/// builds the crate in `dir` (its `rust-toolchain.toml` applies).
pub fn rust_target(target: &str, dir: &Path) -> Result<()> {
    let command = format!("rustup target add {target}");
    if !provisioning() {
        return Err(refuse(&format!("the {target} target"), &command));
    }
    let step = Step::start(format!("installing the {target} target with rustup (once)"));
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", target]).current_dir(dir);
    run_installer(rustup).with_context(|| format!("could not install the {target} target: run `{command}`"))?;
    step.done();
    Ok(())
}
