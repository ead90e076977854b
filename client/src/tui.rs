//! The status screen (when stdout is a terminal), in ngrok's shape: the
//! session's state, the server and its RTT (read from the connection the
//! client holds), one line per tunnel, counters and the last requests.
//! Redrawn in place (ratatui + crossterm) on its own thread, so drawing
//! never runs on the runtime's workers; `q` or Ctrl-C asks the client to
//! stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table};
use ratatui::Frame;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::observe::Monitor;
use crate::status::Status;

/// What the screen shows besides the live state.
#[derive(Debug, Clone)]
pub struct Facts {
    pub server: String,
    pub version: &'static str,
    /// The inspector's URL, when it listens.
    pub inspector: Option<String>,
    /// The metrics listener, when on.
    pub metrics: Option<String>,
}

/// How often the screen is redrawn without input.
const REDRAW: Duration = Duration::from_millis(500);

/// Runs the screen on a thread of its own until `stop` (or `q`, Ctrl-C,
/// which cancel `stop`). The terminal is restored when it ends.
pub fn spawn(
    monitor: Arc<Monitor>,
    status: watch::Receiver<Status>,
    facts: Facts,
    stop: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("status-screen".into())
        .spawn(move || {
            let mut terminal = ratatui::init();
            loop {
                let _ = terminal.draw(|f| draw(f, &monitor, &status.borrow(), &facts));
                if stop.is_cancelled() {
                    break;
                }
                if event::poll(REDRAW).unwrap_or(false) {
                    if let Ok(Event::Key(k)) = event::read() {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if k.kind == KeyEventKind::Press && (k.code == KeyCode::Char('q') || ctrl_c)
                        {
                            stop.cancel();
                            break;
                        }
                    }
                }
            }
            ratatui::restore();
        })
}

