//! Shared helpers for the end-to-end tests: building plugins once, writing
//! pipeline files, running the real `weir` binary with a deadline.

#![allow(dead_code)]

pub mod pulsar;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// The `weir` binary under test. It does not inherit an admin token from
/// the environment the tests run in: tests that want one set it.
pub fn weir() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.env_remove("WEIR_ADMIN_TOKEN");
    command
}

/// Makes sure the plugin toolchains are there, installing what is missing
/// (once per test process, saying so): the `wasm32-wasip2` target, and with
/// `python_and_js` also componentize-py (pip) and the JS toolchain (npm,
/// from `sdk/js`'s lock file). A tool that cannot be installed fails the
/// test with the command to run: never a silent skip.
pub fn toolchains(python_and_js: bool) {
    static TARGET: OnceLock<()> = OnceLock::new();
    static PLUGIN_TOOLS: OnceLock<()> = OnceLock::new();
    TARGET.get_or_init(|| {
        let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
        if !installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "wasm32-wasip2")) {
            provision("the wasm32-wasip2 target", Command::new("rustup").args(["target", "add", "wasm32-wasip2"]));
        }
    });
    if !python_and_js {
        return;
    }
    PLUGIN_TOOLS.get_or_init(|| {
        let version = weir::plugin::build::COMPONENTIZE_PY_VERSION;
        if Command::new("componentize-py").arg("--version").output().is_err() {
            let pin = format!("componentize-py=={version}");
            provision("componentize-py", Command::new("python3").args(["-m", "pip", "install", "--quiet", &pin]));
            // pyenv installs put new scripts behind its shims only after a rehash.
            let _ = Command::new("pyenv").arg("rehash").status();
            assert!(
                Command::new("componentize-py").arg("--version").output().is_ok(),
                "componentize-py was installed but is not on PATH: add python3's scripts folder to PATH"
            );
        }
        let js = workspace().join("sdk/js");
        if !js.join("node_modules/.bin/componentize-js").is_file() {
            let prefix = js.to_str().expect("UTF-8 path");
            provision(
                "the JS toolchain (componentize-js, rolldown)",
                Command::new("npm").args(["install", "--prefix", prefix, "--no-audit", "--no-fund"]),
            );
        }
    });
}

/// Makes sure a Redis server answers on 127.0.0.1:6379, the address the
/// Redis tests use: when none does, starts the machine's `redis-server`
/// (saying so). Without `redis-server` the test fails with the command that
/// installs it: never a silent skip.
pub fn redis_server() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let answers =
            || std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1)).is_ok();
        if answers() {
            return;
        }
        provision(
            "a Redis server on 127.0.0.1:6379 (none was answering)",
            Command::new("redis-server").args([
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        );
        assert!(
            wait_until(Duration::from_secs(10), answers),
            "redis-server was started but 127.0.0.1:6379 does not answer"
        );
    });
}

/// The nisshi binary (a Kafka-compatible broker the Kafka tests start):
/// from PATH, else installed once with `cargo +nightly install` (it needs a
/// newer rustc than stable; this takes about half an hour), saying so.
pub fn nisshi() -> PathBuf {
    static NISSHI: OnceLock<PathBuf> = OnceLock::new();
    NISSHI
        .get_or_init(|| {
            let on_path = std::env::var_os("PATH")
                .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nisshi")).find(|p| p.is_file()));
            if let Some(path) = on_path {
                return path;
            }
            let cargo_home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
                .expect("CARGO_HOME or HOME is set");
            let installed = cargo_home.join("bin/nisshi");
            if installed.is_file() {
                return installed;
            }
            let toolchains = Command::new("rustup").args(["toolchain", "list"]).output().expect("running rustup");
            if !String::from_utf8_lossy(&toolchains.stdout).lines().any(|l| l.starts_with("nightly")) {
                provision(
                    "the nightly toolchain (to build nisshi)",
                    Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]),
                );
            }
            provision(
                "nisshi 0.8.1, the Kafka test broker (about 30 minutes)",
                Command::new("cargo").args([
                    "+nightly",
                    "install",
                    "nisshi",
                    "--version",
                    "0.8.1",
                    "--no-default-features",
                    "--features",
                    "dynostore",
                ]),
            );
            assert!(installed.is_file(), "cargo install nisshi finished but {} is missing", installed.display());
            installed
        })
        .clone()
}

