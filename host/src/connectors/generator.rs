//! `gen://`: synthetic messages for demos, tests and benchmarks.
//!
//! `gen://?count=1000&rate=5000&size=100&keys=16`
//! - `count`: messages to produce; without it the source never ends.
//! - `rate`: messages per second (0.001 to 10 000 000); without it, as fast
//!   as the pipeline takes them.
//! - `size`: value size in bytes (the JSON value is padded to it), at most
//!   the source's `max_message_bytes`.
//! - `keys`: distinct keys `key-0` .. `key-N-1` (0 = no key). Default 16.
//!
//! Values are JSON: `{"seq":7,"key":"key-7","status":"ok","amount":7,"pad":"..."}`;
//! `status` cycles ok, ok, ok, warn, error. Header `seq` carries the sequence number.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;
use std::io::Write;

use super::{Connector, LineLimits, Settings, Source, SourceContext, SourceSpec, SpecError};
use crate::config::ranges;
use crate::message::{Header, Message};

/// The `gen://` connector (a source only).
pub const CONNECTOR: Connector = Connector {
    schemes: &["gen"],
    source: Some(|args| {
        let limits = args.line_limits()?;
        Ok(Box::new(GenSpec::parse(&mut args.settings, limits)?))
    }),
    sink: None,
};

impl SourceSpec for GenSpec {
    fn open(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(GenSource::new(self.clone())))
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    /// Total messages; `None` = unbounded.
    pub count: Option<u64>,
    /// Messages per second; `None` = unthrottled.
    pub rate: Option<f64>,
    /// Minimum value size in bytes.
    pub size: usize,
    /// Distinct keys (0 = no key).
    pub keys: u64,
    /// Messages per batch.
    pub batch: usize,
}

impl GenSpec {
    pub(crate) fn parse(params: &mut Settings, limits: LineLimits) -> Result<Self, SpecError> {
        if !params.path.is_empty() {
            return Err(format!(
                "gen:// takes no path (got `{}`); use query parameters, e.g. gen://?count=100",
                params.path
            )
            .into());
        }
        let spec = GenSpec {
            count: params.take_parsed("count")?,
            rate: params.take_in_range("rate", &ranges::GEN_RATE)?,
            size: params
                .take_in_range("size", &(0..=limits.max_message_bytes))
                .map_err(|e| format!("{e} (the source's max_message_bytes)"))?
                .unwrap_or(0),
            keys: params.take_parsed("keys")?.unwrap_or(16),
            batch: limits.batch,
        };
        Ok(spec)
    }
}

/// Produces [`GenSpec`] messages.
pub struct GenSource {
    spec: GenSpec,
}

impl GenSource {
    /// A source for `spec`.
    pub fn new(spec: GenSpec) -> Self {
        GenSource { spec }
    }
}

const STATUSES: [&str; 5] = ["ok", "ok", "ok", "warn", "error"];

/// Builds message number `seq`.
pub fn message(spec: &GenSpec, seq: u64, now_ms: u64) -> Message {
    let mut value = Vec::with_capacity(spec.size.max(80));
    let key = (spec.keys > 0).then(|| format!("key-{}", seq % spec.keys));
    let _ = write!(
        value,
        r#"{{"seq":{seq},"key":"{}","status":"{}","amount":{}"#,
        key.as_deref().unwrap_or(""),
        STATUSES[(seq % 5) as usize],
        seq % 1000
    );
    let pad = spec.size.saturating_sub(value.len() + r#","pad":""}"#.len());
    if pad > 0 || spec.size > 0 {
        value.extend_from_slice(br#","pad":""#);
        value.resize(value.len() + pad, b'x');
        value.push(b'"');
    }
    value.push(b'}');
    Message {
        key: key.map(String::into_bytes),
        value,
        headers: vec![Header { name: "seq".into(), value: seq.to_string().into_bytes() }],
        timestamp_ms: Some(now_ms),
        origin: None,
    }
}

#[async_trait]
impl Source for GenSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let spec = self.spec;
        let (tracker, mut released) = ctx.tracker::<u64>();
        // With a rate, send small batches on a fixed tick (100 per second);
        // without one, full batches as fast as backpressure allows.
        let (batch_size, mut tick) = match spec.rate {
            Some(rate) => {
                let per_tick = (rate / 100.0).clamp(1.0, spec.batch as f64);
                let period = Duration::from_secs_f64(per_tick / rate);
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                (per_tick.round() as usize, Some(interval))
            }
            None => (spec.batch, None),
        };
        let mut seq = 0u64;
        while spec.count.is_none_or(|c| seq < c) && !ctx.shutdown().is_cancelled() {
            if let Some(tick) = tick.as_mut() {
                tokio::select! {
                    _ = ctx.shutdown().cancelled() => break,
                    _ = tick.tick() => {}
                }
            }
            let n = spec.count.map_or(batch_size as u64, |c| (c - seq).min(batch_size as u64));
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let messages: Vec<Message> = (seq..seq + n).map(|s| message(&spec, s, now_ms)).collect();
            seq += n;
            if ctx.hand_over(&tracker, 0, seq, messages.into()).await.is_err() {
                break;
            }
            while released.try_recv().is_ok() {}
        }
        tracing::debug!(source = ctx.name(), messages = seq, "generator emitted its messages");
        ctx.drain(&tracker, &mut released, |_, _| {}).await;
        tracing::debug!(source = ctx.name(), messages = seq, "generator finished");
        Ok(())
    }
}
