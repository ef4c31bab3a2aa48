//! The packed layout round-trips, and the decoders refuse every malformed
//! buffer with a reason instead of panicking or reading out of bounds.
//!
//! The property tests double as the decoder's fuzz target: they run in every
//! `cargo test` with proptest's default case count, and longer with
//! `PROPTEST_CASES=100000 cargo test -p weir-packed`.

use proptest::prelude::*;
use weir_packed::{Batch, BatchWriter, OriginRef, OutcomeView, Reply, ReplyWriter};

/// An origin's name, partition, offset and id.
type OriginParts = (String, Option<u32>, Option<u64>, Option<String>);

#[derive(Debug, Clone, PartialEq)]
struct Msg {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: Option<u64>,
    origin: Option<OriginParts>,
}

#[derive(Debug, Clone, PartialEq)]
struct Out {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: Option<u64>,
    route: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Outc {
    Emit(Vec<Out>),
    Keep,
    Fail(String),
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    // Few distinct names, so duplicates are common.
    prop::collection::vec((prop::sample::select(vec!["a", "b", "trace-id", "ü"]).prop_map(String::from), bytes()), 0..4)
}

fn message() -> impl Strategy<Value = Msg> {
    let origin = (".{0,12}", any::<Option<u32>>(), any::<Option<u64>>(), prop::option::of(".{0,12}"));
    (prop::option::of(bytes()), bytes(), headers(), any::<Option<u64>>(), prop::option::of(origin))
        .prop_map(|(key, value, headers, timestamp_ms, origin)| Msg { key, value, headers, timestamp_ms, origin })
}

fn output() -> impl Strategy<Value = Out> {
    let route = prop::option::of(prop::sample::select(vec!["alerts", "audit", ""]).prop_map(String::from));
    (prop::option::of(bytes()), bytes(), headers(), any::<Option<u64>>(), route)
        .prop_map(|(key, value, headers, timestamp_ms, route)| Out { key, value, headers, timestamp_ms, route })
}

fn outcome() -> impl Strategy<Value = Outc> {
    prop_oneof![
        prop::collection::vec(output(), 0..4).prop_map(Outc::Emit),
        Just(Outc::Keep),
        ".{0,20}".prop_map(Outc::Fail),
    ]
}

fn encode_batch(messages: &[Msg]) -> Vec<u8> {
    let mut buf = Vec::new();
    let headers = messages.iter().map(|m| m.headers.len()).sum();
    let mut writer = BatchWriter::new(&mut buf, messages.len(), headers).unwrap();
    for m in messages {
        let origin = m.origin.as_ref().map(|(name, partition, offset, id)| OriginRef {
            name,
            partition: *partition,
            offset: *offset,
            id: id.as_deref(),
        });
        let hs = m.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
        writer.push(m.key.as_deref(), &m.value, hs, m.timestamp_ms, origin).unwrap();
    }
    writer.finish().unwrap();
    buf
}

fn decode_batch(buf: &[u8]) -> Vec<Msg> {
    let batch = Batch::parse(buf).expect("a batch we wrote parses");
    batch
        .iter()
        .map(|m| Msg {
            key: m.key().map(<[u8]>::to_vec),
            value: m.value().to_vec(),
            headers: m.headers().map(|(n, v)| (n.to_string(), v.to_vec())).collect(),
            timestamp_ms: m.timestamp_ms(),
            origin: m.origin().map(|o| (o.name.to_string(), o.partition, o.offset, o.id.map(str::to_string))),
        })
        .collect()
}

fn encode_reply(outcomes: &[Outc]) -> Vec<u8> {
    let mut writer = ReplyWriter::new();
    for outcome in outcomes {
        match outcome {
            Outc::Emit(outputs) => {
                for o in outputs {
                    let hs = o.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
                    writer.output(o.key.as_deref(), &o.value, hs, o.timestamp_ms, o.route.as_deref());
                }
                writer.emit();
            }
            Outc::Keep => writer.keep(),
            Outc::Fail(reason) => writer.fail(reason),
        }
    }
    writer.finish()
}

fn decode_reply(reply: &Reply<'_>) -> Vec<Outc> {
    let routes = reply.routes();
    reply
        .outcomes()
        .map(|o| match o {
            OutcomeView::Emit(outputs) => Outc::Emit(
                outputs
                    .map(|o| Out {
                        key: o.key().map(<[u8]>::to_vec),
                        value: o.value().to_vec(),
                        headers: o.headers().map(|(n, v)| (n.to_string(), v.to_vec())).collect(),
                        timestamp_ms: o.timestamp_ms(),
                        route: o.route().map(|r| routes[r].to_string()),
                    })
                    .collect(),
            ),
            OutcomeView::Keep => Outc::Keep,
            OutcomeView::Fail(reason) => Outc::Fail(reason.to_string()),
        })
        .collect()
}

/// Whatever a parse accepts must be fully readable without a panic.
fn read_everything(buf: &[u8], inputs: usize) {
    if let Ok(reply) = Reply::parse(buf, inputs, true) {
        let _ = decode_reply(&reply);
    }
    if let Ok(batch) = Batch::parse(buf) {
        let _ = decode_batch(buf);
        assert!(batch.len() <= buf.len());
    }
}

proptest! {
    #[test]
    fn batches_round_trip(messages in prop::collection::vec(message(), 0..20)) {
        let buf = encode_batch(&messages);
        prop_assert_eq!(buf.len() % 8, 0);
        prop_assert_eq!(decode_batch(&buf), messages);
    }

    #[test]
    fn replies_round_trip(outcomes in prop::collection::vec(outcome(), 0..20)) {
        let buf = encode_reply(&outcomes);
        let reply = Reply::parse(&buf, outcomes.len(), true).expect("a reply we wrote parses");
        prop_assert_eq!(decode_reply(&reply), outcomes);
    }

    #[test]
    fn routes_are_written_once(n in 1usize..50) {
        let outcomes: Vec<Outc> = (0..n)
            .map(|i| Outc::Emit(vec![Out { key: None, value: vec![], headers: vec![], timestamp_ms: None,
                route: Some(["alerts", "audit"][i % 2].to_string()) }]))
            .collect();
        let buf = encode_reply(&outcomes);
        let reply = Reply::parse(&buf, n, true).unwrap();
        prop_assert_eq!(reply.routes().len(), n.min(2));
    }

    /// The fuzz target: random bytes never panic a decoder.
    #[test]
    fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..512), inputs in 0usize..8) {
        read_everything(&buf, inputs);
    }

    /// The fuzz target, closer to the mark: valid replies with bytes
    /// overwritten are refused with a reason or still fully readable.
    #[test]
    fn corrupted_replies_never_panic(
        outcomes in prop::collection::vec(outcome(), 1..8),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut buf = encode_reply(&outcomes);
        for (at, byte) in edits {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        read_everything(&buf, outcomes.len());
    }

    /// Corrupted words (not just bytes): lengths and offsets near the limits.
    #[test]
    fn corrupted_words_never_panic(
        outcomes in prop::collection::vec(outcome(), 1..8),
        edits in prop::collection::vec((any::<prop::sample::Index>(),
            prop_oneof![Just(u32::MAX), Just(u32::MAX - 3), Just(0x8000_0000u32), any::<u32>(), 0u32..64]), 1..4),
    ) {
        let mut buf = encode_reply(&outcomes);
        let words = buf.len() / 4;
        for (at, value) in edits {
            let i = at.index(words) * 4;
            buf[i..i + 4].copy_from_slice(&value.to_le_bytes());
        }
        read_everything(&buf, outcomes.len());
    }
}