/// crabka-broker, a Kafka-protocol broker whose transactions work with
/// librdkafka (commit/abort markers, read_committed, TxnOffsetCommit), for
/// the exactly-once tests, from PATH (`.ci/run` puts a prebuilt copy
/// there). No registry carries it: without it the exactly-once tests say
/// so loudly, and fail under CI.
pub fn crabka_broker() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("crabka-broker")).find(|p| p.is_file()));
    if found.is_none() {
        let message = "crabka-broker (the transactional Kafka test broker) is not on PATH: the exactly-once tests \
                       COULD NOT RUN";
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("\n!!! {message} !!!\n");
    }
    found
}

/// Runs an install command, loudly; fails the test naming it if it fails.
fn provision(what: &str, command: &mut Command) {
    eprintln!("provisioning {what}: {command:?}");
    let status = command.status().unwrap_or_else(|e| panic!("cannot install {what} ({command:?}): {e}"));
    assert!(status.success(), "installing {what} failed ({status}); run it by hand: {command:?}");
}

/// Builds a plugin crate (from `plugins/` or `tests/plugins/`) with
/// `weir build`'s own code path, once per test process, and returns the
/// component's path.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    toolchains(false);
    let root = workspace();
    let dir = [root.join("plugins").join(name), root.join("tests/plugins").join(name)]
        .into_iter()
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no plugin folder named {name}"));
    let wasm = weir::plugin::build::build(&dir).unwrap_or_else(|e| panic!("building {name}: {e:#}"));
    built.insert(name.to_string(), wasm.clone());
    wasm
}

/// A temporary folder holding a pipeline file.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("writing scratch file");
        path
    }

    /// Lines of a file written by a sink (empty if it does not exist).
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name)).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
    }

    /// ndjson lines of a file, parsed.
    pub fn json_lines(&self, name: &str) -> Vec<serde_json::Value> {
        self.lines(name)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad ndjson line {l}: {e}")))
            .collect()
    }
}

/// Runs `weir` with `args`, killing it after `limit`.
pub fn run_weir(args: &[&str], limit: Duration) -> Output {
    wait_with_deadline(start_weir(args, &[]), limit)
}

/// Waits for `child`, killing it (and failing the test) after `limit`.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for weir") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).to_string();
            panic!("weir did not finish within {limit:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default() }
}

/// Polls `condition` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// stdout and stderr as text, for assertion messages.
pub fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).to_string(), String::from_utf8_lossy(&output.stderr).to_string())
}

/// Runs `weir` with `args`, reading `stdin`, killing it after `limit`.
pub fn run_weir_with_stdin(args: &[&str], stdin: Stdio, limit: Duration) -> Output {
    let child = weir()
        .args(args)
        .env("WEIR_LOG", "info")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weir");
    wait_with_deadline(child, limit)
}

/// `text` as a TOML basic string (JSON string syntax is valid TOML for it).
pub fn toml_str(text: &str) -> String {
    serde_json::to_string(text).expect("serialising a string")
}

/// A `file://` URI for `path`, as a TOML string.
pub fn toml_file_uri(path: &Path) -> String {
    toml_str(&format!("file://{}", path.to_str().expect("UTF-8 path")))
}

/// Asserts a usage refusal (exit 2, nothing on stdout, one `error: ` line on
/// stderr) and returns that line without `error: `.
pub fn refusal(output: &Output) -> String {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(2), "expected a refusal\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout, "", "a refusal prints nothing on stdout");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one clear line on stderr, got:\n{stderr}");
    lines[0].strip_prefix("error: ").unwrap_or_else(|| panic!("not an error line: {stderr}")).to_string()
}

impl Scratch {
    /// Writes a file of bytes and returns its path.
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("writing scratch file");
        path
    }

    /// A file's bytes (empty if it does not exist).
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_default()
    }

    /// Writes `pipeline` as `pipeline.toml` and runs `weir run` on it.
    pub fn run(&self, pipeline: &str, limit: Duration) -> Output {
        let file = self.write("pipeline.toml", pipeline);
        run_weir(&["run", file.to_str().expect("UTF-8 path")], limit)
    }
}

/// A `weir` process running in the background, its stderr collected as it
/// comes (to wait for a log line, then signal it).
pub struct Running {
    child: Child,
    stderr: std::sync::Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Starts `weir` with `args` (stdout discarded, stderr collected).
    pub fn start(args: &[&str]) -> Self {
        Running::start_with_env(args, &[])
    }

