//! The terminal views in a real terminal (tmux): `weir top` against a
//! running pipeline (and its message when nothing listens), and the progress
//! line of `weir run` (and its absence when stderr is a pipe).

mod support;

use std::time::Duration;

use support::{Admin, Scratch, Tmux, free_port, plugin, run_weir, text, wait_until};

#[test]
fn top_shows_a_row_per_component_and_quits_on_q() {
    let scratch = Scratch::new();
    let admin = free_port();
    let text = format!(
        "[[source]]\nname = \"numbers\"\nuri = \"gen://?rate=500&keys=4\"\n\n\
         [[stage]]\nname = \"tagger\"\nplugin = {tag}\nconcurrency = 2\n\n\
         [[sink]]\nname = \"nowhere\"\nuri = \"null://\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        tag = support::toml_str(plugin("tag-v1").to_str().unwrap()),
    );
    let weir = scratch.start(&text);
    assert!(Admin::anonymous(admin).wait_up(Duration::from_secs(60)), "admin API up: {}", weir.stderr());
    let stages = Admin::anonymous(admin).get("/stages").expect("GET /stages");
    let version = stages[0]["version"].as_str().expect("a version").to_string();

    let top = Tmux::start(&format!("{} top 127.0.0.1:{admin}", env!("CARGO_BIN_EXE_weir")), 140, 20);
    // After two polls every row has a rate; the source's is about 500/s.
    let mut screen = String::new();
    let shown = wait_until(Duration::from_secs(30), || {
        screen = top.capture();
        let row =
            |name: &str| screen.lines().find(|l| l.contains(name)).map(|l| l.split_whitespace().collect::<Vec<_>>());
        let rate = |name: &str| row(name).and_then(|r| r.get(2).and_then(|v| v.parse::<u64>().ok()));
        screen.contains("● connected") && rate("numbers").is_some_and(|r| r > 100) && rate("tagger").is_some()
    });
    assert!(shown, "top shows its rows:\n{screen}");
    for expected in ["weir top", "uptime", "KIND", "IN/s", "source", "numbers", "stage", "tagger", "sink", "nowhere"] {
        assert!(screen.contains(expected), "`{expected}` missing:\n{screen}");
    }
    let tagger: Vec<&str> = screen.lines().find(|l| l.contains("tagger")).unwrap().split_whitespace().collect();
    assert!(version.starts_with(tagger[tagger.len() - 2]), "the running version ({version}): {tagger:?}");
    assert_eq!(tagger[tagger.len() - 1], "2", "two instances: {tagger:?}");

    top.send_keys("q");
    let quit = wait_until(Duration::from_secs(10), || top.exit_code().is_some());
    assert!(quit, "q quits:\n{}", top.capture());
    assert_eq!(top.exit_code(), Some(0), "{}", top.capture());
    drop(weir);
}

#[test]
fn top_says_so_when_nothing_listens() {
    let port = free_port();
    let output = run_weir(&["top", &format!("127.0.0.1:{port}")], Duration::from_secs(30));
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("nothing answers at http://127.0.0.1:{port}/metrics")), "{stderr}");
    assert!(stderr.contains("[admin]"), "says what to check: {stderr}");

    let output = run_weir(&["top", "localhost"], Duration::from_secs(30));
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs a host and a port"), "{stderr}");
}

#[test]
fn a_bounded_run_shows_a_progress_line_on_a_terminal_only() {
    let scratch = Scratch::new();
    // About four seconds of input, so the line is seen while it runs.
    let file = scratch.write(
        "pipeline.toml",
        "[[source]]\nname = \"numbers\"\nuri = \"gen://?count=2000&rate=500\"\n\n\
         [[sink]]\nname = \"nowhere\"\nuri = \"null://\"\n",
    );
    let command = format!("{} run {}", env!("CARGO_BIN_EXE_weir"), file.display());
    let run = Tmux::start(&format!("env -u CI {command}"), 120, 10);
    let mut screen = String::new();
    let mut seen = Vec::new();
    let done = wait_until(Duration::from_secs(30), || {
        screen = run.capture();
        if let Some(line) = screen.lines().find(|l| l.contains("msg/s")) {
            seen.push(line.trim().to_string());
        }
        run.exit_code().is_some()
    });
    assert!(done, "the run ends:\n{screen}");
    // The screen as the run left it: the last capture in the loop may fall
    // between the line's clearing and the final log lines.
    screen = run.capture();
    assert_eq!(run.exit_code(), Some(0), "{screen}");
    let live = seen.iter().find(|l| l.starts_with("read ") && l.contains(" · written ")).cloned();
    let live = live.unwrap_or_else(|| panic!("a status line while running, saw {seen:?}\n{screen}"));
    assert!(live.ends_with(|c: char| c.is_ascii_digit()), "elapsed time last: {live}");
    let counts: Vec<u64> =
        seen.iter().filter_map(|l| l.strip_prefix("read ")?.split(' ').next()?.replace(',', "").parse().ok()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]) && counts.iter().any(|&n| n > 0), "counts grow: {seen:?}");
    assert!(!screen.contains("msg/s"), "the line is cleared at the end:\n{screen}");
    assert!(screen.contains("run finished"), "{screen}");

    // Through a pipe (and in CI logs): nothing of it.
    let output = run_weir(&["run", file.to_str().unwrap()], Duration::from_secs(60));
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("msg/s") && !stderr.contains('\r'), "no progress in a pipe: {stderr}");
}

#[test]
fn the_progress_line_shows_the_share_of_an_input_file_read() {
    let scratch = Scratch::new();
    // 20,000 lines of ~100 bytes (2 MB, eight of the reader's 256 KiB
    // buffers) through a sink that writes 256 lines per 50 ms: about four
    // seconds.
    let lines: String = (0..20_000).map(|i| format!("{{\"value\":\"{i:0>80}\"}}\n")).collect();
    let input = scratch.write("in.ndjson", &lines);
    let file = scratch.write(
        "pipeline.toml",
        &format!(
            "[[source]]\nname = \"orders\"\nuri = {}\n\n\
             [[sink]]\nname = \"slow\"\nuri = \"null://?delay_ms=50\"\nbatch = {{ max_size = 256, max_wait_ms = 0 }}\n",
            support::toml_file_uri(&input)
        ),
    );
    let command = format!("{} run {}", env!("CARGO_BIN_EXE_weir"), file.display());
    let run = Tmux::start(&format!("env -u CI {command}"), 120, 10);
    let mut screen = String::new();
    let mut shares = Vec::new();
    let done = wait_until(Duration::from_secs(60), || {
        screen = run.capture();
        // `read 12,400 (37%) · written …`
        let share = screen.lines().find(|l| l.contains("msg/s")).and_then(|l| {
            let (_, rest) = l.split_once(" (")?;
            rest.split_once("%)")?.0.parse::<u64>().ok()
        });
        shares.extend(share);
        run.exit_code().is_some()
    });
    assert!(done, "the run ends:\n{screen}");
    assert_eq!(run.exit_code(), Some(0), "{screen}");
    shares.dedup();
    eprintln!("shares of the input shown: {shares:?}");
    assert!(shares.windows(2).all(|w| w[0] <= w[1]), "the share only grows: {shares:?}");
    assert!(shares.iter().any(|&s| s < 100), "a share below 100% while reading: {shares:?}");
    assert!(shares.iter().all(|&s| s <= 100), "{shares:?}");
}
