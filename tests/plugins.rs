//! Each ready-made plugin on its own, through the host library: no
//! connectors, no pipeline, just `Instance::process` / `process_batch`.

mod support;

use std::sync::{Arc, OnceLock};

use support::*;
use weir::plugin::{Instance, InstanceError, Plugin, Runtime, StageContext, World};
use weir::{Header, Message, Origin, Outcome, Output};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new().expect("creating the runtime"))
}

fn load(name: &str) -> Plugin {
    runtime().load_file(&plugin(name)).unwrap_or_else(|e| panic!("loading {name}: {e:#}"))
}

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn instance(name: &str, pairs: &[(&str, &str)]) -> Instance {
    let plugin = load(name);
    match Instance::new(&plugin, Arc::new(StageContext::new(name, config(pairs)))) {
        Ok(instance) => instance,
        Err(e) => panic!("{name} refused {pairs:?}: {e}"),
    }
}

/// The init error of `name` with `pairs`, which must be refused.
fn init_error(name: &str, pairs: &[(&str, &str)]) -> String {
    let plugin = load(name);
    match Instance::new(&plugin, Arc::new(StageContext::new(name, config(pairs)))) {
        Ok(_) => panic!("{name} accepted {pairs:?}"),
        Err(InstanceError::Init(reason)) => reason,
        Err(other) => panic!("{name} with {pairs:?}: expected an init error, got {other:?}"),
    }
}

fn msg(value: &str) -> Message {
    Message::from_value(value.as_bytes().to_vec())
}

/// An output as comparable parts: (key, value, headers, timestamp, route).
type Parts = (Option<String>, String, Vec<(String, String)>, Option<u64>, Option<String>);

fn parts(output: &Output) -> Parts {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8");
    (
        output.key.as_deref().map(text),
        text(&output.value),
        output.headers.iter().map(|h| (h.name.clone(), text(&h.value))).collect(),
        output.timestamp_ms,
        output.route.clone(),
    )
}

fn part(key: Option<&str>, value: &str, headers: &[(&str, &str)], ts: Option<u64>, route: Option<&str>) -> Parts {
    (
        key.map(str::to_string),
        value.to_string(),
        headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        ts,
        route.map(str::to_string),
    )
}

/// What became of one input: its outputs' parts (`keep` is the input
/// itself, unchanged), or the failure reason.
fn resolved(outcome: &Outcome, input: &Message) -> Result<Vec<Parts>, String> {
    match outcome {
        Outcome::Emit(outputs) => Ok(outputs.iter().map(parts).collect()),
        Outcome::Keep => {
            let Message { key, value, headers, timestamp_ms, .. } = input.clone();
            Ok(vec![parts(&Output { key, value, headers, timestamp_ms, route: None })])
        }
        Outcome::Fail(reason) => Err(reason.clone()),
    }
}

fn process(instance: &mut Instance, batch: &[Message]) -> Vec<Result<Vec<Parts>, String>> {
    let outcomes = instance.process(batch).unwrap_or_else(|e| panic!("process trapped: {e}"));
    assert_eq!(outcomes.len(), batch.len(), "one outcome per input");
    outcomes.iter().zip(batch).map(|(outcome, input)| resolved(outcome, input)).collect()
}

/// The values a processor kept, one entry per input: `None` = filtered out.
fn kept(results: &[Result<Vec<Parts>, String>]) -> Vec<Option<String>> {
    results
        .iter()
        .map(|r| match r {
            Ok(outs) if outs.is_empty() => None,
            Ok(outs) if outs.len() == 1 => Some(outs[0].1.clone()),
            other => panic!("expected 0 or 1 output, got {other:?}"),
        })
        .collect()
}

// --------------------------------------------------------------- passthrough