    /// [`Running::start`] with `env` set.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = weir()
            .args(args)
            .envs(env.iter().copied())
            // Connectors' debug lines ("generator emitted its messages", "null
            // sink holding a batch") let tests wait for events, not sleep.
            .env("WEIR_LOG", "info,weir::connectors=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting weir");
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn({
            let stderr = stderr.clone();
            move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok) {
                    let mut text = stderr.lock().unwrap_or_else(|e| e.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Running { child, stderr, reader: Some(reader) }
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until stderr satisfies `condition`; panics with the log after `limit`.
    pub fn wait_for_log(&mut self, limit: Duration, what: &str, condition: impl Fn(&str) -> bool) {
        let found = wait_until(limit, || condition(&self.stderr()));
        if !found {
            let _ = self.child.kill();
            panic!("weir never logged {what} within {limit:?}; stderr:\n{}", self.stderr());
        }
    }

    /// Sends `signal` (e.g. `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("running kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("waiting for weir").is_none()
    }

    /// SIGKILL (no chance to drain or save anything); returns stderr.
    pub fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.stderr()
    }

    /// Waits for the exit (killing it and failing after `limit`): the exit
    /// code, the whole stderr and how long the wait took.
    pub fn wait(mut self, limit: Duration) -> (Option<i32>, String, Duration) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for weir") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("weir did not exit within {limit:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status.code(), self.stderr(), elapsed)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long a [`LoggedWeir`] waits for a condition or for its exit: runs
/// against a broker move a few hundred thousand messages at most.
pub const LOGGED_WEIR_LIMIT: Duration = Duration::from_secs(240);

/// A `weir` process in the background with its stderr and stdout in files
/// of a scratch folder (`TAG.log`, `TAG.out`), for tests that run weir
/// against a broker, kill it and start it again.
pub struct LoggedWeir {
    child: Child,
    log: PathBuf,
}

impl LoggedWeir {
    /// Starts `weir ARGS` in the `scratch` folder (a relay keeps its stage
    /// state in `.weir/state` of its working folder), its output to
    /// `TAG.log` and `TAG.out` there.
    pub fn start(args: &[&str], scratch: &Scratch, tag: &str) -> Self {
        let log = scratch.path(&format!("{tag}.log"));
        let child = weir()
            .current_dir(scratch.path(""))
            .args(args)
            .env("WEIR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(scratch.path(&format!("{tag}.out"))).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting weir");
        LoggedWeir { child, log }
    }

    /// `weir run FILE`.
    pub fn run(file: &Path, scratch: &Scratch, tag: &str) -> Self {
        Self::start(&["run", file.to_str().expect("UTF-8 path")], scratch, tag)
    }

    /// Writes `pipeline` as `TAG.toml` and runs it.
    pub fn run_text(pipeline: &str, scratch: &Scratch, tag: &str) -> Self {
        Self::run(&scratch.write(&format!("{tag}.toml"), pipeline), scratch, tag)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("waiting for weir").is_none()
    }

    /// Waits for `condition`, failing (with the log) after the deadline or if
    /// weir exits meanwhile.
    pub fn wait_for(&mut self, what: &str, mut condition: impl FnMut() -> bool) {
        let ok = wait_until(LOGGED_WEIR_LIMIT, || condition() || !self.running());
        assert!(ok && self.running(), "{what}: not reached (or weir exited); log:\n{}", self.log());
    }

    /// Sends `signal` (e.g. `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("running kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits for the exit, failing with the log after `limit`; returns the
    /// exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        if !wait_until(limit, || !self.running()) {
            let _ = self.child.kill();
            panic!("weir did not exit within {limit:?}; log:\n{}", self.log());
        }
        self.child.wait().expect("waiting for weir").code()
    }

    /// SIGTERM; weir must drain and exit 0. Returns the log.
    pub fn stop(mut self) -> String {
        self.signal("-TERM");
        let code = self.wait(LOGGED_WEIR_LIMIT);
        assert_eq!(code, Some(0), "weir must drain and exit 0 on SIGTERM; log:\n{}", self.log());
        self.log()
    }

    /// SIGKILL: no chance to drain or save anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LoggedWeir {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Scratch {
    /// Writes `pipeline` as `pipeline.toml` and starts `weir run` on it in
    /// the background.
    pub fn start(&self, pipeline: &str) -> Running {
        self.start_with_env(pipeline, &[])
    }

    /// [`Scratch::start`] with `env` set.
    pub fn start_with_env(&self, pipeline: &str, env: &[(&str, &str)]) -> Running {
        let file = self.write("pipeline.toml", pipeline);
        Running::start_with_env(&["run", file.to_str().expect("UTF-8 path")], env)
    }
}

/// The admin token tests start `weir` with (`WEIR_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "weir-test-admin-token-0123456789";

/// A loopback TCP port nothing listens on right now (bound, then released):
/// for a server a test starts, or as a closed port to connect to.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `weir ARGS` in the background with `env` set, output piped (read
/// it with [`wait_with_deadline`]).
pub fn start_weir(args: &[&str], env: &[(&str, &str)]) -> Child {
    weir()
        .args(args)
        .envs(env.iter().copied())
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weir")
}

