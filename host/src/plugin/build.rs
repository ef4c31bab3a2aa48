//! `weir build`: turns a plugin source folder into a component.
//!
//! - Rust folders (`Cargo.toml`) are built with plain `cargo build --release
//!   --target wasm32-wasip2`; the component's path is read from cargo's own
//!   artifact messages, so workspace target dirs and renamed crates just work.
//! - Python folders (`app.py`, or `pyproject.toml` naming the module in
//!   `[tool.weir] module`) are built with `componentize-py` against the
//!   `processor-packed` world, with the Python SDK (`sdk/python`) on the path
//!   (`[tool.weir] world` pins a hand-written plugin to its world instead).
//! - JavaScript folders (`package.json`; entry = its `main`, else `index.js`)
//!   are bundled with rolldown (`weir-sdk` resolved to `sdk/js/weir.js`)
//!   behind a generated entry that exports the `processor-packed` world, and
//!   built with `componentize-js` (`"weir": {"world": ...}` in package.json
//!   builds the entry as it is against that world instead).
//!
//! Python and JavaScript components land in `DIR/target/weir/NAME.wasm`; a
//! build whose inputs (sources, SDK, WIT) did not change is skipped.
//!
//! The SDKs come from the binary (see [`super::sdk`]); a missing toolchain
//! is installed into weir's cache (see [`super::toolchain`]); each step
//! shows its progress (see [`super::progress`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The language of a plugin source folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// A Rust crate (`Cargo.toml`).
    Rust,
    /// A Python module (`app.py` or `pyproject.toml`), built with componentize-py.
    Python,
    /// A JavaScript ES module (`package.json`), built with componentize-js.
    JavaScript,
}

/// Detects the language of a plugin folder.
pub fn detect(dir: &Path) -> Result<Language> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    if dir.join("Cargo.toml").is_file() {
        return Ok(Language::Rust);
    }
    if dir.join("app.py").is_file() || dir.join("pyproject.toml").is_file() {
        return Ok(Language::Python);
    }
    if dir.join("package.json").is_file() {
        return Ok(Language::JavaScript);
    }
    bail!(
        "{} is not a plugin folder weir can build: expected a Rust crate (Cargo.toml), a Python module \
         (app.py or pyproject.toml) or a JavaScript module (package.json)",
        dir.display()
    )
}

/// The WASI target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

use super::progress::Step;
pub use super::sdk::sdk_dir;
use super::toolchain;
pub use super::toolchain::COMPONENTIZE_PY_VERSION;

/// The WIT package, embedded so Python and JS builds work from anywhere.
const WIT: &str = include_str!("../../../wit/processor.wit");

/// Which form of the weir worlds an SDK plugin is built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Abi {
    /// The packed worlds (`processor-packed`, `aggregator-packed`): one buffer
    /// per batch. What the SDKs build by default.
    #[default]
    Packed,
    /// The record worlds (`processor`, `aggregator`): typed WIT records. The
    /// same plugin source, for comparison and conformance tests.
    Record,
}

impl Abi {
    /// Appended to the component's file name, so both forms can coexist.
    fn file_suffix(self) -> &'static str {
        match self {
            Abi::Packed => "",
            Abi::Record => ".record",
        }
    }

    /// The processor world of this form, as componentize tools name it.
    pub fn processor_world(self) -> &'static str {
        match self {
            Abi::Packed => "processor-packed",
            Abi::Record => "processor",
        }
    }
}

/// Builds the plugin in `dir` and returns the path of the component.
/// Compiler output goes to this process's stderr as it happens.
pub fn build(dir: &Path) -> Result<PathBuf> {
    build_abi(dir, Abi::default())
}

/// Builds the plugin in `dir` against the given form of the worlds. For a
/// plugin written against the WIT by hand (no weir SDK), the source decides
/// the world and `Abi::Packed` simply builds it as it is.
pub fn build_abi(dir: &Path, abi: Abi) -> Result<PathBuf> {
    match detect(dir)? {
        Language::Rust => build_rust(dir, abi),
        Language::Python => build_python(dir, abi),
        Language::JavaScript => build_js(dir, abi, false),
    }
}