#[test]
fn passthrough_emits_every_message_unchanged() {
    let plugin = load("passthrough");
    assert_eq!(plugin.world(), World::Processor);
    let mut instance = instance("passthrough", &[]);
    let full = Message {
        key: Some(b"k1".to_vec()),
        value: b"{\"a\":1}".to_vec(),
        headers: vec![Header { name: "h".into(), value: b"v".to_vec() }, Header { name: "h2".into(), value: vec![] }],
        timestamp_ms: Some(1_700_000_000_000),
        origin: Some(Origin { name: "topic".into(), partition: Some(3), offset: Some(99), id: None }),
    };
    let batch = vec![full, msg("plain"), msg("")];
    let results = process(&mut instance, &batch);
    assert_eq!(
        results,
        vec![
            Ok(vec![part(Some("k1"), "{\"a\":1}", &[("h", "v"), ("h2", "")], Some(1_700_000_000_000), None)]),
            Ok(vec![part(None, "plain", &[], None, None)]),
            Ok(vec![part(None, "", &[], None, None)]),
        ]
    );
    // An empty batch is fine too, and binary values pass untouched.
    assert!(instance.process(&[]).unwrap().is_empty());
    // An unchanged message comes back as `keep`: the host forwards its own
    // copy, nothing is copied back out of the instance.
    let binary = Message::from_value(vec![0xff, 0x00, 0x80]);
    let outcomes = instance.process(&[binary]).unwrap();
    assert!(matches!(outcomes[..], [Outcome::Keep]), "{outcomes:?}");
}

#[test]
fn passthrough_ignores_config() {
    let mut instance = instance("passthrough", &[("anything", "goes")]);
    assert_eq!(kept(&process(&mut instance, &[msg("x")])), vec![Some("x".to_string())]);
}

// --------------------------------------------------------------- json-filter

