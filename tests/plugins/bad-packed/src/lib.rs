//! Test crate: a `processor-packed` plugin written against the WIT directly
//! (no weir SDK). It keeps every message, except that the first message's
//! value can ask for a malformed reply, to check that the host refuses each
//! fault with a reason and applies the stage's policy:
//! `bad-magic`, `bad-version`, `short`, `wrong-count`, `value-span`,
//! `route-index`, `route-utf8`, `huge-count`, `emit-range`, `fail-utf8`,
//! `keep-words`, `empty`. `route:NAME` emits the input to route NAME; `ok`
//! keeps the whole batch.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "weir:processor/processor-packed",
    generate_all,
});

use weir_packed::{Batch, ReplyWriter};

struct BadPacked;

fn put(buf: &mut [u8], word: usize, value: u32) {
    buf[word * 4..word * 4 + 4].copy_from_slice(&value.to_le_bytes());
}

fn get(buf: &[u8], word: usize) -> u32 {
    u32::from_le_bytes(buf[word * 4..word * 4 + 4].try_into().unwrap())
}

impl Guest for BadPacked {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn process_packed(batch: Vec<u8>) -> Vec<u8> {
        let batch = Batch::parse(&batch).expect("the host's batch parses");
        let mode = batch.iter().next().map(|m| String::from_utf8_lossy(m.value()).to_string()).unwrap_or_default();
        let mut reply = ReplyWriter::new();
        for (i, m) in batch.iter().enumerate() {
            match mode.strip_prefix("route:") {
                Some(route) if i == 0 => {
                    reply.output(m.key(), m.value(), m.headers(), m.timestamp_ms(), Some(route));
                    reply.emit();
                }
                _ if i == 0 && mode != "ok" => {
                    // One output, so there is an output entry to corrupt.
                    reply.output(m.key(), m.value(), m.headers(), m.timestamp_ms(), Some("r"));
                    reply.emit();
                }
                _ => reply.keep(),
            }
        }
        let mut buf = reply.finish();
        let outputs = get(&buf, 7) as usize / 4;
        let outcomes = get(&buf, 6) as usize / 4;
        let routes = get(&buf, 9) as usize / 4;
        match mode.as_str() {
            "bad-magic" => buf[0] = b'X',
            "bad-version" => put(&mut buf, 1, 7),
            "short" => buf.truncate(20),
            "wrong-count" => {
                let count = get(&buf, 2);
                put(&mut buf, 2, count + 1);
            }
            "value-span" => put(&mut buf, outputs + 3, 0xffff_0000),
            "route-index" => put(&mut buf, outputs + 9, 99),
            "route-utf8" => {
                let name = get(&buf, routes) as usize;
                buf[name] = 0xff;
            }
            "huge-count" => put(&mut buf, 3, u32::MAX),
            "emit-range" => put(&mut buf, outcomes + 2, 5),
            "fail-utf8" => {
                // Outcome 0 fails with a reason pointing at a non-UTF-8 byte.
                let at = get(&buf, outputs + 3);
                put(&mut buf, outcomes, 2);
                put(&mut buf, outcomes + 1, at);
                put(&mut buf, outcomes + 2, 1);
                buf[at as usize] = 0xff;
            }
            "keep-words" => put(&mut buf, outcomes + 4 + 1, 1),
            "empty" => buf.clear(),
            _ => {}
        }
        buf
    }
}

export!(BadPacked);