fn sample_reply() -> Vec<u8> {
    encode_reply(&[
        Outc::Keep,
        Outc::Emit(vec![Out {
            key: Some(b"k".to_vec()),
            value: b"v".to_vec(),
            headers: vec![("h".into(), b"1".to_vec())],
            timestamp_ms: Some(7),
            route: Some("alerts".into()),
        }]),
        Outc::Fail("nope".into()),
    ])
}

fn word_at(buf: &mut [u8], index: usize, value: u32) {
    buf[index * 4..index * 4 + 4].copy_from_slice(&value.to_le_bytes());
}

fn fault(buf: &[u8], inputs: usize) -> String {
    match Reply::parse(buf, inputs, true) {
        Ok(_) => panic!("accepted a malformed reply"),
        Err(fault) => fault.to_string(),
    }
}

#[test]
fn no_key_and_empty_key_differ() {
    let batch = encode_batch(&[
        Msg { key: None, value: vec![], headers: vec![], timestamp_ms: None, origin: None },
        Msg { key: Some(vec![]), value: vec![], headers: vec![], timestamp_ms: None, origin: None },
    ]);
    let parsed = Batch::parse(&batch).unwrap();
    assert_eq!(parsed.message(0).key(), None);
    assert_eq!(parsed.message(1).key(), Some(&b""[..]));
}

