//! `kafka://`: Kafka source and sink on `rdkafka` (librdkafka).
//!
//! # Source
//! `kafka://host:port[,host:port]/topic[,topic2]?group=G&start=earliest|latest|<timestamp_ms>`
//!
//! - `group` (query parameter or the `group` key): the consumer group.
//!   Default `weir-<source name>`. Several `weir run` processes with the same
//!   group share the topics' partitions; one that leaves hands its partitions
//!   over after committing what it finished.
//! - `start` (query parameter or the `start` key): where a partition with no
//!   committed offset in the group starts: `earliest` (default), `latest`, or a
//!   timestamp in milliseconds since the epoch (the first offset at or after
//!   it). A committed offset always wins.
//! - `consumer` key: the client id (default `weir`).
//! - `commit_interval_ms` (query parameter): how often the watermark is
//!   committed while running (default 1000).
//! - `batch_size` key: most messages per batch handed to the pipeline.
//!
//! Offsets are never committed automatically: a message's offset is committed
//! only once every output derived from it was accepted by its sink,
//! dead-lettered or filtered, and per partition only up to the contiguous
//! watermark (the committed offset is the next one to read). Commits happen
//! every `commit_interval_ms`, when partitions are revoked (after the
//! in-flight messages of those partitions are finished, so a rebalance hands
//! them over without loss), and at shutdown. Batches never mix partitions, so
//! a partition's order is kept into the pipeline. Each message carries its
//! key, headers, timestamp and its origin (topic, partition, offset). A null
//! value becomes an empty one.
//!
//! # Sink
//! `kafka://host:port[,host:port]/topic`
//!
//! An idempotent producer (`enable.idempotence=true`, `acks=all`). Key,
//! headers and timestamp are carried; a message with a key goes to the
//! partition Kafka's Java client would choose (murmur2 of the key,
//! `partitioner=murmur2_random`), so weir and Java producers agree. A write
//! returns only when the broker has acknowledged every message of the batch;
//! if any delivery fails the write fails and the engine retries the batch
//! (at-least-once: the retry may duplicate the messages that did land).
//!
//! # Client properties
//! Any librdkafka property can be given in the connector's `properties`
//! table and is passed through (e.g. `"security.protocol" = "SASL_SSL"`);
//! it overrides weir's defaults:
//!
//! | client | weir's default |
//! | --- | --- |
//! | consumer | `enable.auto.commit=false`, `enable.auto.offset.store=false`, `auto.offset.reset=earliest` (or `latest` per `start`), `enable.partition.eof=false`, `client.id=weir` |
//! | producer | `enable.idempotence=true`, `acks=all`, `partitioner=murmur2_random`, `linger.ms=5`, `client.id=weir` |
//!
//! `bootstrap.servers` comes from the URI and `group.id` from `group`; the
//! consumer's commit settings are weir's own (the at-least-once guarantee
//! depends on them), so those keys are refused in `properties`. Properties are
//! checked by librdkafka when the pipeline is loaded.

mod lag;
mod sink;
mod source;
mod transaction;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

pub use sink::KafkaSink;
pub use source::KafkaSource;
pub use transaction::KafkaTransaction;

use super::{Connector, Settings, SinkSpec, Source, SourceSpec, SpecError, broker};
use crate::config::ranges;

impl SourceSpec for KafkaSourceSpec {
    fn open(&self) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(KafkaSource::new(self.clone())))
    }

    fn transaction_committed(&self, transaction: &str, positions: &[(String, String, Vec<u8>)]) -> anyhow::Result<bool> {
        transaction::committed(self, transaction, positions)
    }
}

#[async_trait::async_trait]
impl SinkSpec for KafkaSinkSpec {
    async fn open(&self) -> anyhow::Result<Box<dyn super::Sink>> {
        Ok(Box::new(KafkaSink::open(self)?))
    }