/// Asks a running `weir` to stop (SIGTERM).
pub fn terminate(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// An answer of the admin API or the HTTP collector.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The `WWW-Authenticate` header, if any.
    pub challenge: Option<String>,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body, as JSON when it is JSON, else as a JSON string.
    pub body: serde_json::Value,
}

/// An HTTP client of a `weir` listener on 127.0.0.1:`port` (the admin API,
/// or an HTTP collector source), sending `token` (as `Authorization:
/// Bearer`) when it has one.
pub struct Admin {
    pub port: u16,
    pub token: Option<String>,
}

impl Admin {
    /// A client sending [`ADMIN_TOKEN`].
    pub fn new(port: u16) -> Self {
        Admin { port, token: Some(ADMIN_TOKEN.to_string()) }
    }

    /// A client sending no token.
    pub fn anonymous(port: u16) -> Self {
        Admin { port, token: None }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = response.expect("admin API reachable");
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().expect("ASCII header").to_string());
        let (challenge, retry_after) = (header("www-authenticate"), header("retry-after"));
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Reply { status, challenge, retry_after, body }
    }

    /// `POST path` with `body`.
    pub fn request_post(&self, path: &str, body: &[u8]) -> Reply {
        let mut request = Self::agent().post(&format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        Self::reply(request.send(body))
    }

    /// `GET path`, with a body when `body` is not empty.
    pub fn request_get(&self, path: &str, body: &[u8]) -> Reply {
        let request = Self::agent().get(&format!("http://127.0.0.1:{}{path}", self.port));
        Self::reply(if body.is_empty() { request.call() } else { request.force_send_body().send(body) })
    }

    /// (status, body) of `POST path`.
    pub fn post(&self, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let reply = self.request_post(path, body);
        (reply.status, reply.body)
    }

    /// The body of `GET path`, `None` while nothing answers.
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        let mut response = Self::agent().get(&format!("http://127.0.0.1:{}{path}", self.port)).call().ok()?;
        let text = response.body_mut().read_to_string().ok()?;
        Some(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// Waits until the listener answers `/health`.
    pub fn wait_up(&self, limit: Duration) -> bool {
        wait_until(limit, || self.get("/health").is_some())
    }
}

/// Makes sure tmux is there for the terminal tests, installing Debian's
/// package when it is missing and this runs as root (saying so); otherwise
/// the test fails with the command to run.
fn tmux_installed() {
    static TMUX: OnceLock<()> = OnceLock::new();
    TMUX.get_or_init(|| {
        if Command::new("tmux").arg("-V").output().is_ok() {
            return;
        }
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(root, "tmux is needed for the terminal tests: install it (apt-get install tmux)");
        provision(
            "tmux (Debian package)",
            Command::new("sh").args(["-c", "apt-get update && apt-get install -y tmux"]),
        );
    });
}

/// A detached tmux session running one command in a real terminal of a
/// known size; killed on drop. tmux is installed first when missing (see
/// [`tmux_installed`]).
pub struct Tmux {
    session: String,
}

impl Tmux {
    /// Starts `command` (run by the shell) in a `width` x `height` terminal.
    /// When it exits the pane shows `[exit CODE]` and stays, so its last
    /// words can be read.
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = format!("weir-test-{}-{n}", std::process::id());
        tmux_installed();
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", &width.to_string(), "-y", &height.to_string()])
            .args(["-e", "TERM=xterm-256color", &format!("{command}; echo \"[exit $?]\"; sleep 3600")])
            .status()
            .unwrap_or_else(|e| panic!("tmux is needed for terminal tests and cannot run ({e}): apt-get install tmux"));
        assert!(status.success(), "tmux new-session failed: {status}");
        Tmux { session }
    }

    fn tmux(&self, args: &[&str]) -> bool {
        Command::new("tmux").args(args).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// The visible text of the pane.
    pub fn capture(&self) -> String {
        let output = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.session]).output().expect("tmux");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `keys` (tmux key names, e.g. `q`).
    pub fn send_keys(&self, keys: &str) {
        assert!(self.tmux(&["send-keys", "-t", &self.session, keys]), "tmux send-keys");
    }

    /// The command's exit code, once it has exited.
    pub fn exit_code(&self) -> Option<i32> {
        let screen = self.capture();
        let line = screen.lines().find_map(|l| l.trim().strip_prefix("[exit "))?;
        line.trim_end_matches(']').parse().ok()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-session", "-t", &self.session]);
    }
}