/// Builds a JavaScript plugin ahead of time: componentize-js `--aot`, which
/// specialises SpiderMonkey's interpreter to the plugin's code with weval
/// (found as `WEIR_WEVAL`, else `weval` on the PATH). Written as `NAME.aot.wasm`.
pub fn build_aot(dir: &Path, abi: Abi) -> Result<PathBuf> {
    match detect(dir)? {
        Language::JavaScript => build_js(dir, abi, true),
        _ => bail!("--aot applies to JavaScript plugins only: {} is not one", dir.display()),
    }
}

fn build_rust(dir: &Path, abi: Abi) -> Result<PathBuf> {
    let wasm = cargo_build(dir, abi)?;
    if abi == Abi::Packed {
        return Ok(wasm);
    }
    // Both forms share cargo's output path: keep this one under its own
    // name, and put the default build back where cargo (and users) expect it.
    let renamed = wasm.with_file_name(format!(
        "{}{}.wasm",
        wasm.file_stem().unwrap_or_default().to_string_lossy(),
        abi.file_suffix()
    ));
    std::fs::copy(&wasm, &renamed).with_context(|| format!("copying {} to {}", wasm.display(), renamed.display()))?;
    cargo_build(dir, Abi::Packed)?;
    Ok(renamed)
}

/// One `cargo build` of a plugin crate; returns the component's path.
/// A missing `wasm32-wasip2` target is installed (see [`toolchain`]) and
/// the build tried once more.
fn cargo_build(dir: &Path, abi: Abi) -> Result<PathBuf> {
    match cargo_build_once(dir, abi)? {
        Ok(wasm) => Ok(wasm),
        Err(MissingTarget) => {
            toolchain::rust_target(TARGET, dir)?;
            cargo_build_once(dir, abi)?.map_err(|MissingTarget| {
                anyhow::anyhow!("the {TARGET} target is still missing after `rustup target add {TARGET}`")
            })
        }
    }
}

/// A cargo build that failed for want of the WASI target.
struct MissingTarget;

fn cargo_build_once(dir: &Path, abi: Abi) -> Result<std::result::Result<PathBuf, MissingTarget>> {
    let manifest = dir.join("Cargo.toml").canonicalize().with_context(|| format!("reading {}", dir.display()))?;
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // DWARF is ~95% of a plugin and slows every compile; panics keep
    // their file:line without it.
    command
        .args(["build", "--release", "--target", TARGET, "--config", "profile.release.strip=\"debuginfo\""])
        .args(["--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&manifest);
    if abi == Abi::Record {
        command.args(["--features", "weir-sdk/record-world"]);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("cargo not found: install Rust from https://rustup.rs"),
        _ => anyhow::anyhow!("cannot run cargo: {e}"),
    })?;

    let step = std::sync::Arc::new(Step::start(format!(
        "building {} with cargo ({TARGET}{})",
        dir.display(),
        if abi == Abi::Record { ", record world" } else { "" }
    )));
    // Relay diagnostics while cargo runs; remember them to explain failures.
    let stderr = child.stderr.take().expect("piped stderr");
    let relay = std::thread::spawn({
        let step = step.clone();
        move || {
            let mut seen = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                step.println(&line);
                seen.push_str(&line);
                seen.push('\n');
            }
            seen
        }
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
            return Ok(Err(MissingTarget));
        }
        bail!("building {} failed (cargo exited with {status})", dir.display());
    }
    let wasm = wasm.with_context(|| {
        format!(
            "cargo built {} but produced no .wasm: is it a library with `crate-type = [\"cdylib\"]`?",
            dir.display()
        )
    })?;
    if let Ok(step) = std::sync::Arc::try_unwrap(step) {
        step.done();
    }
    Ok(Ok(wasm))
}

/// Where a Python or JS build puts its component and scratch files.
fn out_dir(dir: &Path) -> PathBuf {
    dir.join("target").join("weir")
}

