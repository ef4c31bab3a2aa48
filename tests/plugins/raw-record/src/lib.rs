//! Test crate: the `processor` record world implemented with wit-bindgen
//! alone, as a third-party author would. Upper-cases every value, keeps key,
//! headers and timestamp, and fails values that are not UTF-8.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "weir:processor/processor",
    generate_all,
});

use weir::processor::types::Output;

struct RawRecord;

impl Guest for RawRecord {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn process(batch: Vec<Message>) -> Vec<Outcome> {
        batch
            .into_iter()
            .map(|m| match String::from_utf8(m.value) {
                Ok(text) => Outcome::Emit(vec![Output {
                    key: m.key,
                    value: text.to_uppercase().into_bytes(),
                    headers: m.headers,
                    timestamp_ms: m.timestamp_ms,
                    route: None,
                }]),
                Err(_) => Outcome::Fail("value is not UTF-8".into()),
            })
            .collect()
    }
}

export!(RawRecord);
