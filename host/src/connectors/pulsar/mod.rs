//! `pulsar://`: Apache Pulsar source and sink on the `pulsar` crate
//! (pulsar-rs, pure Rust, tokio).
//!
//! # Source
//! `pulsar://host:port/tenant/namespace/topic?subscription=S&type=shared&start=earliest`
//!
//! | parameter / key | default | meaning |
//! |---|---|---|
//! | `subscription` | `weir-SOURCE` | the subscription (`SOURCE` = the source's name, as Kafka's group) |
//! | `type` | `shared` | `exclusive`, `failover`, `shared` or `key_shared` |
//! | `start` | `earliest` | where a *new* subscription starts: `earliest` or `latest`; an existing one keeps its position |
//! | `consumer` | `weir-SOURCE` | the consumer name the broker shows |
//! | `topic` | from the path | a full topic name, `persistent://t/ns/topic` or `non-persistent://t/ns/topic`, instead of the path |
//!
//! Topics in the path are persistent. A partitioned topic is read on all its
//! partitions. Batches never mix partitions, so a partition's order (and on
//! `key_shared` a key's order) is kept into the pipeline.
//!
//! Acknowledgement: a message is acknowledged only once every output derived
//! from it was written, dead-lettered or filtered. `shared` and `key_shared`
//! acknowledge each message individually; `exclusive` and `failover`, where
//! the broker delivers in order, acknowledge cumulatively up to the last
//! finished message. A message that came in a producer batch (one broker
//! entry holding several messages) is acknowledged when every message of
//! the entry is finished: a broker acknowledges whole entries, so acking one
//! message early would drop its unfinished neighbours on a crash.
//!
//! Each message carries its key (the partition key, Base64-decoded when the
//! producer marked it binary), its properties as headers (in the order they
//! were sent), its event time as the timestamp (a message without one has
//! none: the publish time is not substituted, so weir → Pulsar → weir
//! round-trips exactly) and its origin: the topic (the partition's topic for
//! a partitioned topic, with the partition number) and the message id as
//! `ledger:entry:partition[:batch_index]`, as Pulsar's clients print it.
//!
//! # Sink
//! `pulsar://host:port/tenant/namespace/topic` (or the `topic` key): a
//! producer with batching (up to 1000 messages per broker entry; each
//! write flushes its batch). A write returns when the broker has acknowledged every
//! message of the batch; any failure fails the write and the engine retries
//! it (at-least-once). Key, headers (as properties) and timestamp (as event
//! time) are carried; a key that is not UTF-8 is sent Base64-encoded with
//! Pulsar's binary-key flag. Pulsar properties are UTF-8 strings with unique
//! names, so a message with a header value that is not UTF-8 or a header
//! name given twice cannot be written as it is: its batch goes to the dead
//! letter, naming the message and the header.
//!
//! With stage state, acknowledgements wait for the checkpoint that covers
//! them, and the checkpoint records what they finished, so that a restart
//! applies nothing twice to state (see `positions`).
//!
//! # Backlog
//! With `/metrics` served, the source reports its subscription's backlog and
//! its unacknowledged messages (see `backlog`).
//!
//! # Reconnecting
//! When the broker goes away the source and the sink reconnect with backoff
//! (100 ms doubling to 5 s). Messages in flight from the old connection are
//! delivered again by the broker (duplicates, never loss).

mod acks;
mod backlog;
mod positions;
mod sink;
mod source;

use std::time::Duration;

pub use sink::PulsarSink;
pub use source::PulsarSource;

use super::{Connector, Settings, Sink, SinkSpec, Source, SourceSpec, SpecError, broker};

/// The `pulsar://` connector.
pub const CONNECTOR: Connector = Connector {
    schemes: &["pulsar"],
    source: Some(|args| Ok(Box::new(PulsarSourceSpec::parse(&mut args.settings, args.name, args.batch)?))),
    sink: Some(|args| Ok(Box::new(PulsarSinkSpec::parse(&mut args.settings)?))),
};

