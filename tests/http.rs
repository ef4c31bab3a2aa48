//! The HTTP collector source (`http://ADDR/PATH`), driven by a real HTTP
//! client: every `200` means the data is in the sink; `400`, `401`, `413`
//! and `503` mean nothing entered; concurrent clients lose and repeat
//! nothing; shutdown answers the requests in flight.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// An HTTP collector on `port` (with `query`) → a file sink `out.ndjson`,
/// plus `extra` (sink settings, `[memory]`, ...).
fn collector_pipeline(scratch: &Scratch, port: u16, query: &str, sink_uri: Option<&str>, extra: &str) -> String {
    let sink = sink_uri.map_or_else(|| toml_file_uri(&scratch.path("out.ndjson")), |uri| format!("\"{uri}\""));
    format!(
        "[[source]]\nname = \"ingest\"\nuri = \"http://127.0.0.1:{port}/ingest{query}\"\nbatch_size = 64\n\n\
         [[sink]]\nname = \"out\"\nuri = {sink}\nbatch = {{ max_size = 64, max_wait_ms = 5 }}\n{extra}\n"
    )
}

fn start(scratch: &Scratch, pipeline: &str, env: &[(&str, &str)]) -> Running {
    let mut weir = scratch.start_with_env(pipeline, env);
    weir.wait_for_log(LIMIT, "the collector listening", |log| log.contains("HTTP collector listening"));
    weir
}

fn lines(ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter().map(|id| format!("{{\"key\":\"k{}\",\"value\":\"event {id}\"}}\n", id % 7)).collect()
}

fn values(scratch: &Scratch) -> Vec<String> {
    scratch.json_lines("out.ndjson").iter().map(|l| l["value"].as_str().unwrap().to_string()).collect()
}

#[test]
fn every_200_means_the_data_is_in_the_sink() {
    let scratch = Scratch::new();
    let port = free_port();
    let weir = start(&scratch, &collector_pipeline(&scratch, port, "", None, ""), &[]);
    let client = Admin::anonymous(port);
    for request in 0..20u64 {
        let ids = request * 50..(request + 1) * 50;
        let reply = client.request_post("/ingest", lines(ids.clone()).as_bytes());
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body["accepted"], 50);
        // The answer came after the write: the file already holds the lines.
        let written: HashSet<String> = values(&scratch).into_iter().collect();
        for id in ids {
            assert!(written.contains(&format!("event {id}")), "event {id} answered 200 but is not in the sink");
        }
    }
    // Keys and values arrive as sent.
    let first = &scratch.json_lines("out.ndjson")[0];
    assert_eq!((first["key"].as_str(), first["value"].as_str()), (Some("k0"), Some("event 0")));
    weir.signal("-TERM");
    let (code, log, _) = weir.wait(LIMIT);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(values(&scratch).len(), 1000);
}

#[test]
fn bad_lines_big_bodies_and_missing_tokens_are_refused_whole() {
    let scratch = Scratch::new();
    let port = free_port();
    let query = "?max_body_bytes=4096&token_env=WEIR_TEST_INGEST_TOKEN";
    let pipeline = collector_pipeline(&scratch, port, query, None, "");
    let weir = start(&scratch, &pipeline, &[("WEIR_TEST_INGEST_TOKEN", "ingest-secret")]);
    let anonymous = Admin::anonymous(port);
    let client = Admin { port, token: Some("ingest-secret".into()) };

    let reply = anonymous.request_post("/ingest", lines(0..3).as_bytes());
    assert_eq!((reply.status, reply.challenge.as_deref()), (401, Some("Bearer")), "{reply:?}");
    let wrong = Admin { port, token: Some("guess".into()) }.request_post("/ingest", lines(0..3).as_bytes());
    assert_eq!(wrong.status, 401);

    let body = format!("{}not json\n{}", lines(0..2), lines(2..4));
    let reply = client.request_post("/ingest", body.as_bytes());
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.body.as_str().unwrap().starts_with("line 3: "), "{reply:?}");

    let reply = client.request_post("/ingest", lines(0..200).as_bytes());
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(reply.body.as_str().unwrap().contains("max_body_bytes (4096 bytes)"), "{reply:?}");

    let reply = client.request_post("/ingest", lines(100..103).as_bytes());
    assert_eq!(reply.status, 200, "{reply:?}");
    weir.signal("-TERM");
    let (code, log, _) = weir.wait(LIMIT);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(values(&scratch), ["event 100", "event 101", "event 102"], "only the accepted request entered");
}