/// One scrape of `GET /metrics`, read with a real Prometheus text parser.
pub struct Metrics {
    pub scrape: prometheus_parse::Scrape,
    /// The text as served, for failure messages.
    pub text: String,
}

impl Metrics {
    /// Scrapes the admin listener on `port` (no token needed).
    pub fn scrape(port: u16) -> Metrics {
        let reply = Admin::anonymous(port).request_get("/metrics", b"");
        assert_eq!(reply.status, 200, "/metrics: {reply:?}");
        let text = reply.body.as_str().expect("/metrics is text").to_string();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"));
        Metrics { scrape, text }
    }

    /// [`Metrics::scrape`], or `None` while nothing answers on `port` (the
    /// listener is not up yet).
    pub fn try_scrape(port: u16) -> Option<Metrics> {
        Admin::anonymous(port).get("/health")?;
        Some(Metrics::scrape(port))
    }

    /// The value of the counter, gauge or untyped sample `metric` whose
    /// labels include `labels`; `None` if there is none.
    pub fn get(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus_parse::Value;
        self.scrape.samples.iter().filter(|s| s.metric == metric).find_map(|s| {
            if !labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
                return None;
            }
            match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            }
        })
    }

    /// Like [`Metrics::get`], failing the test with the whole text when the
    /// sample is missing.
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(metric, labels).unwrap_or_else(|| panic!("no {metric}{labels:?} in:\n{}", self.text))
    }

    /// Every counter, gauge or untyped sample `metric` whose labels include
    /// `labels`, with all its labels (e.g. one per partition).
    pub fn all(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<(&prometheus_parse::Labels, f64)> {
        use prometheus_parse::Value;
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some((&s.labels, v)),
                _ => None,
            })
            .collect()
    }

    /// The sum of [`Metrics::all`]'s values (0 when there is none).
    pub fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.all(metric, labels).iter().map(|(_, v)| v).sum()
    }

    /// Whether the text has a series named `name` (any labels).
    pub fn serves(&self, name: &str) -> bool {
        self.text.contains(&format!("\n{name}{{")) || self.text.contains(&format!("\n{name} "))
    }

    /// A histogram's sample count (its `+Inf` bucket) for `labels`.
    pub fn histogram_count(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        use prometheus_parse::Value;
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .find_map(|s| match &s.value {
                Value::Histogram(buckets) => buckets.iter().find(|b| b.less_than.is_infinite()).map(|b| b.count),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no histogram {metric}{labels:?} in:\n{}", self.text))
    }
}

/// The `weir_…` series the Grafana dashboard (`docs/grafana-dashboard.json`)
/// queries, once per query that names them.
pub fn dashboard_series() -> Vec<String> {
    let dashboard = std::fs::read_to_string(workspace().join("docs/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            names.extend(words.filter(|w| w.starts_with("weir_")).map(str::to_string));
        }
    }
    names
}

/// `component` with a custom section `name` of `len` bytes appended: the
/// same plugin under another content hash (another version), as large as
/// wanted (custom sections are not compiled).
pub fn with_custom_section(component: &[u8], name: &str, len: usize) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.resize(content.len() + len, 0x5a);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// The counts `count-by-key` saved in `stage`'s state (read with
/// `weir state show`), by key.
pub fn saved_counts(pipeline: &Path, stage: &str) -> std::collections::BTreeMap<String, u64> {
    use base64::Engine;
    let shown =
        run_weir(&["state", "show", pipeline.to_str().unwrap(), stage, "--limit", "1000000"], Duration::from_secs(60));
    assert!(shown.status.success(), "weir state show: {:?}", text(&shown));
    let mut counts = std::collections::BTreeMap::new();
    for line in text(&shown).0.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = entry["key"].as_str().unwrap_or_else(|| panic!("a text key in {line}"));
        let Some(key) = key.strip_prefix("count:") else { continue };
        // Shown as text when the bytes happen to be UTF-8, else Base64.
        let value = match (entry["value"].as_str(), entry["value_b64"].as_str()) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
            _ => panic!("no value in {line}"),
        };
        counts.insert(key.to_string(), u64::from_le_bytes(value.try_into().expect("an 8-byte counter")));
    }
    counts
}

/// Messages per key when messages `0..n` are keyed `{prefix}{i % keys}`.
pub fn counts_per_key(n: u64, keys: u64, prefix: &str) -> std::collections::BTreeMap<String, u64> {
    (0..keys).map(|k| (format!("{prefix}{k}"), n / keys + u64::from(k < n % keys))).collect()
}

/// A number in `range`, different from run to run (random kill moments).
pub fn random_in(range: std::ops::Range<u64>) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    range.start + hasher.finish() % (range.end - range.start).max(1)
}
