//! The packed ABI at the host: a plugin's malformed reply fails its batch
//! with a reason naming the plugin and the fault (and the stage's policy
//! applies) instead of crashing or confusing the host; plugins written
//! against either world without the weir SDK load and run.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use weir::plugin::{Encoding, Instance, InstanceError, Runtime, StageContext, World};
use weir::{Message, Outcome};

const LIMIT: Duration = Duration::from_secs(120);

fn batch(first: &str) -> Vec<Message> {
    [first, "b", "c"].iter().map(|v| Message::from_value(v.as_bytes()).with_key("k").with_header("h", "1")).collect()
}

#[test]
fn every_malformed_reply_is_refused_with_its_fault() {
    let runtime = Runtime::new().unwrap();
    let plugin = runtime.load_file(&plugin("bad-packed")).unwrap();
    assert_eq!((plugin.world(), plugin.encoding()), (World::Processor, Encoding::Packed));
    let version = plugin.version().to_string();
    let cases = [
        ("bad-magic", "not the magic \"WPKR\""),
        ("bad-version", "layout version 7"),
        ("short", "shorter than its 48-byte header"),
        ("empty", "packed reply of 0 bytes"),
        ("wrong-count", "4 outcomes for 3 input messages"),
        ("value-span", "output 0: value span"),
        ("route-index", "output 0: route 99 is not in the 1-entry route table"),
        ("route-utf8", "route 0: name is not valid UTF-8"),
        ("huge-count", "output table of 4294967295 entries"),
        ("emit-range", "outcome 0: emits 5 outputs from 0, past the 1 in the output table"),
        ("fail-utf8", "outcome 0: failure reason is not valid UTF-8"),
        ("keep-words", "outcome 1: `keep` with non-zero words"),
    ];
    let mut instance = Instance::new(&plugin, Arc::new(StageContext::new("bad", vec![]))).unwrap();
    for (mode, fault) in cases {
        match instance.process(&batch(mode)) {
            Err(InstanceError::Contract(reason)) => {
                assert!(reason.contains(fault), "{mode}: {reason}");
                assert!(
                    reason.contains(&format!("plugin {version} sent a malformed packed reply")),
                    "{mode}: {reason}"
                );
            }
            Err(other) => panic!("{mode}: expected a contract error, got {other}"),
            Ok(outcomes) => panic!("{mode}: a malformed reply was accepted ({} outcomes)", outcomes.len()),
        }
    }
    // The instance is still usable: a good reply goes through.
    let outcomes = instance.process(&batch("route:alerts")).unwrap();
    assert!(matches!(&outcomes[0], Outcome::Emit(o) if o.len() == 1 && o[0].route.as_deref() == Some("alerts")));
    assert!(matches!(outcomes[1..], [Outcome::Keep, Outcome::Keep]));
}

fn pipeline(scratch: &Scratch, plugin_name: &str, input: &str, on_error: &str) -> std::process::Output {
    scratch.write("in.txt", input);
    let text = format!(
        r#"
[[source]]
name = "in"
uri = "file://in.txt"
format = "raw"

[[stage]]
name = "suspect"
plugin = {plugin}
batch = {{ max_size = 3, max_wait_ms = 1000 }}
on_error = "{on_error}"

[[sink]]
name = "out"
uri = "file://out.txt"
format = "raw"

[dead_letter]
uri = "file://dead.ndjson"
"#,
        plugin = serde_json::to_string(plugin(plugin_name).to_str().unwrap()).unwrap(),
    );
    let file = scratch.write("pipeline.toml", &text);
    run_weir(&["run", file.to_str().unwrap()], LIMIT)
}

#[test]
fn a_malformed_reply_dead_letters_its_batch_and_the_run_goes_on() {
    let scratch = Scratch::new();
    let output = pipeline(&scratch, "bad-packed", "value-span\nb\nc\nok\ne\nf\n", "dead-letter");
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let dead = scratch.json_lines("dead.ndjson");
    let values: Vec<&str> = dead.iter().map(|l| l["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["value-span", "b", "c"], "the whole first batch, and only it");
    for line in &dead {
        let reason = line["headers"]["weir-error"].as_str().unwrap();
        assert!(reason.contains("sent a malformed packed reply: output 0: value span"), "{reason}");
        assert_eq!(line["headers"]["weir-stage"], "suspect");
    }
    // The second batch is kept whole.
    assert_eq!(scratch.lines("out.txt"), ["ok", "e", "f"]);
    assert!(stderr.contains("malformed packed reply"), "the fault is logged: {stderr}");
}

#[test]
fn a_malformed_reply_under_halt_stops_the_run_with_the_reason() {
    let scratch = Scratch::new();
    let output = pipeline(&scratch, "bad-packed", "bad-magic\nb\nc\n", "halt");
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sent a malformed packed reply") && stderr.contains("not the magic"), "{stderr}");
    assert!(scratch.lines("out.txt").is_empty());
}

#[test]
fn a_record_world_plugin_without_the_sdk_still_runs() {
    let runtime = Runtime::new().unwrap();
    let raw = runtime.load_file(&plugin("raw-record")).unwrap();
    assert_eq!((raw.world(), raw.encoding()), (World::Processor, Encoding::Records));
    let scratch = Scratch::new();
    let output = pipeline(&scratch, "raw-record", "alpha\nbeta\n", "halt");
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(scratch.lines("out.txt"), ["ALPHA", "BETA"]);
}

#[test]
fn weir_check_names_the_packed_and_record_worlds() {
    for (name, world) in
        [("bad-packed", "weir:processor/processor-packed@0.1.0"), ("raw-record", "weir:processor/processor@0.1.0")]
    {
        let output = run_weir(&["check", plugin(name).to_str().unwrap()], LIMIT);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert!(stdout.contains(&format!("world    {world}")), "{stdout}");
    }
    let output = run_weir(&["check", plugin("passthrough").to_str().unwrap()], LIMIT);
    assert!(text(&output).0.contains("processor-packed"), "the SDK builds the packed world by default");
}
