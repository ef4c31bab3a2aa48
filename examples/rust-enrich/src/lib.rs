//! The `enrich` example processor, in Rust (see examples/README.md).
//!
//! Parses each value as a JSON event, drops debug events, enriches the rest
//! with the stage's `region`, keys them by user, routes alerts, copies large
//! amounts to an audit route, and fails malformed input. The Python and
//! JavaScript versions beside it behave identically (tests/conformance.rs).

use serde::Serialize;
use serde_json::Value;
use weir_sdk::{Config, Message, Outcome, Processor};

struct Enrich {
    region: String,
    alert_level: String,
    audit_over: i64,
    user_field: String,
}

/// The enriched event, fields in this order (the other languages match it).
#[derive(Serialize)]
struct Enriched<'a> {
    user: &'a str,
    action: &'a str,
    level: &'a str,
    amount: i64,
    region: &'a str,
}

impl Processor for Enrich {
    fn init(config: Config) -> Result<Self, String> {
        Ok(Enrich {
            region: config.require("region")?.to_string(),
            alert_level: config.get("alert_level").unwrap_or("error").to_string(),
            audit_over: config.parse_or("audit_over", 1000)?,
            user_field: config.get("user_field").unwrap_or("user").to_string(),
        })
    }

    fn process(&mut self, message: Message) -> Outcome {
        let event = match message.json::<Value>() {
            Ok(Value::Object(event)) => event,
            _ => return Outcome::fail("malformed input: value is not a JSON object"),
        };
        let level = event.get("level").and_then(Value::as_str).unwrap_or("info");
        if level == "debug" {
            return Outcome::drop();
        }
        let user = match event.get(&self.user_field).and_then(Value::as_str) {
            Some(user) if !user.is_empty() => user,
            _ => return Outcome::fail(format!("missing field: {}", self.user_field)),
        };
        let amount = match event.get("amount") {
            None => 0,
            Some(amount) => match amount.as_i64() {
                Some(amount) => amount,
                None => return Outcome::fail("invalid field: amount"),
            },
        };
        let enriched = Enriched {
            user,
            action: event.get("action").and_then(Value::as_str).unwrap_or("unknown"),
            level,
            amount,
            region: &self.region,
        };
        let alert = level == self.alert_level;
        let audit = amount >= self.audit_over;
        let output = match message.into_output().with_key(user).with_json(&enriched) {
            Ok(output) => output.with_header("region", self.region.as_str()),
            Err(e) => return Outcome::fail(e),
        };
        let output = if alert { output.with_route("alerts") } else { output };
        if audit {
            let copy = output.clone().with_route("audit");
            return Outcome::many([output, copy]);
        }
        Outcome::one(output)
    }
}

weir_sdk::export_processor!(Enrich);
