//! Side-by-side ingest throughput of the HTTP collector: weir's
//! `http://` source → `null://` sink, against a bare axum handler that does
//! the same work per request (read the body, decode each ndjson line with
//! weir's decoder, count the messages as the null sink does, answer
//! `{"accepted": N}`). The bare handler answers as soon as it has counted;
//! weir answers once the messages went through its pipeline and were
//! acknowledged by the sink.
//!
//! Clients are threads with keep-alive connections, each posting bodies of
//! `LINES` 100-byte events for `SECONDS` seconds.
//!
//! `cargo bench -p weir --bench http` prints a markdown table.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use tokio_util::sync::CancellationToken;
use weir::config::{Format, PipelineConfig};
use weir::pipeline::Pipeline;
use weir::plugin::Runtime;

const SECONDS: u64 = 5;
const LINES: usize = 100;

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let body: String = (0..LINES).map(|i| format!("{{\"key\":\"k{}\",\"value\":\"{:0>100}\"}}\n", i % 16, i)).collect();

    println!("## HTTP collector ingest ({LINES} events of 100 bytes per request, keep-alive, {SECONDS} s per run)\n");
    println!("| clients | weir req/s | weir msg/s | bare axum req/s | bare axum msg/s | weir / bare |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for clients in [1usize, 8, 32] {
        let weir_port = free_port();
        let text = format!(
            "[[source]]\nname = \"ingest\"\nuri = \"http://127.0.0.1:{weir_port}/ingest\"\nbatch_size = {LINES}\n\
             [[sink]]\nname = \"null\"\nuri = \"null://\"\nbatch = {{ max_size = 1000, max_wait_ms = 0 }}\n"
        );
        let config = PipelineConfig::parse(&text, scratch.path()).unwrap();
        let pipeline = Pipeline::prepare(&config, &Runtime::new().unwrap()).unwrap();
        let stop = CancellationToken::new();
        let run = tokio.spawn(pipeline.run(stop.clone()));
        wait_listening(weir_port);
        let weir_rate = load(weir_port, clients, &body);
        stop.cancel();
        let report = tokio.block_on(run).unwrap();
        assert!(report.success(), "{report:?}");

        let bare_port = free_port();
        let bare_stop = CancellationToken::new();
        let counted = Arc::new(AtomicU64::new(0));
        tokio.spawn(bare_server(bare_port, counted.clone(), bare_stop.clone()));
        wait_listening(bare_port);
        let bare_rate = load(bare_port, clients, &body);
        bare_stop.cancel();

        println!(
            "| {clients} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× |",
            weir_rate,
            weir_rate * LINES as f64,
            bare_rate,
            bare_rate * LINES as f64,
            weir_rate / bare_rate
        );
    }
}

/// `clients` threads posting `body` for [`SECONDS`]; requests per second.
fn load(port: u16, clients: usize, body: &str) -> f64 {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let body = body.to_string();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let url = format!("http://127.0.0.1:{port}/ingest");
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let mut response = agent.post(&url).send(body.as_bytes()).expect("request");
                    assert_eq!(response.status().as_u16(), 200);
                    let _ = response.body_mut().read_to_string();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let requests: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    requests as f64 / started.elapsed().as_secs_f64()
}

async fn bare_server(port: u16, counted: Arc<AtomicU64>, stop: CancellationToken) {
    async fn ingest(State(counted): State<Arc<AtomicU64>>, body: Bytes) -> axum::Json<serde_json::Value> {
        let mut accepted = 0u64;
        for line in body.strip_suffix(b"\n").unwrap_or(&body).split(|&b| b == b'\n') {
            let message = weir::connectors::format::decode(Format::Ndjson, line).expect("valid line");
            std::hint::black_box(message);
            accepted += 1;
        }
        counted.fetch_add(accepted, Ordering::Relaxed);
        axum::Json(serde_json::json!({ "accepted": accepted }))
    }
    let app = axum::Router::new().route("/ingest", post(ingest)).with_state(counted);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
