//! `weir new NAME --lang rust|python|js`: scaffolds a plugin folder with a
//! working processor, a test fixture and a pipeline file, so that
//! `weir test`, `weir build` and `weir run` work on it the first time.
//!
//! The Rust template depends on this weir's Rust SDK by absolute path: the
//! copy embedded in the binary and unpacked to weir's cache (pinned to this
//! version of weir), or `WEIR_SDK_DIR/rust` when that is set.

use std::path::{Path, PathBuf};

use super::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, report_error};
use crate::plugin::build::sdk_dir;

/// The languages `weir new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate using `weir-sdk`.
    Rust,
    /// A Python module using `weir_sdk` (built with componentize-py).
    Python,
    /// A JavaScript ES module using `weir-sdk` (built with componentize-js).
    #[value(alias = "javascript")]
    Js,
}

pub(super) fn new(path: &Path, lang: Lang) -> i32 {
    let name = match plugin_name(path) {
        Ok(name) => name,
        Err(e) => {
            report_error(e);
            return EXIT_USAGE;
        }
    };
    if path.exists() && std::fs::read_dir(path).map(|mut d| d.next().is_some()).unwrap_or(true) {
        report_error(format!("{} already exists and is not an empty folder", path.display()));
        return EXIT_USAGE;
    }
    let files = match files(&name, lang) {
        Ok(files) => files,
        Err(e) => {
            report_error(e);
            return EXIT_USAGE;
        }
    };
    for (file, text) in &files {
        let target = path.join(file);
        let written =
            target.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&target, text));
        if let Err(e) = written {
            report_error(format!("cannot write {}: {e}", target.display()));
            return EXIT_RUNTIME;
        }
    }
    let shown = path.display();
    println!("created {} plugin `{name}` in {shown}", lang_name(lang));
    println!();
    println!("  weir test {shown} --input {shown}/fixtures/input.ndjson --expect {shown}/fixtures/expected.ndjson");
    println!("  weir build {shown}");
    println!("  weir run {shown}/pipeline.toml");
    EXIT_OK
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    }
}

/// The plugin's name: the folder's last component, which must be usable as
/// a crate / package name.
fn plugin_name(path: &Path) -> Result<String, String> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not a valid plugin name: use letters, digits, `-` and `_`, starting with a letter"
        ));
    }
    Ok(name)
}

/// The absolute path of the Rust SDK the template depends on.
fn rust_sdk() -> Result<PathBuf, String> {
    let sdk = sdk_dir().map_err(|e| format!("{e:#}"))?.join("rust");
    sdk.join("Cargo.toml").is_file().then(|| sdk.canonicalize().unwrap_or(sdk.clone())).ok_or_else(|| {
        format!("the weir Rust SDK is not at {} (set WEIR_SDK_DIR to the weir sdk/ folder)", sdk.display())
    })
}

const INPUT: &str = r#"{"key": "1", "value": {"name": "Ada"}}
{"key": "2", "value": {"other": true}}
{"key": "3", "value": "not json"}
{"key": "4", "value": {"name": "Grace"}, "headers": {"trace": "t-4"}}
"#;

const EXPECTED: &str = r#"{"key": "1", "value": {"name": "Ada", "greeting": "Hello, Ada!"}, "headers": {"greeted": "yes"}}
{"fail": "value is not a JSON object"}
{"key": "4", "value": {"name": "Grace", "greeting": "Hello, Grace!"}, "headers": {"greeted": "yes", "trace": "t-4"}}
"#;

fn pipeline(name: &str) -> String {
    format!(
        r#"# `weir run pipeline.toml`: the fixture through the plugin (built from this
# folder first) to stdout; failed messages go to the dead letter (stdout too,
# with a `weir-error` header).

[[source]]
name = "fixture"
uri = "file://fixtures/input.ndjson"
format = "ndjson"

[[stage]]
name = "{name}"
plugin = "."
on_error = "dead-letter"
config = {{ greeting = "Hello" }}

[[sink]]
name = "out"
uri = "stdio://"
format = "ndjson"

[dead_letter]
uri = "stdio://"
"#
    )
}

fn readme(name: &str, lang: Lang, build: &str) -> String {
    format!(
        r#"# {name}

A weir processor in {lang}. It greets JSON messages that have a `name`
field (config `greeting`, default `Hello`), drops the others, and fails
values that are not JSON objects.

```sh
weir test . --input fixtures/input.ndjson --expect fixtures/expected.ndjson
weir build .        # {build}
weir run pipeline.toml
```
"#,
        lang = lang_name(lang),
    )
}