    async fn open_in(
        &self,
        checkpoints: Option<&crate::flow::checkpoint::Checkpoints>,
    ) -> anyhow::Result<Box<dyn super::Sink>> {
        match checkpoints.and_then(|c| c.transaction(|| KafkaTransaction::new(&self.properties))) {
            Some(transaction) => Ok(Box::new(KafkaSink::transactional(self, transaction))),
            None => self.open().await,
        }
    }
}

/// How a checkpoint records a Kafka partition's position: key `topic/N`,
/// value the next offset to read, as text.
pub(crate) fn position_record(topic: &str, partition: u32, next: i64) -> (String, Vec<u8>) {
    (format!("{topic}/{partition}"), next.to_string().into_bytes())
}

/// The partition and next offset of a [`position_record`].
pub(crate) fn parse_position<'a>(key: &'a str, value: &[u8]) -> Option<(&'a str, i32, i64)> {
    let (topic, partition) = key.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?, std::str::from_utf8(value).ok()?.parse().ok()?))
}

/// Where a partition with no committed offset starts: a position is a
/// timestamp in milliseconds since the epoch.
pub type Start = broker::Start<i64>;

/// The `kafka://` connector.
pub const CONNECTOR: Connector = Connector {
    schemes: &["kafka"],
    source: Some(|args| {
        let spec = KafkaSourceSpec::parse(&mut args.settings, args.name, args.batch)?;
        if args.pipeline.delivery == crate::config::Delivery::ExactlyOnce
            && spec.properties.get("partition.assignment.strategy").is_some_and(|s| s.contains("cooperative"))
        {
            // A transaction spans every owned partition: an incremental
            // rebalance would end it for some of them only.
            return Err("`delivery = \"exactly-once\"` needs an eager assignment strategy (not cooperative-sticky)".into());
        }
        Ok(Box::new(spec))
    }),
    sink: Some(|args| Ok(Box::new(KafkaSinkSpec::parse(&mut args.settings)?))),
};

/// A parsed `kafka://` source.
#[derive(Debug, Clone)]
pub struct KafkaSourceSpec {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Start position of partitions without a committed offset.
    pub start: Start,
    /// Most messages per batch.
    pub batch: usize,
    /// How often the watermark is committed while running.
    pub commit_interval: Duration,
    /// librdkafka properties (weir's defaults, then the user's).
    pub properties: BTreeMap<String, String>,
}

/// Properties weir manages on the consumer, refused in `properties`.
const CONSUMER_OWNED: [(&str, &str); 4] = [
    ("bootstrap.servers", "the brokers come from the URI"),
    ("group.id", "use the source's `group` key or `?group=`"),
    ("enable.auto.commit", "weir commits the acknowledged watermark itself"),
    ("enable.auto.offset.store", "weir commits the acknowledged watermark itself"),
];

/// Default time between watermark commits.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

impl KafkaSourceSpec {
    /// Parses what follows `kafka://`, with the source's keys.
    pub fn parse(settings: &mut Settings, source: &str, batch: usize) -> Result<Self, SpecError> {
        let (brokers, topics) = split_path(&settings.path)?;
        let group = broker::take_group(settings, "group", source)?;
        let start = Start::take(
            settings,
            |raw| raw.parse::<i64>().ok().filter(|t| *t >= 0),
            "a timestamp in milliseconds since the epoch",
        )?;
        let consumer = broker::take_consumer(settings)?;
        let commit_interval = settings
            .take_in_range("commit_interval_ms", &ranges::COMMIT_INTERVAL_MS)?
            .map_or(DEFAULT_COMMIT_INTERVAL, Duration::from_millis);
        let user_properties = settings.take_table("properties")?;
        if batch == 0 {
            return Err("batch_size must be at least 1".into());
        }
        let mut properties = BTreeMap::new();
        let mut set = |k: &str, v: &str| properties.insert(k.to_string(), v.to_string());
        set("bootstrap.servers", &brokers);
        set("group.id", &group);
        set("client.id", consumer.as_deref().unwrap_or("weir"));
        set("enable.auto.commit", "false");
        set("enable.auto.offset.store", "false");
        set("enable.partition.eof", "false");
        set("auto.offset.reset", if start == Start::Latest { "latest" } else { "earliest" });
        for (key, value) in user_properties {
            if let Some((_, why)) = CONSUMER_OWNED.iter().find(|(owned, _)| *owned == key) {
                return Err(format!("property `{key}` cannot be set: {why}").into());
            }
            properties.insert(key, value);
        }
        check_properties(&properties)?;
        Ok(KafkaSourceSpec { brokers, topics, group, start, batch, commit_interval, properties })
    }