#[test]
fn a_saturated_pipeline_answers_503_with_retry_after() {
    // A 1 MiB in-flight budget and a sink that takes 200 ms per write (15 writes): the
    // first 900 KiB body holds the budget until it is written, so a second
    // one finds no room within 100 ms.
    let scratch = Scratch::new();
    let port = free_port();
    let pipeline = collector_pipeline(
        &scratch,
        port,
        "?busy_timeout_ms=100",
        Some("null://?delay_ms=200"),
        "\n[memory]\nmax_in_flight_mb = 1\n",
    );
    let mut weir = start(&scratch, &pipeline, &[]);
    let big: String = (0..900).map(|i| format!("{{\"value\":\"{i:0>1000}\"}}\n")).collect();
    let first = std::thread::spawn({
        let big = big.clone();
        move || Admin::anonymous(port).request_post("/ingest", big.as_bytes())
    });
    // The first body is in the pipeline (and holds the budget) once the
    // sink holds its first batch.
    weir.wait_for_log(LIMIT, "the sink holding a batch", |log| log.contains("null sink holding a batch"));
    let second = Admin::anonymous(port).request_post("/ingest", big.as_bytes());
    assert_eq!((second.status, second.retry_after.as_deref()), (503, Some("1")), "{second:?}");
    assert!(second.body.as_str().unwrap().contains("the pipeline is busy"), "{second:?}");
    let first = first.join().unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["accepted"], 900);
    // With the budget back, the same body is taken.
    assert_eq!(Admin::anonymous(port).request_post("/ingest", big.as_bytes()).status, 200);
    weir.signal("-TERM");
    let (code, log, _) = weir.wait(LIMIT);
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn fifty_concurrent_clients_lose_and_repeat_nothing() {
    let scratch = Scratch::new();
    let port = free_port();
    let weir = start(&scratch, &collector_pipeline(&scratch, port, "", None, ""), &[]);
    let (clients, requests, per_request) = (50u64, 20u64, 25u64);
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            std::thread::spawn(move || {
                let http = Admin::anonymous(port);
                for request in 0..requests {
                    let first = (client * requests + request) * per_request;
                    let body = lines(first..first + per_request);
                    // A 503 means nothing entered: send it again.
                    loop {
                        let reply = http.request_post("/ingest", body.as_bytes());
                        match reply.status {
                            200 => break,
                            503 => std::thread::sleep(Duration::from_millis(50)),
                            _ => panic!("{reply:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    weir.signal("-TERM");
    let (code, log, _) = weir.wait(LIMIT);
    assert_eq!(code, Some(0), "{log}");
    let written = values(&scratch);
    let unique: HashSet<&String> = written.iter().collect();
    let total = (clients * requests * per_request) as usize;
    assert_eq!(unique.len(), total, "lost messages");
    assert_eq!(written.len(), total, "repeated messages");
}

#[test]
fn shutdown_answers_the_requests_in_flight() {
    let scratch = Scratch::new();
    let port = free_port();
    let pipeline = collector_pipeline(&scratch, port, "", Some("null://?delay_ms=1000"), "");
    let mut weir = start(&scratch, &pipeline, &[]);
    let request = std::thread::spawn(move || Admin::anonymous(port).request_post("/ingest", lines(0..10).as_bytes()));
    weir.wait_for_log(LIMIT, "the sink holding the request", |log| log.contains("null sink holding a batch"));
    weir.signal("-TERM");
    let reply = request.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let (code, log, _) = weir.wait(LIMIT);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("written [out=10]"), "{log}");
}

#[test]
fn bad_collector_uris_are_refused_before_start() {
    let scratch = Scratch::new();
    for (query, needle) in [
        ("?max_body_bytes=0", "`max_body_bytes=0` is out of range"),
        (
            "?token_env=WEIR_TEST_NOT_SET_ANYWHERE",
            "`WEIR_TEST_NOT_SET_ANYWHERE`, but that environment variable is not set",
        ),
        ("?colour=red", "unknown query parameter `colour`"),
    ] {
        let output = scratch.run(&collector_pipeline(&scratch, 1, query, None, ""), LIMIT);
        let (_, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{query}: {stderr}");
        assert!(stderr.contains(needle), "{query}: {stderr}");
    }
}

// ------------------------------------------------------------------ the sink

/// A receiving endpoint for the HTTP sink: answers each POST with
/// `answer(request number, body)` and keeps the bodies it answered 2xx.
/// `x-tenant` and `authorization` of every request, in arrival order.
type SeenHeaders = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Option<String>)>>>;

struct Endpoint {
    port: u16,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    headers: SeenHeaders,
    _runtime: tokio::runtime::Runtime,
}

impl Endpoint {
    fn start(answer: fn(usize, &str) -> u16) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
        let requests: Arc<AtomicUsize> = Arc::default();
        let headers: SeenHeaders = Arc::default();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/in",
            axum::routing::post({
                let (accepted, requests, seen) = (accepted.clone(), requests.clone(), headers.clone());
                move |request_headers: axum::http::HeaderMap, body: String| async move {
                    let header = |name: &str| request_headers.get(name).map(|v| v.to_str().unwrap().to_string());
                    seen.lock().unwrap().push((header("x-tenant"), header("authorization")));
                    let status = answer(requests.fetch_add(1, Ordering::SeqCst), &body);
                    if (200..300).contains(&status) {
                        accepted.lock().unwrap().push(body);
                    }
                    (axum::http::StatusCode::from_u16(status).unwrap(), format!("answered {status}"))
                }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Endpoint { port, accepted, requests, headers, _runtime: runtime }
    }

    /// The values of every accepted body's lines.
    fn values(&self) -> Vec<String> {
        let bodies = self.accepted.lock().unwrap();
        bodies
            .iter()
            .flat_map(|b| b.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].to_string()))
            .collect()
    }
}

fn sink_pipeline(scratch: &Scratch, input: &str, sink_uri: &str, sink_batch: usize) -> String {
    scratch.write("in.ndjson", input);
    format!(
        "[[source]]\nname = \"in\"\nuri = {input}\n\n\
         [[sink]]\nname = \"out\"\nuri = \"{sink_uri}\"\nbatch = {{ max_size = {sink_batch}, max_wait_ms = 5 }}\n\
         retry_backoff_ms = 10\n\n[dead_letter]\nuri = {dead}\n",
        input = toml_file_uri(&scratch.path("in.ndjson")),
        dead = toml_file_uri(&scratch.path("dead.ndjson")),
    )
}

#[test]
fn the_http_sink_posts_ndjson_batches_and_retries_server_errors() {
    // The first two requests are answered 503: they are sent again.
    let endpoint = Endpoint::start(|n, _| if n < 2 { 503 } else { 200 });
    let scratch = Scratch::new();
    let input = lines(0..100);
    let uri = format!("http://127.0.0.1:{}/in", endpoint.port);
    let output = scratch.run(&sink_pipeline(&scratch, &input, &uri, 25), LIMIT);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("answered 503 Service Unavailable"), "{stderr}");
    let mut values = endpoint.values();
    values.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("\"event {i}\"")).collect();
    expected.sort();
    assert_eq!(values, expected, "every message accepted exactly once");
    assert_eq!(endpoint.requests.load(std::sync::atomic::Ordering::SeqCst), 6, "4 batches + 2 retries");
}

#[test]
fn the_http_sink_sends_its_headers_and_bearer_token() {
    let endpoint = Endpoint::start(|_, _| 200);
    let scratch = Scratch::new();
    let uri = format!("http://127.0.0.1:{}/in", endpoint.port);
    let pipeline = sink_pipeline(&scratch, &lines(0..10), &uri, 5).replace(
        "retry_backoff_ms = 10\n",
        "retry_backoff_ms = 10\ntoken_env = \"SINK_TOKEN\"\nheaders = { x-tenant = \"acme\" }\n",
    );
    let output = scratch.start_with_env(&pipeline, &[("SINK_TOKEN", "s3cret")]).wait(LIMIT);
    assert_eq!(output.0, Some(0), "{}", output.1);
    let seen = endpoint.headers.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "two batches of 5: {seen:?}");
    for (tenant, authorization) in seen {
        assert_eq!(tenant.as_deref(), Some("acme"));
        assert_eq!(authorization.as_deref(), Some("Bearer s3cret"));
    }
    assert!(!output.1.contains("s3cret"), "the token is never logged: {}", output.1);
    // Without the variable the run is refused before it starts.
    let refused = scratch.run(&pipeline, LIMIT);
    assert_eq!(refused.status.code(), Some(2));
    assert!(refusal(&refused).contains("`token_env` names `SINK_TOKEN`, but that environment variable is not set"));
}

#[test]
fn a_batch_the_endpoint_rejects_goes_to_the_dead_letter() {
    let endpoint = Endpoint::start(|_, body| if body.contains("event 3\"") { 422 } else { 200 });
    let scratch = Scratch::new();
    let uri = format!("http://127.0.0.1:{}/in", endpoint.port);
    let output = scratch.run(&sink_pipeline(&scratch, &lines(0..6), &uri, 1), LIMIT);
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(endpoint.values().len(), 5);
    let dead = scratch.json_lines("dead.ndjson");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["value"], "event 3");
    let reason = dead[0]["headers"]["weir-error"].as_str().unwrap();
    assert!(reason.contains("answered 422 Unprocessable Entity: answered 422"), "{reason}");
}

#[test]
fn weir_relays_to_weir_over_http() {
    // weir A: file → http sink → weir B: collector → file.
    let scratch_b = Scratch::new();
    let port = free_port();
    let b = start(&scratch_b, &collector_pipeline(&scratch_b, port, "", None, ""), &[]);
    let scratch_a = Scratch::new();
    let uri = format!("http://127.0.0.1:{port}/ingest");
    let output = scratch_a.run(&sink_pipeline(&scratch_a, &lines(0..2000), &uri, 500), LIMIT);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output).1);
    b.signal("-TERM");
    let (code, log, _) = b.wait(LIMIT);
    assert_eq!(code, Some(0), "{log}");
    let received = scratch_b.json_lines("out.ndjson");
    assert_eq!(received.len(), 2000);
    assert_eq!((received[1]["key"].as_str(), received[1]["value"].as_str()), (Some("k1"), Some("event 1")));
}
