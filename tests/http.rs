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
    let weir = start(&scratch, &pipeline, &[]);
    let big: String = (0..900).map(|i| format!("{{\"value\":\"{i:0>1000}\"}}\n")).collect();
    let first = std::thread::spawn({
        let big = big.clone();
        move || Admin::anonymous(port).request_post("/ingest", big.as_bytes())
    });
    std::thread::sleep(Duration::from_millis(500));
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
    let weir = start(&scratch, &pipeline, &[]);
    let request = std::thread::spawn(move || Admin::anonymous(port).request_post("/ingest", lines(0..10).as_bytes()));
    std::thread::sleep(Duration::from_millis(300));
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
