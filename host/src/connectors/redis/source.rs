//! The Redis Streams source: a consumer-group member that acknowledges
//! (`XACK`) only what the pipeline finished.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{Client, RedisError, Value};
use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::fields::{Entry, F_VALUE, array, bytes, decode, entries, read_reply};
use super::unconfirmed::Unconfirmed;
use super::{RedisSourceSpec, connect, start_id};
use crate::connectors::{Read, Source, SourceContext};
use crate::flow::ack::{AckTracker, Released};
use crate::flow::backoff::Backoff;
use crate::message::{Message, Origin};

/// How long the source keeps retrying its last acknowledgements at shutdown.
const FINAL_ACK_PATIENCE: Duration = Duration::from_secs(10);

/// Reads streams through a consumer group.
pub struct RedisSource {
    spec: RedisSourceSpec,
}

impl RedisSource {
    /// A source for `spec`.
    pub fn new(spec: RedisSourceSpec) -> Self {
        RedisSource { spec }
    }
}

/// Entry IDs handed to the pipeline and not yet acknowledged, per stream, so
/// that a claim sweep never takes an entry this process is still working on.
type InFlight = Arc<Mutex<Vec<HashSet<String>>>>;


/// Errors a retry cannot fix: the source gives up on them.
fn fatal(e: &RedisError) -> bool {
    matches!(e.code(), Some("WRONGTYPE" | "NOAUTH" | "WRONGPASS" | "NOPERM" | "ERR"))
}

/// What the read loop does next.
enum Phase {
    /// Re-reading this consumer's own pending entries, from these IDs
    /// (`None` once a stream's are all read).
    Pending(Vec<Option<String>>),
    /// Reading new entries.
    New,
}

#[async_trait]
impl Source for RedisSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let spec = Arc::new(self.spec);
        let client = spec.endpoint.client()?;
        // A checkpoint records, per stream, the IDs it covers and those of
        // earlier checkpoints still unacknowledged: a restart acknowledges
        // them first (the XACK after a checkpoint may not have been sent
        // before a crash).
        let unconfirmed = Arc::new(Unconfirmed::new(spec.streams.len()));
        let (tracker, released) = ctx.checkpointed_tracker::<Vec<String>>({
            let (streams, unconfirmed) = (spec.streams.clone(), unconfirmed.clone());
            Box::new(move |stream, batches| {
                let ids = unconfirmed.record(stream as usize, batches);
                Some((streams[stream as usize].clone(), Some(ids.into_bytes())))
            })
        });
        let in_flight: InFlight = Arc::new(Mutex::new(vec![HashSet::new(); spec.streams.len()]));
        let finish = CancellationToken::new();
        let acker = tokio::spawn(acknowledge(
            client.clone(),
            spec.clone(),
            Acknowledged { released, in_flight: in_flight.clone(), unconfirmed },
            finish.clone(),
            ctx.name().to_string(),
        ));
        let lag = super::lag::spawn(client.clone(), spec.clone(), ctx.name());
        tracing::info!(
            source = ctx.name(),
            "reading {} on {} as consumer `{}` of group `{}`",
            spec.streams.join(","),
            spec.endpoint.display(),
            spec.consumer,
            spec.group
        );
        let result =
            Reader { spec: &spec, client: &client, ctx: &ctx, tracker: &tracker, in_flight: &in_flight }.run().await;
        // Reading stopped: wait for what is in flight, then let the
        // acknowledger send the last XACKs and stop.
        tracker.wait_idle().await;
        finish.cancel();
        lag.stop().await;
        acker.await.context("the acknowledger task failed")?;
        result
    }
}

struct Reader<'a> {
    spec: &'a RedisSourceSpec,
    client: &'a Client,
    ctx: &'a SourceContext,
    tracker: &'a AckTracker<Vec<String>>,
    in_flight: &'a InFlight,
}