fn since(t: Instant) -> String {
    let s = t.elapsed().as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

fn status_color(s: u16) -> Color {
    match s {
        200..=299 => Color::Green,
        300..=399 => Color::Cyan,
        400..=499 => Color::Yellow,
        _ => Color::Red,
    }
}

/// One frame. Pure over its inputs (the test harness reads it through tmux).
pub fn draw(f: &mut Frame, monitor: &Monitor, status: &Status, facts: &Facts) {
    let label = |s: &str| Span::styled(format!("{s:<26}"), Style::new().fg(Color::DarkGray));
    let mut lines: Vec<Line> = vec![
        Line::from(vec![
            Span::styled("tunnel", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw("   "),
            Span::styled("(q or Ctrl-C to quit)", Style::new().fg(Color::DarkGray)),
        ]),
        Line::raw(""),
    ];
    let circuits: Vec<(String, Duration)> = monitor
        .targets
        .load()
        .as_ref()
        .map(|t| {
            t.values()
                .filter_map(|t| t.circuit_open().map(|d| (t.local.clone(), d)))
                .collect()
        })
        .unwrap_or_default();
    let silent = monitor
        .last_heard()
        .map(|t| t.elapsed())
        .filter(|d| *d >= crate::liveness::SILENT_NOTICE);
    let session = match status {
        Status::Connecting => Line::from(vec![label("Session Status"), "connecting".yellow()]),
        Status::Online { .. } if silent.is_some() => Line::from(vec![
            label("Session Status"),
            "not answering".yellow(),
            Span::raw(format!(
                ": no reply from the server for {:.0}s (down, or the network cut?)",
                silent.unwrap_or_default().as_secs_f64()
            ))
            .yellow(),
        ]),
        Status::Online { .. } if !circuits.is_empty() => Line::from(vec![
            label("Session Status"),
            "online".green(),
            Span::raw(format!(
                ", circuit open for {} (next try in {:.0}s)",
                circuits[0].0,
                circuits[0].1.as_secs_f64().ceil()
            ))
            .yellow(),
        ]),
        Status::Online { .. } => Line::from(vec![label("Session Status"), "online".green()]),
        Status::Reconnecting {
            reason, retry_at, ..
        } => {
            // Once its moment has come, the attempt is under way.
            let next = match retry_at.map(|t| t.saturating_duration_since(Instant::now())) {
                Some(d) if !d.is_zero() => format!(" (next try in {:.1}s)", d.as_secs_f64()),
                Some(_) => " (trying now)".to_string(),
                None => String::new(),
            };
            Line::from(vec![
                label("Session Status"),
                "reconnecting".red(),
                Span::raw(format!(": {reason}{next}")),
            ])
        }
    };
    lines.push(session);
    lines.push(Line::from(vec![label("Version"), Span::raw(facts.version)]));
    let conn = monitor.conn.load();
    let server = match conn.as_deref() {
        Some(c) => {
            let remote = c.remote_address().to_string();
            let at = if tunnel_lib::quic::relay::is_relay_addr(&c.remote_address()) {
                " (TLS over TCP)".to_owned()
            } else if remote == facts.server {
                String::new()
            } else {
                format!(" ({remote})")
            };
            format!(
                "{}{at}, RTT {:.1} ms",
                facts.server,
                c.rtt().as_secs_f64() * 1000.0
            )
        }
        None => facts.server.clone(),
    };
    lines.push(Line::from(vec![label("Server"), Span::raw(server)]));
    if let Some(i) = &facts.inspector {
        lines.push(Line::from(vec![
            label("Web Interface"),
            Span::raw(i.clone()),
        ]));
    }
    if let Some(m) = &facts.metrics {
        lines.push(Line::from(vec![
            label("Metrics"),
            Span::raw(format!("http://{m}/metrics")),
        ]));
    }
    if let Status::Online { tunnels, .. } = status {
        for t in tunnels {
            lines.push(Line::from(vec![
                label("Forwarding"),
                Span::raw(format!("{} -> {}", t.url, t.local)),
            ]));
        }
    }
    lines.push(Line::from(vec![
        label("Up"),
        Span::raw(since(monitor.started)),
    ]));
    lines.push(Line::raw(""));

    let c = monitor.counters();
    let counters = Table::new(
        vec![
            Row::new(vec![
                "Connections",
                "ttl",
                "opn",
                "rt1",
                "rt5",
                "p50",
                "p90",
            ])
            .style(Style::new().fg(Color::DarkGray)),
            Row::new(vec![
                String::new(),
                monitor
                    .streams_total
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
                monitor
                    .streams_open
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .max(0)
                    .to_string(),
                format!("{:.2}", c.rate_1m),
                format!("{:.2}", c.rate_5m),
                format!("{:.1}ms", c.p50),
                format!("{:.1}ms", c.p90),
            ]),
        ],
        [
            Constraint::Length(26),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    );
    let recent = monitor.recent(12);
    let mut rows = Vec::new();
    if recent.is_empty() {
        // In the wide column: the first is as narrow as a method.
        rows.push(
            Row::new(vec![String::new(), "(none yet)".to_string()])
                .style(Style::new().fg(Color::DarkGray)),
        );
    }
    for e in &recent {
        let status_text = match e.status {
            0 => "-".to_string(),
            s => s.to_string(),
        };
        rows.push(Row::new(vec![
            ratatui::text::Text::raw(e.method.clone()),
            ratatui::text::Text::raw(e.path.clone()),
            ratatui::text::Text::styled(status_text, Style::new().fg(status_color(e.status))),
            ratatui::text::Text::raw(format!("{:.1}ms", e.duration.as_secs_f64() * 1000.0)),
            // How the visitor spoke.
            ratatui::text::Text::styled(
                if e.protocol == "HTTP/2" { "h2" } else { "1.1" },
                Style::new().fg(Color::DarkGray),
            ),
        ]));
    }
    let requests = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Min(20),
            Constraint::Length(5),
            Constraint::Length(10),
            Constraint::Length(3),
        ],
    )
    .block(ratatui::widgets::Block::new().title(Line::raw("HTTP Requests").fg(Color::DarkGray)));
    let logs: Vec<Line> = {
        let l = monitor.logs.lock().unwrap_or_else(|p| p.into_inner());
        l.iter()
            .rev()
            .take(4)
            .rev()
            .map(|s| Line::raw(s.clone()).fg(Color::DarkGray))
            .collect()
    };
    let head_height = lines.len() as u16;
    let [head, counts, reqs, log] = Layout::vertical([
        Constraint::Length(head_height),
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Length(logs.len() as u16),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(lines), head);
    f.render_widget(counters, counts);
    f.render_widget(requests, reqs);
    f.render_widget(Paragraph::new(logs), log);
}

/// A tracing writer that keeps lines for the screen (which owns the
/// terminal) instead of printing them.
#[derive(Clone)]
pub struct ScreenLog(pub Arc<Monitor>);

impl std::io::Write for ScreenLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.0.log_line(line.to_owned());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ScreenLog {
    type Writer = ScreenLog;
    fn make_writer(&'a self) -> ScreenLog {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn frame(monitor: &Monitor, status: &Status) -> String {
        let mut t = ratatui::Terminal::new(TestBackend::new(100, 30)).unwrap();
        let facts = Facts {
            server: "tunnel.example.com:4433".into(),
            version: "test",
            inspector: None,
            metrics: None,
        };
        t.draw(|f| draw(f, monitor, status, &facts)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn an_attempt_under_way_says_so_not_next_try_in_zero() {
        let m = Monitor::off();
        let past = Instant::now() - Duration::from_secs(3);
        let s = frame(
            &m,
            &Status::Reconnecting {
                attempt: 2,
                reason: "timed out".into(),
                retry_at: Some(past),
            },
        );
        assert!(s.contains("(trying now)"), "{s}");
        assert!(!s.contains("0.0s"), "{s}");
        assert!(s.contains("(none yet)"), "{s}");
    }

    #[test]
    fn a_silent_server_reads_as_not_answering() {
        let m = Monitor::off();
        let online = Status::Online {
            tunnels: Vec::new(),
            generation: 1,
        };
        m.set_heard(Some(Instant::now()));
        assert!(!frame(&m, &online).contains("not answering"));
        m.set_heard(Some(Instant::now() - Duration::from_secs(4)));
        let s = frame(&m, &online);
        assert!(s.contains("not answering") && s.contains("for 4s"), "{s}");
    }
}
