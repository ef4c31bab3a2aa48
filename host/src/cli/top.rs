//! `weir top [ADDR]`: a live terminal view of a running pipeline.
//!
//! It reads the admin listener's `GET /metrics` once a second (the same text
//! Prometheus scrapes, so `top` needs no endpoint of its own) and shows one
//! row per source, stage and sink: messages in and out per second, totals,
//! errors, dead-lettered, lag, plugin version and instances. `q` quits.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table};

use super::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};

/// How often the admin API is polled.
const POLL: Duration = Duration::from_secs(1);
/// How long one poll may take before the pipeline counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `weir top` against the admin listener at `addr` (`host:port`, or an
/// `http://` URL).
pub fn top(addr: &str) -> i32 {
    let url = match metrics_url(addr) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("weir top: {e}");
            return EXIT_USAGE;
        }
    };
    let client = Client::new(url);
    // Checked before the screen is taken over, so the message stays visible.
    let first = match client.poll() {
        Ok(scrape) => scrape,
        Err(e) => {
            eprintln!("weir top: {e}");
            return EXIT_RUNTIME;
        }
    };
    if !std::io::stdout().is_terminal() {
        eprintln!("weir top: stdout is not a terminal; for a one-off reading, fetch {} instead", client.url);
        return EXIT_USAGE;
    }
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("weir top: cannot use the terminal: {e}");
            return EXIT_RUNTIME;
        }
    };
    let mut view = View { url: client.url.clone(), status: Ok(()), previous: None, current: first };
    let result = (|| -> std::io::Result<()> {
        loop {
            terminal.draw(|frame| view.render(frame))?;
            if quit_within(POLL)? {
                return Ok(());
            }
            match client.poll() {
                Ok(scrape) => {
                    view.previous = Some(std::mem::replace(&mut view.current, scrape));
                    view.status = Ok(());
                }
                Err(e) => view.status = Err(e),
            }
        }
    })();
    ratatui::restore();
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("weir top: terminal error: {e}");
            EXIT_RUNTIME
        }
    }
}

/// The `/metrics` URL of `addr`; an error naming what is wrong with it.
fn metrics_url(addr: &str) -> Result<String, String> {
    let addr = addr.trim().trim_end_matches('/');
    let base = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let parsed = url::Url::parse(&base).map_err(|e| format!("`{addr}` is not an address (HOST:PORT): {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!("`{addr}`: the admin API speaks plain http://, not {}://", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) || parsed.port().is_none() {
        return Err(format!("`{addr}` needs a host and a port, e.g. 127.0.0.1:9090"));
    }
    Ok(format!("{}/metrics", base.trim_end_matches("/metrics")))
}

/// Waits up to `wait` for a key; true if it asks to quit (`q`, Esc, Ctrl-C).
fn quit_within(wait: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !event::poll(left)? {
            return Ok(false);
        }
        if let Event::Key(key) = event::read()? {
            let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
            if key.kind == KeyEventKind::Press && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c) {
                return Ok(true);
            }
        }
    }
}

/// Reads `/metrics` over HTTP.
struct Client {
    url: String,
    agent: ureq::Agent,
}

/// One reading of `/metrics`, and when it was taken.
struct Reading {
    at: Instant,
    scrape: Scrape,
}

impl Client {
    fn new(url: String) -> Self {
        let agent =
            ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).http_status_as_error(false).build().into();
        Client { url, agent }
    }

    fn poll(&self) -> Result<Reading, String> {
        let mut response = self.agent.get(&self.url).call().map_err(|e| {
            format!("nothing answers at {} ({e}): is `weir run` running with an [admin] listen address here?", self.url)
        })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("{} answered {status}: not the metrics of a weir admin listener", self.url));
        }
        let text = response.body_mut().read_to_string().map_err(|e| format!("reading {}: {e}", self.url))?;
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .map_err(|e| format!("{} is not Prometheus text: {e}", self.url))?;
        Ok(Reading { at: Instant::now(), scrape })
    }
}

/// The kind of a row, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Source,
    Stage,
    Sink,
}

/// One component's totals in one reading.
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    input: f64,
    output: f64,
    errors: f64,
    dead: f64,
    lag: Option<f64>,
    version: Option<String>,
    instances: Option<f64>,
}

/// The rows of a reading, by kind and component name.
fn rows(scrape: &Scrape) -> HashMap<(Kind, String), Totals> {
    let mut rows: HashMap<(Kind, String), Totals> = HashMap::new();
    for sample in &scrape.samples {
        let value = match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => continue,
        };
        let Some(component) = sample.labels.get("component") else { continue };
        let kind = match sample.labels.get("kind") {
            Some("source") => Some(Kind::Source),
            Some("stage") => Some(Kind::Stage),
            Some("sink") | Some("dead_letter") => Some(Kind::Sink),
            _ => None,
        };
        let metric = sample.metric.as_str();
        // Series without a `kind` label belong to a stage (plugin series) or
        // a source (lag).
        let kind = kind.unwrap_or(if metric.starts_with("weir_source_") { Kind::Source } else { Kind::Stage });
        if !metric.starts_with("weir_component_")
            && !metric.starts_with("weir_plugin_")
            && !metric.starts_with("weir_source_")
        {
            continue;
        }
        let row = rows.entry((kind, component.to_string())).or_default();
        match (kind, metric) {
            (Kind::Source, "weir_component_received_events_total") => {
                row.input += value;
                row.output += value;
            }
            (Kind::Source, "weir_source_lag_events") => *row.lag.get_or_insert(0.0) += value,
            (Kind::Stage, "weir_component_received_events_total") => row.input += value,
            (Kind::Stage, "weir_component_processed_events_total") => row.output += value,
            (Kind::Stage, "weir_component_filtered_events_total") => row.output -= value,
            (Kind::Stage, "weir_component_dead_lettered_events_total") => row.dead += value,
            (Kind::Stage, "weir_component_instances") => row.instances = Some(value),
            (Kind::Stage, "weir_plugin_info") if value >= 1.0 => {
                row.version = sample.labels.get("version").map(str::to_string);
            }
            (Kind::Sink, "weir_component_sent_events_total") => {
                row.input += value;
                row.output += value;
            }
            (Kind::Sink, "weir_component_pending_events") => row.input += value,
            (_, "weir_component_errors_total") => row.errors += value,
            _ => {}
        }
    }
    rows
}

