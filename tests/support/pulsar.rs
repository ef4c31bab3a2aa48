//! A Pulsar broker for the tests: pulsar-lite 0.2.0 (a Pulsar-protocol
//! broker that ships as a binary inside its PyPI wheel), and the reframing
//! proxy weir talks to it through.
//!
//! **Why the proxy.** A Pulsar message frame may carry an optional section
//! (the magic number `0x0e01` and a CRC32C of metadata and payload) between
//! its command and its metadata. Apache Pulsar brokers always send it (their
//! clients write it and the broker passes entries on as they are);
//! pulsar-lite leaves it out, and pulsar-rs, the client weir uses, cannot
//! read a frame without it ("Error decoding payload frame: Incomplete"). So
//! weir cannot consume from pulsar-lite directly. The proxy sits between
//! them, passes everything through and inserts the missing section into the
//! broker's message frames; it also points lookup answers at itself so that
//! the client does not bypass it. The official Python client reads frames
//! either way and talks to the broker directly.
//!
//! **Consumer stats.** pulsar-lite 0.2.0 does not implement the protocol's
//! consumer-stats request (it logs "Unsupported command type: 25" and never
//! answers), which weir uses for a source's backlog gauge. The proxy answers
//! it with the broker's own figures for that subscription, read from the
//! broker's Prometheus endpoint (`pulsar_subscription_back_log` and
//! `pulsar_subscription_unacked_messages`, which pulsar-lite refreshes every
//! few seconds). Everything else passes through unchanged, so the tests
//! exercise weir against the broker's real behaviour.
//!
//! **Dispatched count.** The proxy counts the messages the broker sent to
//! each subscription through it ([`PulsarLite::dispatched`]): exact at
//! once, where the broker's own figures lag by seconds.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prost::Message as _;
use pulsar::proto::base_command::Type;
use pulsar::proto::{BaseCommand, CommandConsumerStatsResponse, MessageMetadata};

use super::{free_port, provision, wait_until};

/// pulsar-lite's version the tests pin.
pub const PULSAR_LITE: &str = "0.2.0";
/// The official Python client's version the interoperability tests pin.
pub const PULSAR_CLIENT: &str = "3.13.0";

/// The pulsar-lite binary inside the installed wheel, installing the wheel
/// (`pip install --no-deps`) when it is missing, saying so.
pub fn pulsar_lite_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let find = || {
                let out = Command::new("python3")
                    // Located without importing it: its `__init__` needs the
                    // official client, which the broker binary does not.
                    .args([
                        "-c",
                        "import importlib.util as u; print(u.find_spec('pulsar_lite').submodule_search_locations[0])",
                    ])
                    .output()
                    .ok()?;
                let dir = String::from_utf8(out.stdout).ok()?;
                let binary = PathBuf::from(dir.trim()).join("bin/pulsar-lite");
                (out.status.success() && binary.is_file()).then_some(binary)
            };
            if let Some(binary) = find() {
                return binary;
            }
            let pin = format!("pulsar-lite=={PULSAR_LITE}");
            provision(
                "pulsar-lite, the Pulsar test broker",
                Command::new("python3").args(["-m", "pip", "install", "--quiet", "--no-deps", &pin]),
            );
            find().unwrap_or_else(|| {
                panic!("pulsar-lite was installed but its binary is missing; run: pip install --no-deps {pin}")
            })
        })
        .clone()
}

/// Makes sure the official Python client is importable, installing it when
/// it is missing, saying so.
pub fn python_client() {
    static CLIENT: OnceLock<()> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let importable =
            || Command::new("python3").args(["-c", "import pulsar"]).output().is_ok_and(|o| o.status.success());
        if !importable() {
            let pin = format!("pulsar-client=={PULSAR_CLIENT}");
            provision(
                "the Pulsar Python client",
                Command::new("python3").args(["-m", "pip", "install", "--quiet", &pin]),
            );
            assert!(importable(), "pulsar-client was installed but `import pulsar` fails; run: pip install {pin}");
        }
    });
}

/// A pulsar-lite broker on a free loopback port with its own data folder,
/// and the reframing proxy in front of it.
pub struct PulsarLite {
    child: Option<Child>,
    metrics_port: u16,
    port: u16,
    proxy_port: u16,
    dispatched: Dispatched,
    dir: tempfile::TempDir,
}

/// (topic, subscription) → messages the broker sent through the proxy.
type Dispatched = Arc<Mutex<HashMap<(String, String), u64>>>;

/// Per client connection: consumer id → (topic, subscription), from the
/// client's subscribes.
type Consumers = Arc<Mutex<HashMap<u64, (String, String)>>>;

impl PulsarLite {
    /// Starts a broker (every address on loopback, its metrics listener
    /// for the proxy's consumer-stats answers) and its proxy.
    pub fn start() -> Self {
        Self::start_with_partitions(0)
    }

