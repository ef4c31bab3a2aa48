//! The Redis Streams sink: one pipelined round trip of `XADD` per batch.

use ::redis::aio::MultiplexedConnection;
use ::redis::Client;
use std::time::Duration;

use anyhow::{Result, anyhow};
use async_trait::async_trait;

use super::fields::encode;
use super::{RedisSinkSpec, connect};
use crate::connectors::Sink;
use crate::message::Message;

/// Writes batches to a stream with pipelined `XADD`.
pub struct RedisSink {
    spec: RedisSinkSpec,
    client: Client,
    conn: Option<MultiplexedConnection>,
}

impl RedisSink {
    /// A sink for `spec`; it connects on its first write.
    pub fn new(spec: RedisSinkSpec) -> Result<Self> {
        let client = spec.endpoint.client()?;
        Ok(RedisSink { spec, client, conn: None })
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, batch: &[Message]) -> Result<()> {
        let spec = &self.spec;
        let mut pipe = ::redis::pipe();
        for message in batch {
            let mut cmd = ::redis::cmd("XADD");
            cmd.arg(&spec.stream);
            if let Some(maxlen) = spec.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(maxlen);
            }
            cmd.arg("*");
            encode(&mut cmd, message);
            pipe.add_command(cmd).ignore();
        }
        if self.conn.is_none() {
            // The error's text already holds its source's (`Connection
            // refused (os error 111)`): not chained, so it is said once.
            let conn = connect(&self.client, Duration::from_secs(30))
                .await
                .map_err(|e| anyhow!("connecting to Redis at {}: {e}", spec.endpoint.display()))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected");
        match pipe.query_async::<()>(conn).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Start afresh next time: the connection may be broken.
                self.conn = None;
                Err(anyhow!("XADD of {} entries to `{}` on {}: {e}", batch.len(), spec.stream, spec.endpoint.display()))
            }
        }
    }
}
