//! Consumer lag of a Redis Streams source, per stream, from `XINFO GROUPS`:
//! the group's `lag` (entries not yet delivered to the group, Redis 7+) and
//! `pending` (delivered and not yet acknowledged). Both are the group's, so
//! every process of a group reports the same values.
//!
//! Redis leaves `lag` nil when it cannot tell (entries deleted from the
//! middle of the stream, or a server older than 7); then the entries after
//! the group's last delivered ID are counted, at most [`COUNT_CAP`].
//!
//! The poller has a connection of its own: the reader's is busy in blocking
//! reads.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Client, RedisError, Value};

use super::fields::{array, bytes};
use super::{RedisSourceSpec, connect};
use crate::connectors::lag::{Gauges, Poller, Reading};

/// Time between two rounds of `XINFO GROUPS`.
const INTERVAL: Duration = Duration::from_secs(1);

/// Longest a round's command may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Most entries counted when Redis does not know the lag (the count is then
/// a lower bound).
const COUNT_CAP: u64 = 100_000;

/// Entries per `XRANGE` page when counting.
const PAGE: u64 = 1000;

/// Starts polling the lag of `spec`'s group on each of its streams for
/// source `source`.
pub(super) fn spawn(client: Client, spec: Arc<RedisSourceSpec>, source: &str) -> Poller {
    let state = Arc::new(tokio::sync::Mutex::new((Gauges::new(source), None::<MultiplexedConnection>)));
    let source = source.to_string();
    Poller::start(INTERVAL, move |_stop| {
        let (client, spec, state, source) = (client.clone(), spec.clone(), state.clone(), source.clone());
        async move {
            let mut state = state.lock().await;
            let (gauges, conn) = &mut *state;
            let c = match conn {
                Some(c) => c,
                None => match connect(&client, TIMEOUT).await {
                    Ok(c) => conn.insert(c),
                    // The reader says when Redis is away.
                    Err(_) => return,
                },
            };
            match read(c, &spec).await {
                Ok(readings) => gauges.publish(&readings),
                Err(e) => {
                    tracing::debug!(source, "Redis lag look-up failed: {e}");
                    *conn = None;
                }
            }
        }
    })
}

/// A reading per stream that has the group.
async fn read(conn: &mut MultiplexedConnection, spec: &RedisSourceSpec) -> Result<Vec<Reading>, RedisError> {
    let mut readings = Vec::with_capacity(spec.streams.len());
    for stream in &spec.streams {
        let groups: Value = match ::redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await {
            Ok(groups) => groups,
            // The stream does not exist (yet): nothing to report.
            Err(e) if e.code() == Some("ERR") => continue,
            Err(e) => return Err(e),
        };
        let Some(group) = find_group(groups, &spec.group) else { continue };
        let lag = match group.lag {
            Some(lag) => lag,
            None => count_after(conn, stream, &group.last_delivered).await?,
        };
        readings.push(Reading { partition: stream.clone(), lag, pending: Some(group.pending), committed: None });
    }
    Ok(readings)
}

/// One group of an `XINFO GROUPS` reply.
#[derive(Debug, PartialEq)]
struct Group {
    pending: u64,
    last_delivered: String,
    /// `None` when Redis cannot tell (nil or missing).
    lag: Option<u64>,
}

/// The group named `name` in an `XINFO GROUPS` reply (RESP2 flat pairs or
/// RESP3 maps).
fn find_group(reply: Value, name: &str) -> Option<Group> {
    for group in array(reply).ok()? {
        let pairs: Vec<(Value, Value)> = match group {
            Value::Map(pairs) => pairs,
            other => {
                let mut flat = array(other).ok()?.into_iter();
                std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
            }
        };
        let (mut group, mut pending, mut last_delivered, mut lag) = (None, None, None, None);
        for (key, value) in pairs {
            match bytes(key).ok().as_deref() {
                Some(b"name") => group = bytes(value).ok(),
                Some(b"pending") => pending = number(value),
                Some(b"last-delivered-id") => last_delivered = bytes(value).ok(),
                Some(b"lag") => lag = number(value),
                _ => {}
            }
        }
        if group.as_deref() == Some(name.as_bytes())
            && let (Some(pending), Some(last)) = (pending, last_delivered)
        {
            return Some(Group { pending, last_delivered: String::from_utf8_lossy(&last).into_owned(), lag });
        }
    }
    None
}

/// A non-negative integer reply (`None` for nil).
fn number(value: Value) -> Option<u64> {
    match value {
        Value::Int(i) => u64::try_from(i).ok(),
        Value::Nil => None,
        other => std::str::from_utf8(&bytes(other).ok()?).ok()?.parse().ok(),
    }
}

/// Entries of `stream` after `last` (exclusive), counted page by page up to
/// [`COUNT_CAP`].
async fn count_after(conn: &mut MultiplexedConnection, stream: &str, last: &str) -> Result<u64, RedisError> {
    let mut count = 0;
    let mut from = format!("({last}");
    while count < COUNT_CAP {
        let page: Value =
            ::redis::cmd("XRANGE").arg(stream).arg(&from).arg("+").arg("COUNT").arg(PAGE).query_async(conn).await?;
        let entries = array(page).unwrap_or_default();
        let Some(Value::Array(last)) = entries.last() else { break };
        let Some(id) = last.first().cloned().and_then(|id| bytes(id).ok()) else { break };
        count += entries.len() as u64;
        if (entries.len() as u64) < PAGE {
            break;
        }
        from = format!("({}", String::from_utf8_lossy(&id));
    }
    Ok(count.min(COUNT_CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_group_is_found_in_resp2_and_resp3_replies() {
        let group = |name: &str, lag: Value| {
            vec![
                (text("name"), text(name)),
                (text("consumers"), Value::Int(1)),
                (text("pending"), Value::Int(7)),
                (text("last-delivered-id"), text("5-0")),
                (text("entries-read"), Value::Int(5)),
                (text("lag"), lag),
            ]
        };
        let flat = |pairs: Vec<(Value, Value)>| Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect());
        let resp2 = Value::Array(vec![flat(group("other", Value::Int(1))), flat(group("g", Value::Int(3)))]);
        assert_eq!(
            find_group(resp2, "g"),
            Some(Group { pending: 7, last_delivered: "5-0".into(), lag: Some(3) })
        );
        let resp3 = Value::Array(vec![Value::Map(group("g", Value::Nil))]);
        assert_eq!(find_group(resp3, "g"), Some(Group { pending: 7, last_delivered: "5-0".into(), lag: None }));
        assert_eq!(find_group(Value::Array(vec![]), "g"), None);
    }
}