/// What the screen shows.
struct View {
    url: String,
    status: Result<(), String>,
    previous: Option<Reading>,
    current: Reading,
}

impl View {
    fn render(&self, frame: &mut ratatui::Frame) {
        let [header, table] = Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(frame.area());
        let uptime = self
            .current
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == "weir_uptime_seconds")
            .and_then(|s| match s.value {
                Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
            .map_or_else(|| "?".to_string(), |s| clock(s as u64));
        let status = match &self.status {
            Ok(()) => Span::styled("● connected", Style::default().fg(Color::Green)),
            Err(e) => Span::styled(format!("○ disconnected, retrying: {e}"), Style::default().fg(Color::Red)),
        };
        let lines = vec![
            Line::from(vec![
                Span::styled("weir top ", Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(format!("{}  ", self.url)),
                status,
            ]),
            Line::from(format!("uptime {uptime}   refreshed every {}s   q quits", POLL.as_secs())),
        ];
        frame.render_widget(Paragraph::new(lines), header);

        let now = rows(&self.current.scrape);
        let before = self.previous.as_ref().map(|p| (rows(&p.scrape), self.current.at.duration_since(p.at)));
        let mut keys: Vec<_> = now.keys().cloned().collect();
        keys.sort();
        let body = keys.iter().map(|key| {
            let t = &now[key];
            let rate = |pick: fn(&Totals) -> f64| match &before {
                Some((old, elapsed)) if !elapsed.is_zero() => {
                    let old = old.get(key).map_or(0.0, pick);
                    format!("{:.0}", ((pick(t) - old) / elapsed.as_secs_f64()).max(0.0))
                }
                _ => "-".to_string(),
            };
            let kind = match key.0 {
                Kind::Source => "source",
                Kind::Stage => "stage",
                Kind::Sink => "sink",
            };
            Row::new(vec![
                kind.to_string(),
                key.1.clone(),
                rate(|t| t.input),
                rate(|t| t.output),
                count(t.input),
                count(t.output),
                count(t.errors),
                count(t.dead),
                t.lag.map_or_else(|| "-".to_string(), count),
                t.version.clone().unwrap_or_else(|| "-".to_string()),
                t.instances.map_or_else(|| "-".to_string(), count),
            ])
        });
        let header =
            Row::new(["KIND", "NAME", "IN/s", "OUT/s", "IN", "OUT", "ERRORS", "DEAD", "LAG", "VERSION", "INST"])
                .style(Style::default().add_modifier(Modifier::BOLD));
        let widths = [
            Constraint::Length(6),
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Length(4),
        ];
        frame.render_widget(Table::new(body, widths).header(header), table);
    }
}

/// A count as an integer.
fn count(v: f64) -> String {
    format!("{}", v.max(0.0) as u64)
}

/// Seconds as `1h02m03s`.
fn clock(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 { format!("{h}h{m:02}m{s:02}s") } else { format!("{m}m{s:02}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert_eq!(metrics_url("127.0.0.1:9090").unwrap(), "http://127.0.0.1:9090/metrics");
        assert_eq!(metrics_url("http://localhost:9/").unwrap(), "http://localhost:9/metrics");
        assert!(metrics_url("127.0.0.1").unwrap_err().contains("needs a host and a port"));
        assert!(metrics_url("https://x:1").unwrap_err().contains("plain http://"));
    }

    #[test]
    fn rows_come_from_the_metrics_text() {
        let text = "# TYPE weir_component_received_events_total counter\n\
            weir_component_received_events_total{component=\"in\",kind=\"source\"} 10\n\
            weir_component_received_events_total{component=\"f\",kind=\"stage\"} 10\n\
            weir_component_processed_events_total{component=\"f\",kind=\"stage\"} 8\n\
            weir_component_filtered_events_total{component=\"f\",kind=\"stage\"} 3\n\
            weir_component_dead_lettered_events_total{component=\"f\",kind=\"stage\"} 2\n\
            weir_plugin_info{component=\"f\",version=\"abc\"} 1\n\
            weir_plugin_info{component=\"f\",version=\"old\"} 0\n\
            weir_component_sent_events_total{component=\"out\",kind=\"sink\"} 5\n\
            weir_source_lag_events{component=\"in\",kind=\"source\",partition=\"t/0\"} 7\n\
            weir_source_lag_events{component=\"in\",kind=\"source\",partition=\"t/1\"} 5\n\
            weir_source_committed_offset{component=\"in\",kind=\"source\",partition=\"t/0\"} 900\n";
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let rows = rows(&scrape);
        let stage = &rows[&(Kind::Stage, "f".to_string())];
        assert_eq!((stage.input, stage.output, stage.dead), (10.0, 5.0, 2.0));
        assert_eq!(stage.version.as_deref(), Some("abc"));
        assert_eq!(rows[&(Kind::Source, "in".to_string())].input, 10.0);
        // Lag is summed over the source's partitions; offsets are not lag.
        assert_eq!(rows[&(Kind::Source, "in".to_string())].lag, Some(12.0));
        assert_eq!(rows[&(Kind::Sink, "out".to_string())].output, 5.0);
    }
}
