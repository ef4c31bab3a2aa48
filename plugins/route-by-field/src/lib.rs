//! Routes each JSON message to the sink route named by one of its fields.
//!
//! Config:
//! - `field` (required): the field holding the route name; a dotted path such
//!   as `meta.kind` (a segment that is a number also indexes into an array).
//!   A string field is used as is; a number or boolean by its JSON text.
//! - `routes` (optional): comma-separated allow-list of route names. A value
//!   not in the list goes to `default_route` if set, else to the default next
//!   hop (no route).
//! - `default_route` (optional, only with `routes`): see `routes`.
//! - `require` (optional, `"true"` | `"false"`, default `"false"`): a message
//!   without the field (or with a null, empty, object or array field) fails
//!   instead of going to the default next hop.
//!
//! A value that is not JSON fails the message.

use serde_json::Value;
use weir_sdk::{Config, Message, Outcome, Processor};

struct RouteByField {
    field: String,
    path: Vec<String>,
    routes: Option<Vec<String>>,
    default_route: Option<String>,
    require: bool,
}

impl Processor for RouteByField {
    fn init(config: Config) -> Result<Self, String> {
        let field = config.require("field")?;
        let routes = config.get("routes").map(|list| {
            list.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect::<Vec<_>>()
        });
        if routes.as_ref().is_some_and(Vec::is_empty) {
            return Err("config key `routes` lists no route".into());
        }
        let default_route = config.get("default_route").map(str::to_owned);
        if default_route.is_some() && routes.is_none() {
            return Err("config key `default_route` only applies together with `routes`".into());
        }
        if default_route.as_deref() == Some("") {
            return Err("config key `default_route` is empty".into());
        }
        Ok(RouteByField {
            field: field.to_owned(),
            path: parse_path(field).map_err(|e| format!("config key `field`: {e}"))?,
            routes,
            default_route,
            require: config.parse_or("require", false)?,
        })
    }

    fn process(&mut self, message: Message) -> Outcome {
        let json: Value = match message.json() {
            Ok(json) => json,
            Err(e) => return Outcome::fail(e),
        };
        let name = match lookup(&json, &self.path) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(value @ (Value::Number(_) | Value::Bool(_))) => Some(value.to_string()),
            _ => None,
        };
        let Some(name) = name else {
            return if self.require {
                Outcome::fail(format!("field `{}` is missing or not a route name", self.field))
            } else {
                Outcome::one(message)
            };
        };
        let route = match &self.routes {
            Some(allowed) if !allowed.contains(&name) => self.default_route.clone(),
            _ => Some(name),
        };
        let output = message.into_output();
        Outcome::one(match route {
            Some(route) => output.with_route(route),
            None => output,
        })
    }
}

/// Splits a dotted path, refusing empty paths and empty segments.
fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segments.iter().any(String::is_empty) {
        return Err(format!("{path:?} is not a valid dotted path"));
    }
    Ok(segments)
}

/// Follows a dotted path through objects (by name) and arrays (by index).
fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

weir_sdk::export_processor!(RouteByField);

#[cfg(test)]
mod tests {
    use super::*;

    fn route(pairs: &[(&str, &str)], value: &str) -> Result<Option<String>, String> {
        let config = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut router = RouteByField::init(Config::new(config))?;
        let message = Message { key: None, value: value.into(), headers: vec![], timestamp_ms: None, origin: None };
        match router.process(message) {
            Outcome::Emit(mut outputs) if outputs.len() == 1 => Ok(outputs.remove(0).route),
            Outcome::Emit(outputs) => panic!("{} outputs", outputs.len()),
            Outcome::Fail(reason) => Err(reason),
        }
    }

    #[test]
    fn routes_by_field() {
        let some = |s: &str| Ok(Some(s.to_string()));
        assert_eq!(route(&[("field", "m.kind")], r#"{"m":{"kind":"alerts"}}"#), some("alerts"));
        assert_eq!(route(&[("field", "kind")], r#"{"kind":5}"#), some("5"));
        assert_eq!(route(&[("field", "kind")], r#"{}"#), Ok(None));
        assert!(route(&[("field", "kind"), ("require", "true")], r#"{}"#).unwrap_err().contains("`kind`"));
        let listed = [("field", "kind"), ("routes", "a, b")];
        assert_eq!(route(&listed, r#"{"kind":"b"}"#), some("b"));
        assert_eq!(route(&listed, r#"{"kind":"c"}"#), Ok(None));
        let fallback = [("field", "kind"), ("routes", "a,b"), ("default_route", "other")];
        assert_eq!(route(&fallback, r#"{"kind":"c"}"#), some("other"));
        assert!(route(&[("field", "kind")], "not json").unwrap_err().contains("JSON"));
    }

    #[test]
    fn refuses_bad_config() {
        assert!(route(&[], "{}").unwrap_err().contains("`field`"));
        assert!(route(&[("field", "k"), ("default_route", "x")], "{}").unwrap_err().contains("`default_route`"));
        assert!(route(&[("field", "k"), ("routes", " , ")], "{}").unwrap_err().contains("`routes`"));
        assert!(route(&[("field", "k"), ("require", "1")], "{}").unwrap_err().contains("`require`"));
    }
}