/// The component's file name: the folder's name, made safe.
fn component_name(dir: &Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if safe.is_empty() { "plugin".into() } else { safe }
}

/// Hashes every file that shapes the component, so an unchanged plugin is not
/// rebuilt (a Python build takes ~20 s, a JS one ~40 s).
fn inputs_hash(dir: &Path, extra: &[PathBuf], salt: &str) -> String {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name == "target" || name == "node_modules" || name == "__pycache__" {
                continue;
            }
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    for path in extra {
        if path.is_dir() { walk(path, &mut files) } else { files.push(path.clone()) }
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    hasher.update(salt.as_bytes());
    hasher.update(WIT.as_bytes());
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(&std::fs::read(&file).unwrap_or_default());
    }
    hasher.finalize().to_hex().to_string()
}

/// Runs `build` unless `wasm` was built from the same inputs already.
fn cached(wasm: &Path, hash: &str, build: impl FnOnce() -> Result<()>) -> Result<PathBuf> {
    let stamp = wasm.with_extension("inputs");
    if wasm.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
        tracing::debug!("{} is up to date", wasm.display());
        return Ok(wasm.to_path_buf());
    }
    let _ = std::fs::remove_file(&stamp);
    build()?;
    if !wasm.is_file() {
        bail!("the build reported success but wrote no {}", wasm.display());
    }
    std::fs::write(&stamp, hash).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(wasm.to_path_buf())
}