    /// [`PulsarLite::start`] with every topic created with `partitions`
    /// partitions (0: not partitioned).
    pub fn start_with_partitions(partitions: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, metrics_port) = (free_port(), free_port());
        let config = format!(
            "default_partitions = {partitions}\n[metrics]\nenabled = true\naddr = \"127.0.0.1:{metrics_port}\"\n"
        );
        std::fs::write(dir.path().join("pulsar-lite.toml"), config).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let proxy_port = listener.local_addr().unwrap().port();
        let dispatched = Dispatched::default();
        let counts = dispatched.clone();
        std::thread::spawn(move || proxy(listener, port, metrics_port, counts));
        let mut broker = PulsarLite { child: None, metrics_port, port, proxy_port, dispatched, dir };
        broker.spawn();
        broker
    }

    /// The URL weir uses: through the proxy.
    pub fn url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.proxy_port)
    }

    /// `host:port` of the proxy, for `pulsar://` URIs.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.proxy_port)
    }

    /// The broker's own URL (for the Python client, which reads frames
    /// without the checksum section).
    pub fn direct_url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("broker log");
        let child = Command::new(pulsar_lite_binary())
            .arg("--config")
            .arg(self.dir.path().join("pulsar-lite.toml"))
            .args(["--addr", &format!("127.0.0.1:{}", self.port), "--log-level", "warn", "--db-path"])
            .arg(self.dir.path().join("db"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting pulsar-lite");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "pulsar-lite did not listen on 127.0.0.1:{port}; log:\n{}",
            self.log()
        );
    }

    /// Messages the broker delivered to `subscription` on `topic`
    /// (`pulsar_out_messages_total`; refreshed every few seconds).
    pub fn delivered(&self, topic: &str, subscription: &str) -> Option<u64> {
        subscription_metric(self.metrics_port, "pulsar_out_messages_total", topic, subscription)
    }

    /// Messages the broker sent to `subscription` on `topic` through the
    /// proxy (a batch counts its messages), exact at the time of asking.
    pub fn dispatched(&self, topic: &str, subscription: &str) -> u64 {
        let key = (topic.to_string(), subscription.to_string());
        self.dispatched.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Stops the broker (SIGTERM, then SIGKILL) and starts it again on the
    /// same port and data: its connections drop, its data stays.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the broker.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            if !wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some()) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for PulsarLite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Accepts clients for ever, each on its own pair of threads.
fn proxy(listener: TcpListener, broker_port: u16, metrics_port: u16, dispatched: Dispatched) {
    let own = format!("pulsar://127.0.0.1:{}", listener.local_addr().unwrap().port());
    for client in listener.incoming().map_while(Result::ok) {
        let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)) else {
            // The broker is down: the client sees the connection close.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = broker.set_nodelay(true);
        // Both threads write whole frames to the client: the broker's, and
        // the proxy's consumer-stats answers.
        let to_client = Arc::new(Mutex::new(client.try_clone().unwrap()));
        let (mut c_read, mut b_write) = (client, broker.try_clone().unwrap());
        let answers = to_client.clone();
        let consumers = Consumers::default();
        let subscribed = consumers.clone();
        std::thread::spawn(move || {
            let _ = forward_requests(&mut c_read, &mut b_write, &answers, &subscribed, metrics_port);
            let _ = b_write.shutdown(Shutdown::Both);
        });
        let (own, dispatched) = (own.clone(), dispatched.clone());
        std::thread::spawn(move || {
            let mut b_read = broker;
            let _ = reframe(&mut b_read, &to_client, &own, &Counter { consumers, dispatched });
            let _ = to_client.lock().unwrap().shutdown(Shutdown::Both);
            let _ = b_read.shutdown(Shutdown::Both);
        });
    }
}

/// One frame: `[size][command size][command][rest]`, as read.
fn read_frame(from: &mut impl Read) -> std::io::Result<([u8; 4], Vec<u8>)> {
    let mut size = [0u8; 4];
    from.read_exact(&mut size)?;
    let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
    from.read_exact(&mut frame)?;
    Ok((size, frame))
}

/// A frame holding only `command`.
fn command_frame(command: &BaseCommand) -> Vec<u8> {
    let command = command.encode_to_vec();
    let mut out = Vec::with_capacity(8 + command.len());
    out.extend_from_slice(&(4 + command.len() as u32).to_be_bytes());
    out.extend_from_slice(&(command.len() as u32).to_be_bytes());
    out.extend_from_slice(&command);
    out
}