impl Reader<'_> {
    async fn run(&self) -> Result<()> {
        let spec = self.spec;
        let stop = self.ctx.shutdown().clone();
        let mut conn: Option<MultiplexedConnection> = None;
        let mut backoff = Backoff::default();
        let mut phase = Phase::Pending(vec![Some("0".to_string()); spec.streams.len()]);
        // The first claim sweep right after the pending entries.
        let mut next_sweep = Instant::now();
        let mut sweep: Option<Vec<Option<String>>> = None;
        let mut first_connect = true;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let mut c = match conn.clone() {
                Some(c) => c,
                None => match self.setup().await {
                    Ok(mut c) => {
                        if !first_connect {
                            tracing::info!(source = self.ctx.name(), "reconnected to {}", spec.endpoint.display());
                        } else if let Err(e) = self.acknowledge_restored(&mut c).await {
                            tracing::warn!(source = self.ctx.name(), "Redis read failed, reconnecting: {e}");
                            if !backoff.sleep(&stop).await {
                                return Ok(());
                            }
                            continue;
                        }
                        first_connect = false;
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) if fatal(&e) => {
                        return Err(anyhow!("{}: {e}", spec.endpoint.display()));
                    }
                    Err(e) => {
                        tracing::warn!(
                            source = self.ctx.name(),
                            "cannot reach Redis at {}, retrying: {e}",
                            spec.endpoint.display()
                        );
                        if !backoff.sleep(&stop).await {
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            // One step: a page of own pending entries, a page of a claim
            // sweep, or a blocking read of new entries.
            let step = async {
                match &mut phase {
                    Phase::Pending(cursors) => {
                        let got = self.read_pending(&mut c, cursors).await?;
                        if cursors.iter().all(Option::is_none) {
                            phase = Phase::New;
                        }
                        Ok::<_, RedisError>(got)
                    }
                    Phase::New => {
                        if let Some(idle) = spec.claim_idle {
                            if sweep.is_none() && Instant::now() >= next_sweep {
                                sweep = Some(vec![Some("0-0".to_string()); spec.streams.len()]);
                            }
                            if let Some(cursors) = sweep.as_mut() {
                                let got = self.claim(&mut c, cursors, idle).await?;
                                if cursors.iter().all(Option::is_none) {
                                    sweep = None;
                                    next_sweep = Instant::now()
                                        + (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
                                }
                                if !got.is_empty() {
                                    return Ok(got);
                                }
                            }
                        }
                        self.read_new(&mut c).await
                    }
                }
            };
            // Not abandoned on shutdown: a read lasts at most `block`, and
            // what it returned is then processed rather than left pending.
            let result = step.await;
            match result {
                Ok(batches) => {
                    backoff.reset();
                    for (index, entries) in batches {
                        if !self.emit(index, entries).await {
                            return Ok(());
                        }
                    }
                }
                Err(e) if fatal(&e) && !is_nogroup(&e) => {
                    return Err(anyhow!("{}: {e}", spec.endpoint.display()));
                }
                Err(e) => {
                    tracing::warn!(source = self.ctx.name(), "Redis read failed, reconnecting: {e}");
                    conn = None;
                    if !backoff.sleep(&stop).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Connects and makes sure every stream has the group.
    async fn setup(&self) -> Result<MultiplexedConnection, RedisError> {
        let spec = self.spec;
        let mut conn = connect(self.client, spec.block + Duration::from_secs(10)).await?;
        for stream in &spec.streams {
            let created: Result<Value, RedisError> = ::redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&spec.group)
                .arg(start_id(&spec.start))
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Ok(_) => tracing::info!(
                    source = self.ctx.name(),
                    "created consumer group `{}` on stream `{stream}` at {}",
                    spec.group,
                    start_id(&spec.start)
                ),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(conn)
    }

    /// Acknowledges the entries the last checkpoint of the previous run
    /// covered: their effects are in the saved state, so they must not be
    /// read again.
    async fn acknowledge_restored(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let mut acknowledged = 0;
        for (stream, ids) in self.ctx.restored() {
            if !self.spec.streams.contains(stream) {
                continue;
            }
            let ids: Vec<&str> = std::str::from_utf8(ids).unwrap_or_default().split_whitespace().collect();
            for chunk in ids.chunks(1000) {
                let done: usize =
                    ::redis::cmd("XACK").arg(stream).arg(&self.spec.group).arg(chunk).query_async(conn).await?;
                acknowledged += done;
            }
        }
        if acknowledged > 0 {
            tracing::info!(
                source = self.ctx.name(),
                "acknowledged {acknowledged} entries that the last checkpoint covered but Redis still held pending"
            );
        }
        Ok(())
    }

    /// A page of this consumer's own pending entries, from `cursors`.
    async fn read_pending(
        &self,
        conn: &mut MultiplexedConnection,
        cursors: &mut [Option<String>],
    ) -> Result<Vec<(usize, Vec<Entry>)>, RedisError> {
        let spec = self.spec;
        let wanted: Vec<usize> = (0..cursors.len()).filter(|&i| cursors[i].is_some()).collect();
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(&spec.group).arg(&spec.consumer).arg("COUNT").arg(spec.batch).arg("STREAMS");
        for &i in &wanted {
            cmd.arg(&spec.streams[i]);
        }
        for &i in &wanted {
            cmd.arg(cursors[i].as_deref().unwrap_or("0"));
        }
        let reply: Value = cmd.query_async(conn).await?;
        let mut got = self.by_stream(reply)?;
        for &i in &wanted {
            match got.iter().find(|(index, _)| *index == i).and_then(|(_, e)| e.last()) {
                Some(last) => cursors[i] = Some(last.id.clone()),
                None => cursors[i] = None,
            }
        }
        got.retain(|(_, e)| !e.is_empty());
        let n: usize = got.iter().map(|(_, e)| e.len()).sum();
        if n > 0 {
            tracing::info!(source = self.ctx.name(), "re-reading {n} entries left pending by a previous run");
        }
        Ok(got)
    }

    /// A page of a claim sweep: entries idle longer than `idle`.
    async fn claim(
        &self,
        conn: &mut MultiplexedConnection,
        cursors: &mut [Option<String>],
        idle: Duration,
    ) -> Result<Vec<(usize, Vec<Entry>)>, RedisError> {
        let spec = self.spec;
        let mut got = Vec::new();
        for (i, cursor) in cursors.iter_mut().enumerate() {
            let Some(from) = cursor.clone() else { continue };
            let reply: Value = ::redis::cmd("XAUTOCLAIM")
                .arg(&spec.streams[i])
                .arg(&spec.group)
                .arg(&spec.consumer)
                .arg(idle.as_millis() as u64)
                .arg(&from)
                .arg("COUNT")
                .arg(spec.batch)
                .query_async(conn)
                .await?;
            let mut parts = array(reply).map_err(protocol)?.into_iter();
            let next = parts.next().map(bytes).transpose().map_err(protocol)?.unwrap_or_default();
            let next = String::from_utf8_lossy(&next).into_owned();
            *cursor = (next != "0-0" && !next.is_empty()).then_some(next);
            let claimed = entries(parts.next().unwrap_or(Value::Nil)).map_err(protocol)?;
            // Entries this process is still working on stay with it.
            let claimed: Vec<Entry> = {
                let in_flight = self.in_flight.lock();
                claimed.into_iter().filter(|e| !in_flight[i].contains(&e.id)).collect()
            };
            if !claimed.is_empty() {
                tracing::info!(
                    source = self.ctx.name(),
                    "claimed {} entries of `{}` idle for more than {idle:?}",
                    claimed.len(),
                    spec.streams[i]
                );
                got.push((i, claimed));
            }
        }
        Ok(got)
    }

    /// New entries (`>`), waiting up to `block`.
    async fn read_new(&self, conn: &mut MultiplexedConnection) -> Result<Vec<(usize, Vec<Entry>)>, RedisError> {
        let spec = self.spec;
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&spec.group)
            .arg(&spec.consumer)
            .arg("COUNT")
            .arg(spec.batch)
            .arg("BLOCK")
            .arg(spec.block.as_millis() as u64)
            .arg("STREAMS");
        for stream in &spec.streams {
            cmd.arg(stream);
        }
        for _ in &spec.streams {
            cmd.arg(">");
        }
        let reply: Value = cmd.query_async(conn).await?;
        let mut got = self.by_stream(reply)?;
        got.retain(|(_, e)| !e.is_empty());
        Ok(got)
    }

    fn by_stream(&self, reply: Value) -> Result<Vec<(usize, Vec<Entry>)>, RedisError> {
        read_reply(reply)
            .map_err(protocol)?
            .into_iter()
            .filter_map(|(name, entries)| self.spec.streams.iter().position(|s| *s == name).map(|i| (i, entries)))
            .map(Ok)
            .collect()
    }

    /// Hands entries of stream `index` to the pipeline; `false` if it no
    /// longer takes them.
    async fn emit(&self, index: usize, entries: Vec<Entry>) -> bool {
        let stream = &self.spec.streams[index];
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut messages = Vec::with_capacity(entries.len());
        let mut rejected = Vec::new();
        for entry in entries {
            // An entry deleted while pending has nothing to deliver: it is
            // only acknowledged (its ID is in the batch's position).
            let Some(fields) = entry.fields else { continue };
            let origin = Origin { name: stream.clone(), partition: None, offset: None, id: Some(entry.id.clone()) };
            // Only a field name that is not UTF-8 makes `decode` fail: find
            // it first so that the fields need not be copied.
            let bad = fields.iter().any(|(name, _)| std::str::from_utf8(name).is_err());
            let value = bad.then(|| fields.iter().find(|(n, _)| n == F_VALUE).map(|(_, v)| v.clone())).flatten();
            match decode(fields) {
                Ok(mut message) => {
                    message.origin = Some(origin);
                    messages.push(message);
                }
                Err(reason) => {
                    let message = Message::from_value(value.unwrap_or_default());
                    rejected.push((message, format!("{stream} entry {}: {reason}", entry.id)));
                }
            }
        }
        self.in_flight.lock()[index].extend(ids.iter().cloned());
        self.ctx.hand_over(self.tracker, index as u32, ids, Read { messages, rejected }).await.is_ok()
    }
}

fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

fn protocol(e: anyhow::Error) -> RedisError {
    RedisError::from((::redis::ErrorKind::Parse, "unexpected reply from Redis", format!("{e:#}")))
}

/// What the acknowledger takes released IDs from and tells of the `XACK`s
/// Redis confirmed.
struct Acknowledged {
    released: Released<Vec<String>>,
    in_flight: InFlight,
    unconfirmed: Arc<Unconfirmed>,
}

/// Sends `XACK` for every released batch of entry IDs, one call per stream
/// for all that were released meanwhile; keeps and retries them when Redis
/// is away. Stops once `finish` fired and everything released is sent (or
/// after [`FINAL_ACK_PATIENCE`] of failures: those entries stay pending and
/// are re-read by the next run).
async fn acknowledge(
    client: Client,
    spec: Arc<RedisSourceSpec>,
    acknowledged: Acknowledged,
    finish: CancellationToken,
    name: String,
) {
    let Acknowledged { mut released, in_flight, unconfirmed } = acknowledged;
    let mut queue: Vec<Vec<String>> = vec![Vec::new(); spec.streams.len()];
    // Batches in `queue`, per stream.
    let mut batches = vec![0u64; spec.streams.len()];
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff::default();
    let mut finishing_since: Option<Instant> = None;
    let never = CancellationToken::new();
    loop {
        if queue.iter().all(Vec::is_empty) {
            tokio::select! {
                biased;
                Some((stream, ids)) = released.recv() => {
                    queue[stream as usize].extend(ids);
                    batches[stream as usize] += 1;
                }
                _ = finish.cancelled(), if finishing_since.is_none() => {
                    finishing_since = Some(Instant::now());
                }
                else => {}
            }
        }
        while let Ok((stream, ids)) = released.try_recv() {
            queue[stream as usize].extend(ids);
            batches[stream as usize] += 1;
        }
        if finish.is_cancelled() && finishing_since.is_none() {
            finishing_since = Some(Instant::now());
        }
        if queue.iter().all(Vec::is_empty) {
            if finishing_since.is_some() {
                return;
            }
            continue;
        }
        let sent = async {
            if conn.is_none() {
                conn = Some(connect(&client, Duration::from_secs(10)).await?);
            }
            let c = conn.as_mut().expect("connected");
            let mut pipe = ::redis::pipe();
            for (index, ids) in queue.iter().enumerate().filter(|(_, ids)| !ids.is_empty()) {
                pipe.cmd("XACK").arg(&spec.streams[index]).arg(&spec.group).arg(ids).ignore();
            }
            pipe.query_async::<()>(c).await
        }
        .await;
        match sent {
            Ok(()) => {
                backoff.reset();
                let mut in_flight = in_flight.lock();
                for (index, ids) in queue.iter_mut().enumerate() {
                    for id in ids.drain(..) {
                        in_flight[index].remove(&id);
                    }
                    unconfirmed.confirm(index, std::mem::take(&mut batches[index]));
                }
            }
            Err(e) => {
                conn = None;
                let pending: usize = queue.iter().map(Vec::len).sum();
                if finishing_since.is_some_and(|t| t.elapsed() > FINAL_ACK_PATIENCE) {
                    tracing::error!(
                        source = name,
                        "giving up acknowledging {pending} entries ({e}); they stay pending and are re-read on restart"
                    );
                    return;
                }
                tracing::warn!(source = name, "XACK of {pending} entries failed, retrying: {e}");
                backoff.sleep(&never).await;
            }
        }
    }
}