/// The WIT folder to build against: the plugin's own `wit/`, else the
/// embedded package written next to the output.
fn wit_dir(dir: &Path, out: &Path) -> Result<PathBuf> {
    if dir.join("wit").is_dir() {
        return Ok(dir.join("wit"));
    }
    let wit = out.join("wit");
    std::fs::create_dir_all(&wit).with_context(|| format!("creating {}", wit.display()))?;
    let file = wit.join("processor.wit");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(WIT) {
        std::fs::write(&file, WIT).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(wit)
}

/// Runs a build tool under a progress step; its output is shown when it
/// fails (with the error) and otherwise only if it wrote to stderr.
fn run_tool(mut command: Command, tool: &str, step: &Step) -> Result<()> {
    // Captured: a tool writing to the terminal would tear the spinner, and
    // stdout is `weir build`'s answer.
    let output = command.stdin(Stdio::null()).output().map_err(|e| anyhow::anyhow!("cannot run {tool}: {e}"))?;
    let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim_end().to_string();
    let (stdout, stderr) = (said(&output.stdout), said(&output.stderr));
    if !output.status.success() {
        let both: Vec<&str> = [stdout.as_str(), stderr.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
        bail!("{tool} failed ({}):\n{}", output.status, both.join("\n"));
    }
    if !stderr.is_empty() {
        step.println(&stderr);
    }
    Ok(())
}

/// The Python module a folder builds (`app`, or `[tool.weir] module` in
/// `pyproject.toml`) and the world `[tool.weir] world` pins it to, if any.
fn python_module(dir: &Path) -> Result<(String, Option<&'static str>)> {
    let pyproject = dir.join("pyproject.toml");
    let mut module = None;
    let mut pinned = None;
    if pyproject.is_file() {
        let text = std::fs::read_to_string(&pyproject).with_context(|| format!("reading {}", pyproject.display()))?;
        let doc: toml::Table = text.parse().with_context(|| format!("parsing {}", pyproject.display()))?;
        let weir = doc.get("tool").and_then(|t| t.get("weir"));
        if let Some(name) = weir.and_then(|w| w.get("module")) {
            let name = name
                .as_str()
                .with_context(|| format!("{}: [tool.weir] module must be a string", pyproject.display()))?;
            module = Some(name.to_string());
        }
        if let Some(world) = weir.and_then(|w| w.get("world")) {
            let found =
                [Abi::Record, Abi::Packed].map(Abi::processor_world).into_iter().find(|w| world.as_str() == Some(w));
            pinned = Some(found.with_context(|| {
                format!(
                    "{}: [tool.weir] world = {world} must be \"processor\" or \"processor-packed\"",
                    pyproject.display()
                )
            })?);
        }
    }
    match module {
        Some(module) => Ok((module, pinned)),
        None if dir.join("app.py").is_file() => Ok(("app".into(), pinned)),
        None => bail!("{}: no app.py, and pyproject.toml names no module in [tool.weir] module", dir.display()),
    }
}

fn build_python(dir: &Path, abi: Abi) -> Result<PathBuf> {
    let dir = dir.canonicalize().with_context(|| format!("reading {}", dir.display()))?;
    let (module, pinned) = python_module(&dir)?;
    // The SDK exports both worlds; a plugin written against the WIT by hand
    // pins the one it implements.
    let world = pinned.unwrap_or(abi.processor_world());
    let sdk = sdk_dir()?.join("python");
    if !sdk.join("weir_sdk").is_dir() {
        bail!("the weir Python SDK is not at {} (set WEIR_SDK_DIR to the weir sdk/ folder)", sdk.display());
    }
    let out = out_dir(&dir);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let wasm = out.join(format!("{}{}.wasm", component_name(&dir), abi.file_suffix()));
    let hash =
        inputs_hash(&dir, &[sdk.join("weir_sdk")], &format!("python {module} {COMPONENTIZE_PY_VERSION} {world}"));
    cached(&wasm, &hash, || {
        let wit = wit_dir(&dir, &out)?;
        let tool = toolchain::componentize_py()?;
        let mut command = Command::new(tool);
        command
            .arg("-d")
            .arg(&wit)
            .args(["-w", world, "componentize", &module, "-p"])
            .arg(&dir)
            .arg("-p")
            .arg(&sdk)
            .arg("-o")
            .arg(&wasm)
            .current_dir(&out);
        let step = Step::start(format!("building {} with componentize-py", dir.display()));
        let built = run_tool(command, "componentize-py", &step);
        if built.is_ok() {
            step.done();
        }
        match pinned {
            None => built.with_context(|| {
                format!(
                    "building {} against {world} (a plugin written against the WIT without weir_sdk names its \
                     world in pyproject.toml: `[tool.weir] world = \"processor\"`)",
                    dir.display()
                )
            }),
            Some(_) => built,
        }
    })
}

/// The entry module of a JS plugin (package.json's `main`, else `index.js`)
/// and the world package.json pins it to (`"weir": {"world": ...}`), if any.
fn js_entry(dir: &Path) -> Result<(PathBuf, Option<&'static str>)> {
    let manifest = dir.join("package.json");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", manifest.display()))?;
    let entry = dir.join(doc["main"].as_str().unwrap_or("index.js"));
    if !entry.is_file() {
        bail!("{}: the entry module {} does not exist (set `main`)", manifest.display(), entry.display());
    }
    let world = &doc["weir"]["world"];
    if world.is_null() {
        return Ok((entry, None));
    }
    match [Abi::Record, Abi::Packed].map(Abi::processor_world).into_iter().find(|w| world.as_str() == Some(w)) {
        Some(pinned) => Ok((entry, Some(pinned))),
        None => bail!(
            "{}: \"weir\": {{\"world\": {world}}} must be \"processor\" or \"processor-packed\"",
            manifest.display()
        ),
    }
}

/// A path as a JS string literal.
fn js_string(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("serialising a string")
}

/// The entry `weir build` bundles for the packed world: it re-exports the
/// plugin's `init` and picks its `processPacked` (see `packedExport` in
/// `sdk/js/packed.js`), so `export const { init, process } = processor(..)`
/// builds unchanged.
fn js_packed_entry(entry: &Path, sdk: &Path) -> String {
    format!(
        "// Generated by `weir build`: the processor-packed world of {name}.\n\
         import * as plugin from {entry};\n\
         import {{ packedExport }} from {packed};\n\
         export const init = plugin.init;\n\
         export const processPacked = packedExport(plugin);\n",
        name = entry.file_name().unwrap_or_default().to_string_lossy(),
        entry = js_string(entry),
        packed = js_string(&sdk.join("packed.js")),
    )
}

fn build_js(dir: &Path, abi: Abi, aot: bool) -> Result<PathBuf> {
    let dir = dir.canonicalize().with_context(|| format!("reading {}", dir.display()))?;
    let (entry, pinned) = js_entry(&dir)?;
    let sdk = sdk_dir()?.join("js");
    if !sdk.join("weir.js").is_file() {
        bail!("the weir JavaScript SDK is not at {} (set WEIR_SDK_DIR to the weir sdk/ folder)", sdk.display());
    }
    let out = out_dir(&dir);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let aot_suffix = if aot { ".aot" } else { "" };
    let wasm = out.join(format!("{}{}{aot_suffix}.wasm", component_name(&dir), abi.file_suffix()));
    let sdk_files = [sdk.join("weir.js"), sdk.join("packed.js"), sdk.join("package-lock.json")];
    let hash = inputs_hash(&dir, &sdk_files, &format!("js {abi:?} {pinned:?} aot={aot}"));
    cached(&wasm, &hash, || {
        let wit = wit_dir(&dir, &out)?;
        let weval = if aot {
            Some(weval_bin().context(
                "weval not found (componentize-js would download it from GitHub): install it with \
                 `cargo install weval --version 0.5.0`, or set WEIR_WEVAL to its path",
            )?)
        } else {
            None
        };
        let node = Command::new("node").arg("--version").output();
        if node.is_err() {
            bail!("node not found: install Node.js 20 or later (e.g. `apt-get install nodejs npm`)");
        }
        let toolchain::JsTools { componentize, rolldown } = toolchain::js_tools(&dir, &sdk)?;
        // A plugin pinned to a world, or built for the record world, is
        // bundled as it is; otherwise behind the generated packed entry.
        let (input, world) = match (pinned, abi) {
            (Some(world), _) => (entry.clone(), world),
            (None, Abi::Record) => (entry.clone(), Abi::Record.processor_world()),
            (None, Abi::Packed) => {
                let generated = out.join("entry.js");
                std::fs::write(&generated, js_packed_entry(&entry, &sdk))
                    .with_context(|| format!("writing {}", generated.display()))?;
                (generated, Abi::Packed.processor_world())
            }
        };
        // Bundle: one ES module with `weir-sdk` inlined and the WIT imports
        // left to componentize-js.
        let bundle = out.join("bundle.js");
        let config = out.join("rolldown.config.mjs");
        std::fs::write(
            &config,
            format!(
                "export default {{\n  input: {entry},\n  external: [/^weir:/, /^wasi:/],\n  platform: \"neutral\",\n  \
                 resolve: {{ alias: {{ \"weir-sdk\": {sdk} }} }},\n  output: {{ file: {bundle}, format: \"esm\" }},\n}};\n",
                entry = js_string(&input),
                sdk = js_string(&sdk.join("weir.js")),
                bundle = js_string(&bundle),
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut command = Command::new(&rolldown);
        command.arg("-c").arg(&config).current_dir(&out);
        let step = Step::start(format!("bundling {} with rolldown", entry.display()));
        run_tool(command, "rolldown", &step)?;
        step.done();

        let mut command = Command::new(&componentize);
        command
            .arg(&bundle)
            .arg("--wit")
            .arg(&wit)
            .args(["--world-name", world, "-d", "http", "fetch-event", "-o"])
            .arg(&wasm)
            .current_dir(&out);
        if let Some(weval) = &weval {
            command.arg("--aot").arg("--weval-bin").arg(weval);
        }
        let step =
            Step::start(format!("building {} with componentize-js{}", dir.display(), if aot { " --aot" } else { "" }));
        run_tool(command, "componentize-js", &step)?;
        step.done();
        Ok(())
    })
}

/// The weval binary for `--aot` builds: `WEIR_WEVAL`, else `weval` on the PATH.
fn weval_bin() -> Option<PathBuf> {
    match std::env::var_os("WEIR_WEVAL") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        _ => which(Path::new("weval")),
    }
}

/// Finds a program on the PATH.
fn which(program: &Path) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file()))
}