#[test]
fn malformed_replies_are_named() {
    let good = sample_reply();
    assert!(Reply::parse(&good, 3, true).is_ok());

    assert!(fault(&good[..20], 3).contains("shorter than its 48-byte header"));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(fault(&bad, 3).contains("not the magic"));
    let mut bad = good.clone();
    word_at(&mut bad, 1, 2);
    assert!(fault(&bad, 3).contains("layout version 2"));
    assert!(fault(&good, 4).contains("3 outcomes for 4 input messages"));
    let mut bad = good.clone();
    bad.extend([0; 8]);
    assert!(fault(&bad, 3).contains("says it is"));

    // Outcome 1's output: value span far out of range.
    let outputs_off = u32::from_le_bytes(good[28..32].try_into().unwrap()) as usize / 4;
    let mut bad = good.clone();
    word_at(&mut bad, outputs_off + 4, u32::MAX);
    assert!(fault(&bad, 3).contains("output 0: value span"), "{}", fault(&bad, 3));

    // A route index past the table.
    let mut bad = good.clone();
    word_at(&mut bad, outputs_off + 9, 5);
    assert!(fault(&bad, 3).contains("route 5 is not in the 1-entry route table"));

    // Invalid UTF-8 in the route name.
    let routes_off = u32::from_le_bytes(good[36..40].try_into().unwrap()) as usize / 4;
    let name_off = u32::from_le_bytes(good[routes_off * 4..routes_off * 4 + 4].try_into().unwrap()) as usize;
    let mut bad = good.clone();
    bad[name_off] = 0xff;
    assert!(fault(&bad, 3).contains("route 0: name is not valid UTF-8"));

    // An absurd count.
    let mut bad = good.clone();
    word_at(&mut bad, 3, u32::MAX);
    assert!(fault(&bad, 3).contains("output table"), "{}", fault(&bad, 3));

    // An unknown outcome kind.
    let outcomes_off = u32::from_le_bytes(good[24..28].try_into().unwrap()) as usize / 4;
    let mut bad = good.clone();
    word_at(&mut bad, outcomes_off, 9);
    assert!(fault(&bad, 3).contains("outcome 0: unknown kind 9"));

    // Overlapping emits: outcome 1 claims outputs from 1.
    let mut bad = good.clone();
    word_at(&mut bad, outcomes_off + 4 + 1, 1);
    assert!(fault(&bad, 3).contains("expected 0"), "{}", fault(&bad, 3));

    // `keep` in an aggregator reply.
    assert!(Reply::parse(&good, 3, false).err().unwrap().to_string().contains("`keep` is not allowed"));
}