impl SourceSpec for PulsarSourceSpec {
    fn open(&self) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(PulsarSource::new(self.clone())))
    }
}

#[async_trait::async_trait]
impl SinkSpec for PulsarSinkSpec {
    async fn open(&self) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(PulsarSink::new(self.clone())))
    }
}

/// Where a new subscription starts (Pulsar's initial position).
pub type Start = broker::Start<std::convert::Infallible>;

/// A subscription type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionType {
    /// One consumer only.
    Exclusive,
    /// One active consumer, others on standby.
    Failover,
    /// Messages spread over every consumer.
    Shared,
    /// Messages spread over every consumer, one key always to the same one.
    KeyShared,
}

impl SubscriptionType {
    fn parse(text: &str) -> Result<Self, SpecError> {
        match text {
            "exclusive" => Ok(SubscriptionType::Exclusive),
            "failover" => Ok(SubscriptionType::Failover),
            "shared" => Ok(SubscriptionType::Shared),
            "key_shared" => Ok(SubscriptionType::KeyShared),
            other => Err(format!("type `{other}`: expected exclusive, failover, shared or key_shared").into()),
        }
    }

    /// Whether the broker delivers in order to one consumer, so a
    /// cumulative acknowledgement is allowed.
    pub fn cumulative(self) -> bool {
        matches!(self, SubscriptionType::Exclusive | SubscriptionType::Failover)
    }

    fn sub_type(self) -> pulsar::SubType {
        match self {
            SubscriptionType::Exclusive => pulsar::SubType::Exclusive,
            SubscriptionType::Failover => pulsar::SubType::Failover,
            SubscriptionType::Shared => pulsar::SubType::Shared,
            SubscriptionType::KeyShared => pulsar::SubType::KeyShared,
        }
    }
}

/// A parsed `pulsar://` source.
#[derive(Debug, Clone)]
pub struct PulsarSourceSpec {
    /// `pulsar://host:port`.
    pub url: String,
    /// The full topic name.
    pub topic: String,
    /// The subscription.
    pub subscription: String,
    /// Its type.
    pub kind: SubscriptionType,
    /// Where a new subscription starts.
    pub start: Start,
    /// The consumer name.
    pub consumer: String,
    /// Most messages per batch.
    pub batch: usize,
}

impl PulsarSourceSpec {
    /// Parses what follows `pulsar://` with the source's keys; `source` is
    /// the source's name (default subscription and consumer names).
    pub fn parse(settings: &mut Settings, source: &str, batch: usize) -> Result<Self, SpecError> {
        let (url, topic) = split(settings)?;
        let subscription = broker::take_group(settings, "subscription", source)?;
        let kind = match settings.take("type") {
            None => SubscriptionType::Shared,
            Some(text) => SubscriptionType::parse(&text)?,
        };
        let start = match settings.take("start").as_deref() {
            None | Some("earliest") => Start::Earliest,
            Some("latest") => Start::Latest,
            Some(other) => return Err(format!("start `{other}`: expected earliest or latest").into()),
        };
        let consumer = broker::take_consumer(settings)?.unwrap_or_else(|| format!("weir-{source}"));
        if batch == 0 {
            return Err("batch_size must be at least 1".into());
        }
        Ok(PulsarSourceSpec { url, topic, subscription, kind, start, consumer, batch })
    }
}

/// A parsed `pulsar://` sink.
#[derive(Debug, Clone)]
pub struct PulsarSinkSpec {
    /// `pulsar://host:port`.
    pub url: String,
    /// The full topic name.
    pub topic: String,
}

/// Most messages the producer puts in one broker entry.
pub const PRODUCER_BATCH: u32 = 1000;