    /// The client configuration.
    pub fn client_config(&self) -> ClientConfig {
        client_config(&self.properties)
    }
}

/// A parsed `kafka://` sink.
#[derive(Debug, Clone)]
pub struct KafkaSinkSpec {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Destination topic.
    pub topic: String,
    /// librdkafka properties (weir's defaults, then the user's).
    pub properties: BTreeMap<String, String>,
}

impl KafkaSinkSpec {
    /// Parses what follows `kafka://`.
    pub fn parse(settings: &mut Settings) -> Result<Self, SpecError> {
        let (brokers, mut topics) = split_path(&settings.path)?;
        if topics.len() != 1 {
            return Err(format!("a Kafka sink writes one topic (got {})", topics.join(", ")).into());
        }
        let mut properties = BTreeMap::new();
        let mut set = |k: &str, v: &str| properties.insert(k.to_string(), v.to_string());
        set("bootstrap.servers", &brokers);
        set("client.id", "weir");
        set("enable.idempotence", "true");
        set("acks", "all");
        set("partitioner", "murmur2_random");
        set("linger.ms", "5");
        // The user's properties go over weir's defaults.
        for (key, value) in settings.take_table("properties")? {
            if key == "bootstrap.servers" {
                return Err("property `bootstrap.servers` cannot be set: the brokers come from the URI".into());
            }
            properties.insert(key, value);
        }
        check_properties(&properties)?;
        Ok(KafkaSinkSpec { brokers, topic: topics.remove(0), properties })
    }

    /// The client configuration.
    pub fn client_config(&self) -> ClientConfig {
        client_config(&self.properties)
    }
}

fn client_config(properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// Lets librdkafka refuse unknown properties and bad values up front.
fn check_properties(properties: &BTreeMap<String, String>) -> Result<(), SpecError> {
    client_config(properties).create_native_config().map(drop).map_err(|e| format!("Kafka client properties: {e}").into())
}

/// `host:port[,host:port]/topic[,topic]` → brokers and topics.
fn split_path(path: &str) -> Result<(String, Vec<String>), String> {
    const EXAMPLE: &str = "e.g. kafka://127.0.0.1:9092/orders";
    let Some((brokers, topics)) = path.split_once('/') else {
        return Err(format!("kafka:// needs brokers and a topic, {EXAMPLE} (got `{path}`)"));
    };
    if brokers.is_empty() || brokers.split(',').any(|b| !valid_broker(b)) {
        return Err(format!("kafka:// brokers must be host:port[,host:port] (got `{brokers}`), {EXAMPLE}"));
    }
    let topics: Vec<String> = topics.split(',').map(str::to_string).collect();
    for topic in &topics {
        if topic.is_empty() {
            return Err(format!("kafka:// needs a topic after the brokers, {EXAMPLE}"));
        }
        if topic.len() > 249 || !topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(format!(
                "`{topic}` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"
            ));
        }
    }
    Ok((brokers.to_string(), topics))
}