fn files(name: &str, lang: Lang) -> Result<Vec<(&'static str, String)>, String> {
    let mut files = vec![
        ("fixtures/input.ndjson", INPUT.to_string()),
        ("fixtures/expected.ndjson", EXPECTED.to_string()),
        ("pipeline.toml", pipeline(name)),
    ];
    match lang {
        Lang::Rust => {
            let sdk = rust_sdk()?;
            let sdk = serde_json::to_string(&sdk.to_string_lossy()).expect("serialising a string");
            files.push((
                "Cargo.toml",
                format!(
                    r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The weir Rust SDK, by absolute path: the copy `weir` unpacked into its
# cache (pinned to that weir's version), or WEIR_SDK_DIR/rust.
weir-sdk = {{ path = {sdk} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# A workspace of its own, even inside another Cargo workspace.
[workspace]
"#
                ),
            ));
            files.push(("src/lib.rs", RUST_LIB.to_string()));
            files.push((".gitignore", "/target\n".to_string()));
            files.push(("README.md", readme(name, lang, "cargo build --release --target wasm32-wasip2")));
        }
        Lang::Python => {
            files.push(("app.py", PYTHON_APP.to_string()));
            files.push((".gitignore", "/target\n__pycache__/\n".to_string()));
            files.push(("README.md", readme(name, lang, "componentize-py, into target/weir/")));
        }
        Lang::Js => {
            files.push((
                "package.json",
                format!(
                    r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "type": "module",
  "main": "processor.js",
  "private": true
}}
"#
                ),
            ));
            files.push(("processor.js", JS_PROCESSOR.to_string()));
            files.push((".gitignore", "/target\nnode_modules/\n".to_string()));
            files.push(("README.md", readme(name, lang, "rolldown + componentize-js, into target/weir/")));
        }
    }
    Ok(files)
}

const RUST_LIB: &str = r#"//! A weir processor: greets JSON messages that have a `name` field.

use serde::{Deserialize, Serialize};
use weir_sdk::{Config, Message, Outcome, Processor};

struct Greeter {
    greeting: String,
}

#[derive(Deserialize)]
struct Person {
    name: Option<String>,
}

#[derive(Serialize)]
struct Greeted<'a> {
    name: &'a str,
    greeting: String,
}

impl Processor for Greeter {
    fn init(config: Config) -> Result<Self, String> {
        Ok(Greeter { greeting: config.get("greeting").unwrap_or("Hello").to_string() })
    }

    fn process(&mut self, message: Message) -> Outcome {
        let Ok(person) = message.json::<Person>() else {
            return Outcome::fail("value is not a JSON object");
        };
        let Some(name) = person.name else {
            return Outcome::drop();
        };
        let greeted = Greeted { name: &name, greeting: format!("{}, {name}!", self.greeting) };
        let output = message.into_output().with_header("greeted", "yes");
        output.with_json(&greeted).into()
    }
}

weir_sdk::export_processor!(Greeter);
"#;

const PYTHON_APP: &str = r#""""A weir processor: greets JSON messages that have a `name` field."""

from weir_sdk import Fail, Processor, export


class Greeter(Processor):
    def init(self, config):
        self.greeting = config.get("greeting", "Hello")

    def process(self, message):
        try:
            person = message.json()
        except ValueError:
            person = None
        if not isinstance(person, dict):
            return Fail("value is not a JSON object")
        name = person.get("name")
        if name is None:
            return None  # drop
        greeted = {"name": name, "greeting": f"{self.greeting}, {name}!"}
        return message.with_json(greeted).with_header("greeted", "yes")


WitWorld = export(Greeter)
"#;

const JS_PROCESSOR: &str = r#"// A weir processor: greets JSON messages that have a `name` field.

import { Fail, processor } from "weir-sdk";

class Greeter {
  init(config) {
    this.greeting = config.get("greeting") ?? "Hello";
  }

  process(message) {
    let person;
    try {
      person = message.json();
    } catch {
      return new Fail("value is not a JSON object");
    }
    if (person === null || typeof person !== "object" || Array.isArray(person)) {
      return new Fail("value is not a JSON object");
    }
    if (person.name === undefined || person.name === null) return null; // drop
    const greeted = { name: person.name, greeting: `${this.greeting}, ${person.name}!` };
    return message.withJson(greeted).withHeader("greeted", "yes");
  }
}

export const { init, process } = processor(Greeter);
"#;