impl PulsarSinkSpec {
    /// Parses what follows `pulsar://` with the sink's keys.
    pub fn parse(settings: &mut Settings) -> Result<Self, SpecError> {
        let (url, topic) = split(settings)?;
        Ok(PulsarSinkSpec { url, topic })
    }
}

const EXAMPLE: &str = "e.g. pulsar://127.0.0.1:6650/public/default/orders";

/// `host:port/tenant/namespace/topic` (or `host:port` and the `topic` key)
/// → the service URL and the full topic name.
fn split(settings: &mut Settings) -> Result<(String, String), SpecError> {
    let path = settings.path.clone();
    let (authority, rest) = path.split_once('/').unwrap_or((&path, ""));
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => return Err(format!("pulsar:// needs host:port (got `{authority}`), {EXAMPLE}").into()),
    }
    let url = format!("pulsar://{authority}");
    let topic = match (settings.take("topic"), rest) {
        (Some(_), rest) if !rest.is_empty() => {
            return Err(format!(
                "the topic is given both in the URI (`{rest}`) and as the `topic` key; keep one"
            )
            .into());
        }
        (Some(full), _) => full_topic(&full)?,
        (None, "") => return Err(format!("pulsar:// needs tenant/namespace/topic after host:port, {EXAMPLE}").into()),
        (None, rest) => {
            check_parts(rest)?;
            format!("persistent://{rest}")
        }
    };
    Ok((url, topic))
}

/// Checks a `topic` key: a full `persistent://` or `non-persistent://` name.
fn full_topic(full: &str) -> Result<String, SpecError> {
    let parts = full.strip_prefix("persistent://").or_else(|| full.strip_prefix("non-persistent://"));
    match parts {
        Some(parts) => {
            check_parts(parts)?;
            Ok(full.to_string())
        }
        None => Err(format!(
            "`topic` = {full}: expected a full name, persistent://tenant/namespace/topic or non-persistent://tenant/namespace/topic"
        )
        .into()),
    }
}