#[test]
fn json_filter_keeps_matching_messages() {
    let mut filter = instance("json-filter", &[("field", "status"), ("equals", "error")]);
    let batch = [
        msg(r#"{"status":"ok"}"#),
        msg(r#"{"status":"error","n":1}"#),
        msg(r#"{"other":"error"}"#),
        msg(r#"{"status":"error","n":2}"#),
        msg(r#"{"status":"errors"}"#),
    ];
    assert_eq!(
        kept(&process(&mut filter, &batch)),
        vec![None, Some(r#"{"status":"error","n":1}"#.into()), None, Some(r#"{"status":"error","n":2}"#.into()), None]
    );
}

#[test]
fn json_filter_compares_nested_numbers_and_negates() {
    let mut filter = instance("json-filter", &[("field", "a.b.1"), ("equals", "3")]);
    let batch = [msg(r#"{"a":{"b":[0,3]}}"#), msg(r#"{"a":{"b":[0,"3"]}}"#), msg(r#"{"a":{"b":[3]}}"#)];
    assert_eq!(
        kept(&process(&mut filter, &batch)),
        vec![Some(r#"{"a":{"b":[0,3]}}"#.into()), Some(r#"{"a":{"b":[0,"3"]}}"#.into()), None]
    );

    let mut negated = instance("json-filter", &[("field", "status"), ("equals", "ok"), ("negate", "true")]);
    let batch = [msg(r#"{"status":"ok"}"#), msg(r#"{"status":"warn"}"#), msg("{}")];
    assert_eq!(
        kept(&process(&mut negated, &batch)),
        vec![None, Some(r#"{"status":"warn"}"#.into()), Some("{}".into())]
    );
}

#[test]
fn json_filter_fails_a_value_that_is_not_json_and_keeps_the_rest_of_the_batch() {
    let mut filter = instance("json-filter", &[("field", "s"), ("equals", "x")]);
    let results = process(&mut filter, &[msg(r#"{"s":"x"}"#), msg("not json"), msg(r#"{"s":"x"}"#)]);
    assert!(matches!(&results[0], Ok(outs) if outs.len() == 1));
    let reason = results[1].clone().unwrap_err();
    assert!(reason.contains("JSON"), "{reason}");
    assert!(matches!(&results[2], Ok(outs) if outs.len() == 1));
}

#[test]
fn json_filter_refuses_bad_config_naming_the_key() {
    assert!(init_error("json-filter", &[("equals", "x")]).contains("`field`"));
    assert!(init_error("json-filter", &[("field", "a")]).contains("`equals`"));
    assert!(init_error("json-filter", &[("field", "a..b"), ("equals", "x")]).contains("`field`"));
    assert!(init_error("json-filter", &[("field", "a"), ("equals", "x"), ("negate", "yes")]).contains("`negate`"));
}

// -------------------------------------------------------------- json-extract

#[test]
fn json_extract_replaces_the_value_with_a_field() {
    let mut extract = instance("json-extract", &[("field", "user.name")]);
    let input = Message::from_value(br#"{"user":{"name":"ann","id":7}}"#.to_vec())
        .with_key(b"k".to_vec())
        .with_header("h", "v");
    let results = process(&mut extract, &[input, msg(r#"{"user":{"name":{"first":"bo"}}}"#)]);
    assert_eq!(
        results,
        vec![
            Ok(vec![part(Some("k"), "ann", &[("h", "v")], None, None)]),
            Ok(vec![part(None, r#"{"first":"bo"}"#, &[], None, None)]),
        ]
    );
}

#[test]
fn json_extract_can_set_the_key_instead() {
    let mut extract = instance("json-extract", &[("field", "id"), ("into", "key")]);
    let results = process(&mut extract, &[msg(r#"{"id":42,"x":1}"#), msg(r#"{"id":"abc"}"#)]);
    assert_eq!(
        results,
        vec![
            Ok(vec![part(Some("42"), r#"{"id":42,"x":1}"#, &[], None, None)]),
            Ok(vec![part(Some("abc"), r#"{"id":"abc"}"#, &[], None, None)]),
        ]
    );
}

#[test]
fn json_extract_fails_a_missing_field_or_non_json() {
    let mut extract = instance("json-extract", &[("field", "a.b")]);
    let results = process(&mut extract, &[msg(r#"{"a":{}}"#), msg("{"), msg(r#"{"a":{"b":1}}"#)]);
    assert!(results[0].clone().unwrap_err().contains("`a.b`"), "{:?}", results[0]);
    assert!(results[1].clone().unwrap_err().contains("JSON"), "{:?}", results[1]);
    assert_eq!(results[2], Ok(vec![part(None, "1", &[], None, None)]));
}

#[test]
fn json_extract_refuses_bad_config_naming_the_key() {
    assert!(init_error("json-extract", &[]).contains("`field`"));
    assert!(init_error("json-extract", &[("field", ".x")]).contains("`field`"));
    assert!(init_error("json-extract", &[("field", "x"), ("into", "header")]).contains("`into`"));
}

// --------------------------------------------------------------- split-lines

#[test]
fn split_lines_emits_one_message_per_line_with_its_index() {
    let mut split = instance("split-lines", &[]);
    let first = Message::from_value(b"a\nb\r\n\nc\n".to_vec()).with_key(b"k".to_vec()).with_header("src", "1");
    let first = Message { timestamp_ms: Some(5), ..first };
    let results = process(&mut split, &[first, msg("single"), msg(""), msg("\n\n")]);
    assert_eq!(
        results,
        vec![
            Ok(vec![
                part(Some("k"), "a", &[("src", "1"), ("weir-split-index", "0")], Some(5), None),
                part(Some("k"), "b", &[("src", "1"), ("weir-split-index", "1")], Some(5), None),
                part(Some("k"), "c", &[("src", "1"), ("weir-split-index", "2")], Some(5), None),
            ]),
            Ok(vec![part(None, "single", &[("weir-split-index", "0")], None, None)]),
            Ok(vec![]),
            Ok(vec![]),
        ]
    );
}

#[test]
fn split_lines_keeps_empty_lines_when_asked() {
    let mut split = instance("split-lines", &[("keep_empty", "true")]);
    let results = process(&mut split, &[msg("a\n\nb\n")]);
    assert_eq!(
        results,
        vec![Ok(vec![
            part(None, "a", &[("weir-split-index", "0")], None, None),
            part(None, "", &[("weir-split-index", "1")], None, None),
            part(None, "b", &[("weir-split-index", "2")], None, None),
        ])]
    );
}

#[test]
fn split_lines_refuses_a_bad_keep_empty() {
    assert!(init_error("split-lines", &[("keep_empty", "maybe")]).contains("`keep_empty`"));
}

// ------------------------------------------------------------ route-by-field

fn routes(results: &[Result<Vec<Parts>, String>]) -> Vec<Result<Option<String>, String>> {
    results
        .iter()
        .map(|r| match r {
            Ok(outs) if outs.len() == 1 => Ok(outs[0].4.clone()),
            Ok(outs) => panic!("{} outputs", outs.len()),
            Err(reason) => Err(reason.clone()),
        })
        .collect()
}

#[test]
fn route_by_field_routes_by_the_field_value() {
    let mut router = instance("route-by-field", &[("field", "meta.kind")]);
    let batch = [msg(r#"{"meta":{"kind":"alerts"}}"#), msg(r#"{"meta":{"kind":5}}"#), msg(r#"{"meta":{}}"#)];
    let results = process(&mut router, &batch);
    assert_eq!(routes(&results), vec![Ok(Some("alerts".into())), Ok(Some("5".into())), Ok(None)]);
    // Routing changes nothing else.
    assert_eq!(results[0], Ok(vec![part(None, r#"{"meta":{"kind":"alerts"}}"#, &[], None, Some("alerts"))]));
}

#[test]
fn route_by_field_allow_list_default_route_and_require() {
    let mut listed = instance("route-by-field", &[("field", "status"), ("routes", "error, warn")]);
    let batch = [msg(r#"{"status":"error"}"#), msg(r#"{"status":"warn"}"#), msg(r#"{"status":"ok"}"#)];
    assert_eq!(
        routes(&process(&mut listed, &batch)),
        vec![Ok(Some("error".into())), Ok(Some("warn".into())), Ok(None)]
    );

    let mut fallback =
        instance("route-by-field", &[("field", "status"), ("routes", "error"), ("default_route", "other")]);
    assert_eq!(
        routes(&process(&mut fallback, &[msg(r#"{"status":"error"}"#), msg(r#"{"status":"ok"}"#)])),
        vec![Ok(Some("error".into())), Ok(Some("other".into()))]
    );

    let mut strict = instance("route-by-field", &[("field", "status"), ("require", "true")]);
    let results = routes(&process(&mut strict, &[msg("{}"), msg("nope"), msg(r#"{"status":"x"}"#)]));
    assert!(results[0].clone().unwrap_err().contains("`status`"), "{:?}", results[0]);
    assert!(results[1].clone().unwrap_err().contains("JSON"), "{:?}", results[1]);
    assert_eq!(results[2], Ok(Some("x".into())));
}

#[test]
fn route_by_field_refuses_bad_config_naming_the_key() {
    assert!(init_error("route-by-field", &[]).contains("`field`"));
    assert!(init_error("route-by-field", &[("field", "k"), ("default_route", "x")]).contains("`default_route`"));
    assert!(init_error("route-by-field", &[("field", "k"), ("routes", " , ")]).contains("`routes`"));
    assert!(init_error("route-by-field", &[("field", "k"), ("require", "1")]).contains("`require`"));
}

// -------------------------------------------------------------- count-by-key

fn keyed(key: Option<&str>) -> Message {
    let m = msg("{}");
    match key {
        Some(k) => m.with_key(k.as_bytes().to_vec()),
        None => m,
    }
}

/// (key, value as JSON) of each output of an aggregator batch.
fn aggregate(instance: &mut Instance, batch: &[Message]) -> Vec<(String, serde_json::Value)> {
    let outputs = instance
        .process_batch(None, batch)
        .unwrap_or_else(|e| panic!("process_batch trapped: {e}"))
        .unwrap_or_else(|e| panic!("process_batch failed: {e}"));
    outputs
        .iter()
        .map(|o| {
            assert_eq!(o.route, None);
            let (key, value, ..) = parts(o);
            let json = serde_json::from_str(&value).unwrap_or_else(|e| panic!("{value} is not JSON: {e}"));
            (key.expect("count-by-key outputs carry the key"), json)
        })
        .collect()
}

fn count(key: &str, n: u64) -> (String, serde_json::Value) {
    (key.to_string(), serde_json::json!({ "key": key, "count": n }))
}

#[test]
fn count_by_key_counts_per_key_in_first_seen_order() {
    let plugin = load("count-by-key");
    assert_eq!(plugin.world(), World::Aggregator);
    let mut counter = instance("count-by-key", &[]);
    let batch = [keyed(Some("b")), keyed(None), keyed(Some("a")), keyed(Some("b")), keyed(None), keyed(Some("b"))];
    assert_eq!(aggregate(&mut counter, &batch), vec![count("b", 3), count("<none>", 2), count("a", 1)]);
    // The totals run on across batches.
    assert_eq!(aggregate(&mut counter, &[keyed(Some("a")), keyed(Some("c"))]), vec![count("a", 2), count("c", 1)]);
    assert_eq!(aggregate(&mut counter, &[]), vec![]);
}

#[test]
fn count_by_key_uses_the_configured_null_key() {
    let mut counter = instance("count-by-key", &[("null_key", "-")]);
    assert_eq!(aggregate(&mut counter, &[keyed(None), keyed(None)]), vec![count("-", 2)]);
}

#[test]
fn count_by_key_instances_of_one_stage_share_its_state() {
    let plugin = load("count-by-key");
    let stage = Arc::new(StageContext::new("counts", vec![]));
    let mut first = Instance::new(&plugin, stage.clone()).expect("first instance");
    let mut second = Instance::new(&plugin, stage.clone()).expect("second instance");
    assert_eq!(aggregate(&mut first, &[keyed(Some("k")), keyed(Some("k"))]), vec![count("k", 2)]);
    assert_eq!(aggregate(&mut second, &[keyed(Some("k"))]), vec![count("k", 3)]);
    assert_eq!(aggregate(&mut first, &[keyed(Some("k"))]), vec![count("k", 4)]);
    // The state is the stage's: a new instance (as after a trap or a swap) continues too.
    drop(first);
    let mut third = Instance::new(&plugin, stage.clone()).expect("third instance");
    assert_eq!(aggregate(&mut third, &[keyed(Some("k"))]), vec![count("k", 5)]);
    // It is kept as `count:` + key, a little-endian u64.
    assert_eq!(stage.state.get(b"count:k"), Some(5u64.to_le_bytes().to_vec()));

    // Another stage has its own state.
    let mut other = Instance::new(&plugin, Arc::new(StageContext::new("counts", vec![]))).expect("other stage");
    assert_eq!(aggregate(&mut other, &[keyed(Some("k"))]), vec![count("k", 1)]);
}

// ------------------------------------------------------------- wrong world

#[test]
fn a_processor_refuses_process_batch() {
    let mut processor = instance("passthrough", &[]);
    match processor.process_batch(None, &[msg("x")]) {
        Err(InstanceError::WrongWorld(reason)) => assert!(reason.contains("processor"), "{reason}"),
        Err(other) => panic!("expected WrongWorld, got {other:?}"),
        Ok(result) => panic!("a processor ran process_batch: {result:?}"),
    }
    // The instance is still usable afterwards.
    assert_eq!(kept(&process(&mut processor, &[msg("y")])), vec![Some("y".to_string())]);
}

#[test]
fn an_aggregator_refuses_process() {
    let mut aggregator = instance("count-by-key", &[]);
    match aggregator.process(&[msg("x")]) {
        Err(InstanceError::WrongWorld(reason)) => assert!(reason.contains("aggregator"), "{reason}"),
        Err(other) => panic!("expected WrongWorld, got {other:?}"),
        Ok(outcomes) => panic!("an aggregator ran process: {} outcomes", outcomes.len()),
    }
    assert_eq!(aggregate(&mut aggregator, &[keyed(Some("k"))]), vec![count("k", 1)]);
}