/// Copies the client's frames to the broker, answering consumer-stats
/// requests itself (see the module's comment).
fn forward_requests(
    from: &mut TcpStream,
    to: &mut TcpStream,
    answers: &Mutex<TcpStream>,
    consumers: &Consumers,
    metrics_port: u16,
) -> std::io::Result<()> {
    let mut buffered = std::io::BufReader::with_capacity(1 << 16, from);
    let mut to = std::io::BufWriter::with_capacity(1 << 16, to);
    loop {
        let (size, frame) = read_frame(&mut buffered)?;
        let command_size = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        let command = BaseCommand::decode(&frame[4..4 + command_size]).map_err(std::io::Error::other)?;
        if let Some(subscribe) = &command.subscribe {
            let names = (subscribe.topic.clone(), subscribe.subscription.clone());
            consumers.lock().unwrap().insert(subscribe.consumer_id, names);
        }
        if let Some(stats) = &command.consumer_stats {
            let names = consumers.lock().unwrap().get(&stats.consumer_id).cloned();
            let figures = names.map(|(topic, sub)| subscription_figures(metrics_port, &topic, &sub));
            let (backlog, unacked) = figures.flatten().unwrap_or((0, 0));
            let answer = BaseCommand {
                r#type: Type::ConsumerStatsResponse as i32,
                consumer_stats_response: Some(CommandConsumerStatsResponse {
                    request_id: stats.request_id,
                    msg_backlog: Some(backlog),
                    unacked_messages: Some(unacked),
                    ..Default::default()
                }),
                ..Default::default()
            };
            answers.lock().unwrap().write_all(&command_frame(&answer))?;
            continue;
        }
        to.write_all(&size)?;
        to.write_all(&frame)?;
        // Frames go on in bulk while more are already read, at once when not.
        if buffered.buffer().is_empty() {
            to.flush()?;
        }
    }
}

/// `(backlog, unacknowledged)` of `subscription` on `topic`
/// (`persistent://tenant/ns/name`) from the broker's Prometheus endpoint.
fn subscription_figures(metrics_port: u16, topic: &str, subscription: &str) -> Option<(u64, u64)> {
    let value = |metric| subscription_metric(metrics_port, metric, topic, subscription);
    Some((value("pulsar_subscription_back_log")?, value("pulsar_subscription_unacked_messages")?))
}

/// The broker's figure `metric` for `subscription` on `topic`, from its
/// Prometheus endpoint (refreshed every few seconds).
fn subscription_metric(metrics_port: u16, metric: &str, topic: &str, subscription: &str) -> Option<u64> {
    let path = topic.split_once("://").map_or(topic, |(_, path)| path);
    let (namespace, name) = path.rsplit_once('/')?;
    let mut http = TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
    http.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    http.read_to_string(&mut text).ok()?;
    let labels =
        format!("namespace=\"{namespace}\",partition=\"-1\",subscription=\"{subscription}\",topic=\"{name}\"}}");
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&labels))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Where [`reframe`] counts the messages of a connection's message frames.
struct Counter {
    consumers: Consumers,
    dispatched: Dispatched,
}

impl Counter {
    /// Counts a message frame: `command` with `rest` = `[0x0e01 crc]
    /// [metadata size][metadata][payload]`.
    fn count(&self, command: &[u8], rest: &[u8]) -> std::io::Result<()> {
        let command = BaseCommand::decode(command).map_err(std::io::Error::other)?;
        let Some(message) = command.message else { return Ok(()) };
        let rest = if rest.starts_with(&[0x0e, 0x01]) { &rest[6..] } else { rest };
        let size = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let metadata = MessageMetadata::decode(&rest[4..4 + size]).map_err(std::io::Error::other)?;
        let Some(names) = self.consumers.lock().unwrap().get(&message.consumer_id).cloned() else { return Ok(()) };
        *self.dispatched.lock().unwrap().entry(names).or_default() +=
            metadata.num_messages_in_batch.unwrap_or(1) as u64;
        Ok(())
    }
}

/// Copies the broker's frames to the client, adding the checksum section to
/// message frames that lack it, pointing lookup answers at `own`, and
/// counting the messages sent to each subscription.
fn reframe(from: &mut TcpStream, to: &Mutex<TcpStream>, own: &str, counter: &Counter) -> std::io::Result<()> {
    let mut buffered = std::io::BufReader::with_capacity(1 << 16, from);
    let mut out = Vec::with_capacity(1 << 16);
    loop {
        let (size, frame) = read_frame(&mut buffered)?;
        let command_size = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        let (command, rest) = frame[4..].split_at(command_size);
        out.clear();
        if rest.is_empty() {
            let mut decoded = BaseCommand::decode(command).map_err(std::io::Error::other)?;
            if let Some(lookup) = decoded.lookup_topic_response.as_mut()
                && lookup.broker_service_url.is_some()
            {
                lookup.broker_service_url = Some(own.to_string());
                out.extend_from_slice(&command_frame(&decoded));
            } else {
                out.extend_from_slice(&size);
                out.extend_from_slice(&frame);
            }
        } else if rest.starts_with(&[0x0e, 0x01]) {
            counter.count(command, rest)?;
            out.extend_from_slice(&size);
            out.extend_from_slice(&frame);
        } else {
            counter.count(command, rest)?;
            // [size][command size][command][0x0e01][crc32c(rest)][rest]
            out.extend_from_slice(&(frame.len() as u32 + 6).to_be_bytes());
            out.extend_from_slice(&frame[..4 + command_size]);
            out.extend_from_slice(&[0x0e, 0x01]);
            out.extend_from_slice(&crc32c(rest).to_be_bytes());
            out.extend_from_slice(rest);
        }
        to.lock().unwrap().write_all(&out)?;
    }
}

/// CRC-32C (Castagnoli), the checksum of Pulsar frames.
pub fn crc32c(bytes: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut crc = i as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
            *slot = crc;
        }
        table
    });
    !bytes.iter().fold(!0u32, |crc, &b| table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8))
}