/// `tenant/namespace/topic`, each part non-empty, made of characters Pulsar
/// allows in names.
fn check_parts(parts: &str) -> Result<(), SpecError> {
    let pieces: Vec<&str> = parts.split('/').collect();
    if pieces.len() != 3 || pieces.iter().any(|p| p.is_empty()) {
        return Err(format!("`{parts}` is not tenant/namespace/topic, {EXAMPLE}").into());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_=:.".contains(c);
    if let Some(bad) = pieces.iter().find(|p| !p.chars().all(allowed)) {
        return Err(format!("`{bad}` is not a valid Pulsar name (letters, digits, `-`, `_`, `=`, `:`, `.`)").into());
    }
    Ok(())
}

/// How long the client waits for a connection before the connector's own
/// backoff takes over.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `url`, with few retries of its own: the connectors retry
/// with their own backoff and log each attempt.
async fn client(url: &str) -> Result<pulsar::Pulsar<pulsar::TokioExecutor>, pulsar::Error> {
    let retries = pulsar::ConnectionRetryOptions {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_retries: 2,
        connection_timeout: CONNECT_TIMEOUT,
        ..Default::default()
    };
    let operations = pulsar::OperationRetryOptions {
        operation_timeout: Duration::from_secs(30),
        retry_delay: Duration::from_millis(500),
        max_retries: Some(10),
    };
    pulsar::Pulsar::builder(url, pulsar::TokioExecutor)
        .with_connection_retry_options(retries)
        .with_operation_retry_options(operations)
        .build()
        .await
}

/// A client error, with the hint for the one case users meet that is not
/// theirs: a broker that leaves out the optional checksum of message frames
/// (pulsar-lite does), which pulsar-rs cannot read.
fn explain(error: &pulsar::Error) -> String {
    let text = error.to_string();
    if text.contains("payload frame") {
        format!(
            "{text} (the broker sent message frames without the checksum section, which the Pulsar client \
             weir uses cannot read; Apache Pulsar brokers always send it, pulsar-lite does not)"
        )
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rest: &str, keys: &str, role: &'static str) -> Result<Settings, String> {
        Settings::parse(rest, "pulsar", role)
            .and_then(|s| s.with_keys(&keys.parse().expect("toml")))
            .map_err(|e| e.to_string())
    }

    fn source_with(rest: &str, keys: &str) -> Result<PulsarSourceSpec, String> {
        let mut settings = settings(rest, keys, "source")?;
        let spec = PulsarSourceSpec::parse(&mut settings, "in", 256).map_err(|e| e.to_string())?;
        settings.finish().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    fn sink_with(rest: &str, keys: &str) -> Result<PulsarSinkSpec, String> {
        let mut settings = settings(rest, keys, "sink")?;
        let spec = PulsarSinkSpec::parse(&mut settings).map_err(|e| e.to_string())?;
        settings.finish().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn source_uri_and_defaults() {
        let spec = source_with("h:6650/t/ns/orders", "").unwrap();
        assert_eq!(spec.url, "pulsar://h:6650");
        assert_eq!(spec.topic, "persistent://t/ns/orders");
        assert_eq!(spec.subscription, "weir-in");
        assert_eq!(spec.kind, SubscriptionType::Shared);
        assert_eq!(spec.start, Start::Earliest);
        assert_eq!(spec.consumer, "weir-in");
        let spec = source_with("h:1/t/ns/o?subscription=s&type=key_shared&start=latest&consumer=c", "").unwrap();
        assert_eq!(
            (spec.subscription.as_str(), spec.kind, spec.start, spec.consumer.as_str()),
            ("s", SubscriptionType::KeyShared, Start::Latest, "c")
        );
        let spec = source_with("h:1", "topic = \"non-persistent://t/ns/o\"\ntype = \"failover\"").unwrap();
        assert_eq!(spec.topic, "non-persistent://t/ns/o");
        assert!(spec.kind.cumulative());
    }

    #[test]
    fn bad_source_settings_are_refused_by_name() {
        for (rest, keys, needle) in [
            ("h/t/ns/o", "", "needs host:port"),
            ("h:0/t/ns/o", "", "needs host:port"),
            ("h:1", "", "needs tenant/namespace/topic"),
            ("h:1/t/o", "", "is not tenant/namespace/topic"),
            ("h:1/t/ns/o p", "", "not a valid Pulsar name"),
            ("h:1/t/ns/o?type=fanout", "", "type `fanout`"),
            ("h:1/t/ns/o?start=12", "", "start `12`"),
            ("h:1/t/ns/o?subscription=", "", "`subscription` must not be empty"),
            ("h:1/t/ns/o", "topic = \"persistent://t/ns/o\"", "both in the URI"),
            ("h:1", "topic = \"t/ns/o\"", "expected a full name"),
            ("h:1/t/ns/o?group=g", "", "unknown query parameter `group`"),
            ("h:1/t/ns/o", "maxlen = 3", "key `maxlen` does not apply to a pulsar:// source"),
        ] {
            let err = source_with(rest, keys).unwrap_err();
            assert!(err.contains(needle), "{rest} {keys}: {err}");
        }
    }

    #[test]
    fn sink_uri_and_keys() {
        let spec = sink_with("h:1/t/ns/out", "").unwrap();
        assert_eq!((spec.url.as_str(), spec.topic.as_str()), ("pulsar://h:1", "persistent://t/ns/out"));
        let spec = sink_with("h:1", "topic = \"non-persistent://t/ns/out\"").unwrap();
        assert_eq!(spec.topic, "non-persistent://t/ns/out");
        assert!(sink_with("h:1/t/ns/out?subscription=s", "").unwrap_err().contains("unknown query parameter"));
        assert!(sink_with("h:1/t/ns/out", "type = \"shared\"").unwrap_err().contains("does not apply"));
    }
}