fn valid_broker(broker: &str) -> bool {
    match broker.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rest: &str, keys: &str, role: &'static str) -> Result<Settings, String> {
        Settings::parse(rest, "kafka", role).and_then(|s| s.with_keys(&keys.parse().expect("toml"))).map_err(|e| e.to_string())
    }

    fn source_with(rest: &str, keys: &str) -> Result<KafkaSourceSpec, String> {
        let mut settings = settings(rest, keys, "source")?;
        let spec = KafkaSourceSpec::parse(&mut settings, "in", 256).map_err(|e| e.to_string())?;
        settings.finish().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    fn source(rest: &str) -> Result<KafkaSourceSpec, String> {
        source_with(rest, "")
    }

    fn sink(rest: &str, keys: &str) -> Result<KafkaSinkSpec, String> {
        let mut settings = settings(rest, keys, "sink")?;
        let spec = KafkaSinkSpec::parse(&mut settings).map_err(|e| e.to_string())?;
        settings.finish().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn source_uri_with_brokers_topics_group_and_start() {
        let spec = source("h1:9092,h2:9093/orders,refunds?group=g1&start=latest").unwrap();
        assert_eq!(spec.brokers, "h1:9092,h2:9093");
        assert_eq!(spec.topics, ["orders", "refunds"]);
        assert_eq!(spec.group, "g1");
        assert_eq!(spec.start, Start::Latest);
        assert_eq!(spec.properties["enable.auto.commit"], "false");
        assert_eq!(spec.properties["auto.offset.reset"], "latest");
        assert_eq!(source("h:1/t?start=1700000000000").unwrap().start, Start::At(1_700_000_000_000));
        let default = source("h:1/t").unwrap();
        assert_eq!((default.group.as_str(), default.start), ("weir-in", Start::Earliest));
        assert_eq!(default.commit_interval, DEFAULT_COMMIT_INTERVAL);
    }

    #[test]
    fn keys_and_properties() {
        let keys = "group = \"g\"\nconsumer = \"c1\"\n[properties]\n\"session.timeout.ms\" = \"6000\"";
        let spec = source_with("h:1/t", keys).unwrap();
        assert_eq!((spec.group.as_str(), spec.properties["client.id"].as_str()), ("g", "c1"));
        assert_eq!(spec.properties["session.timeout.ms"], "6000");
        let err = source_with("h:1/t?group=other", keys).unwrap_err();
        assert!(err.contains("both as a query parameter and as a key"), "{err}");
        let err = source_with("h:1/t", "[properties]\n\"enable.auto.commit\" = \"true\"").unwrap_err();
        assert!(err.contains("enable.auto.commit"), "{err}");
        let err = source_with("h:1/t", "[properties]\n\"no.such.property\" = \"1\"").unwrap_err();
        assert!(err.contains("no.such.property"), "{err}");
        let err = source_with("h:1/t", "claim_idle_ms = 5").unwrap_err();
        assert_eq!(err, "key `claim_idle_ms` does not apply to a kafka:// source");
    }

    #[test]
    fn bad_uris_are_refused_by_name() {
        for (uri, needle) in [
            ("h:1", "needs brokers and a topic"),
            ("/t", "brokers must be"),
            ("h/t", "brokers must be"),
            ("h:1/", "needs a topic"),
            ("h:1/bad topic", "not a valid Kafka topic"),
            ("h:1/t?start=yesterday", "start `yesterday`"),
            ("h:1/t?nope=1", "unknown query parameter `nope`"),
        ] {
            let err = source(uri).unwrap_err();
            assert!(err.contains(needle), "{uri}: {err}");
        }
        assert!(sink("h:1/a,b", "").unwrap_err().contains("one topic"));
        assert!(sink("h:1/a?group=g", "").unwrap_err().contains("unknown query parameter"));
    }

    #[test]
    fn sink_defaults_and_overrides() {
        let spec = sink("h:1/out", "").unwrap();
        assert_eq!(spec.topic, "out");
        assert_eq!(spec.properties["enable.idempotence"], "true");
        assert_eq!(spec.properties["acks"], "all");
        assert_eq!(spec.properties["partitioner"], "murmur2_random");
        let spec = sink("h:1/out", "[properties]\n\"compression.type\" = \"lz4\"").unwrap();
        assert_eq!(spec.properties["compression.type"], "lz4");
        let err = sink("h:1/out", "[properties]\nacks = \"sometimes\"").unwrap_err();
        assert!(err.contains("acks"), "{err}");
    }
}
