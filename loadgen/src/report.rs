//! Reports: `result.json` (everything), `README.md` (a person's summary), and SVG
//! charts (sessions, throughput, latency) a person can read at a glance; and the
//! comparison of several runs with ratios to the first.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use plotters::prelude::*;

use crate::run::RunResult;
use crate::stats::Percentiles;

pub fn write(dir: &Path, result: &RunResult) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("result.json"), serde_json::to_vec_pretty(result)?)?;
    let series =
        |f: &dyn Fn(&crate::run::Second) -> f64| result.timeline.iter().map(|s| (s.t, f(s))).collect::<Vec<_>>();
    chart(&dir.join("sessions.svg"), "Sessions", "sessions", &[("sessions", series(&|s| s.sessions as f64))])?;
    chart(
        &dir.join("throughput.svg"),
        "Throughput",
        "per second",
        &[
            ("logins/s", series(&|s| s.logins_per_second as f64)),
            ("sent/s", series(&|s| s.sent_per_second as f64)),
            ("delivered/s", series(&|s| s.delivered_per_second as f64)),
        ],
    )?;
    chart(
        &dir.join("latency.svg"),
        "Delivery latency",
        "milliseconds",
        &[
            ("p50", series(&|s| s.delivery_latency_us.p50 as f64 / 1000.0)),
            ("p99", series(&|s| s.delivery_latency_us.p99 as f64 / 1000.0)),
            ("login p50", series(&|s| s.login_latency_us.p50 as f64 / 1000.0)),
        ],
    )?;
    if result.timeline.iter().any(|s| s.server_rss_bytes.is_some()) {
        chart(
            &dir.join("server.svg"),
            "Server",
            "MiB / CPU %",
            &[
                ("RSS MiB", series(&|s| s.server_rss_bytes.unwrap_or(0) as f64 / 1048576.0)),
                ("CPU %", series(&|s| s.server_cpu_percent.unwrap_or(0.0))),
            ],
        )?;
    }
    std::fs::write(dir.join("README.md"), markdown(result))
}

fn chart(path: &Path, title: &str, unit: &str, lines: &[(&str, Vec<(f64, f64)>)]) -> io::Result<()> {
    let to_io = |e: String| io::Error::other(e);
    let x_max = lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.0)).fold(1.0, f64::max);
    let y_max = lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| to_io(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| to_io(e.to_string()))?;
    chart.configure_mesh().x_desc("seconds").y_desc(unit).draw().map_err(|e| to_io(e.to_string()))?;
    let colours = [&BLUE, &RED, &GREEN, &MAGENTA];
    for (i, (name, points)) in lines.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour))
            .map_err(|e| to_io(e.to_string()))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| to_io(e.to_string()))?;
    root.present().map_err(|e| to_io(e.to_string()))
}

fn ms(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

fn latency_row(name: &str, p: &Percentiles) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} |\n",
        p.count,
        ms(p.p50),
        ms(p.p90),
        ms(p.p99),
        ms(p.p999),
        ms(p.max)
    )
}

pub fn markdown(result: &RunResult) -> String {
    let mut text = String::new();
    let s = &result.summary;
    let _ = writeln!(text, "# Load run: {}\n", result.name);
    let _ = writeln!(text, "Command:\n\n```sh\n{}\n```\n", result.command);
    let m = &result.machine;
    let _ = writeln!(
        text,
        "Machine: {} CPUs ({}), {:.1} GiB memory, Linux {}, open-file limit {}. Workers: {} (key warm-up {:.1} s, not in the timeline).\n",
        m.nproc,
        m.cpu,
        m.memory_bytes as f64 / 1073741824.0,
        m.kernel,
        m.fd_limit,
        result.workers,
        result.warmup_seconds
    );
    if let Some(settings) = &result.settings {
        let _ = writeln!(
            text,
            "Profile `{}`: {} users, {:.0} logins/s, {} s, target {}, auth {:?}.\n",
            serde_json::to_value(settings.profile.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            settings.users,
            settings.profile.login_rate,
            settings.duration,
            settings.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" "),
            settings.auth
        );
    }
    text.push_str("| figure | value |\n|---|---|\n");
    let _ = writeln!(text, "| peak sessions | {} |", s.peak_sessions);
    let _ = writeln!(text, "| logins/s over the ramp (peak second) | {:.0} ({}) |", s.login_rate, s.login_rate_peak);
    let _ = writeln!(text, "| delivered messages/s (messaging window) | {:.0} |", s.delivered_rate);
    let _ = writeln!(
        text,
        "| messages sent / delivered / bounced / lost | {} / {} / {} / {} |",
        s.sent, s.delivered, s.bounced, s.lost
    );
    if s.presences > 0 {
        let _ = writeln!(
            text,
            "| presence stanzas received/s (first login to 5 s after the last) | {:.0} ({} in all) |",
            s.presence_rate, s.presences
        );
    }
    if s.rosters_complete > 0 || s.roster_items_mutual > 0 {
        let _ = writeln!(
            text,
            "| rosters completed (every contact `both`) / mutual contacts (roster-setup) | {} / {} |",
            s.rosters_complete, s.roster_items_mutual
        );
    }
    if let Some(bytes) = s.server_bytes_per_session {
        let _ = writeln!(
            text,
            "| server memory per session (RSS growth / sessions) | {:.0} bytes ({:.2} KiB) |",
            bytes,
            bytes / 1024.0
        );
    }
    if let (Some(start), Some(peak)) = (s.server_rss_start_bytes, s.server_rss_peak_sessions_bytes) {
        let _ = writeln!(
            text,
            "| server RSS at start / at peak sessions | {:.1} / {:.1} MiB |",
            start as f64 / 1048576.0,
            peak as f64 / 1048576.0
        );
    }
    if let Some(cpu) = s.server_cpu_us_per_login {
        let _ = writeln!(text, "| server CPU per login | {cpu:.1} µs |");
    }
    if let Some(cpu) = s.server_cpu_us_per_delivered {
        let _ = writeln!(text, "| server CPU per delivered message | {cpu:.1} µs |");
    }
    let t = &result.totals;
    let _ = writeln!(
        text,
        "| connect failures / login failures / stream errors / disconnects | {} / {} / {} / {} |",
        t.connect_failures, t.login_failures, t.stream_errors, t.disconnects
    );
    let _ = writeln!(text, "| logins that paid PBKDF2 (cold) | {} |\n", t.cold_logins);
    text.push_str("Latency (ms):\n\n| | count | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|\n");
    text.push_str(&latency_row("login (connect to bound resource)", &result.login_latency_us));
    text.push_str(&latency_row("message delivery", &result.delivery_latency_us));
    text.push_str("\n![sessions](sessions.svg)\n![throughput](throughput.svg)\n![latency](latency.svg)\n");
    if result.timeline.iter().any(|s| s.server_rss_bytes.is_some()) {
        text.push_str("![server](server.svg)\n");
    }
    for note in &result.notes {
        let _ = writeln!(text, "\nNote: {note}");
    }
    text
}

/// `comparison.md` for several runs of the same profile: figures side by side, with
/// the ratio of each to the first run.
pub fn compare(results: &[RunResult]) -> String {
    let mut text = String::from("# Comparison\n\n");
    let Some(first) = results.first() else { return text };
    text.push_str("| figure |");
    for r in results {
        let _ = write!(text, " {} |", r.name);
    }
    text.push_str("\n|---|");
    for _ in results {
        text.push_str("---|");
    }
    text.push('\n');
    type Getter = fn(&RunResult) -> Option<f64>;
    let rows: [(&str, Getter, bool); 10] = [
        ("peak sessions", |r| Some(r.summary.peak_sessions as f64), true),
        ("logins/s over the ramp", |r| Some(r.summary.login_rate), true),
        ("presence stanzas received/s (login storm)", |r| Some(r.summary.presence_rate), true),
        ("delivered messages/s", |r| Some(r.summary.delivered_rate), true),
        ("delivery p50 (ms)", |r| Some(r.delivery_latency_us.p50 as f64 / 1000.0), false),
        ("delivery p99 (ms)", |r| Some(r.delivery_latency_us.p99 as f64 / 1000.0), false),
        ("login p99 (ms)", |r| Some(r.login_latency_us.p99 as f64 / 1000.0), false),
        ("server bytes per session", |r| r.summary.server_bytes_per_session, false),
        ("server CPU µs per login", |r| r.summary.server_cpu_us_per_login, false),
        ("server CPU µs per delivered message", |r| r.summary.server_cpu_us_per_delivered, false),
    ];
    for (name, get, higher_is_better) in rows {
        let _ = write!(text, "| {name} |");
        let base = get(first);
        for r in results {
            match (get(r), base) {
                (Some(v), Some(b)) if b > 0.0 && !std::ptr::eq(r, first) && v > 0.0 => {
                    // Ratio: how many times better the first run is than this one.
                    let ratio = if higher_is_better { b / v } else { v / b };
                    let _ = write!(text, " {v:.1} (first is {ratio:.1}x) |");
                }
                (Some(v), _) => {
                    let _ = write!(text, " {v:.1} |");
                }
                (None, _) => text.push_str(" - |"),
            }
        }
        text.push('\n');
    }
    text.push_str("\nLost messages (sent, neither delivered nor bounced):");
    for r in results {
        let _ = write!(text, " {} {};", r.name, r.summary.lost);
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Second, Summary};

    fn result(name: &str, delivered_rate: f64, p99_us: u64) -> RunResult {
        let second = |t: f64| Second { t, sessions: 10, delivered_per_second: 100, ..Second::default() };
        RunResult {
            name: name.into(),
            command: format!("starling-loadgen run --name {name}"),
            timeline: vec![second(1.0), second(2.0)],
            delivery_latency_us: Percentiles { count: 200, p50: 500, p90: 800, p99: p99_us, p999: p99_us, max: p99_us },
            summary: Summary { peak_sessions: 10, delivered_rate, sent: 200, delivered: 200, ..Summary::default() },
            ..RunResult::default()
        }
    }

    /// Ratios say how many times better the first run is: higher-is-better figures
    /// divide the first by the other, lower-is-better ones the other by the first.
    #[test]
    fn comparison_ratios_favour_the_better_direction() {
        let text = compare(&[result("a", 1000.0, 2000), result("b", 250.0, 8000)]);
        assert!(text.contains("| delivered messages/s | 1000.0 | 250.0 (first is 4.0x) |"), "{text}");
        assert!(text.contains("| delivery p99 (ms) | 2.0 | 8.0 (first is 4.0x) |"), "{text}");
        assert!(text.contains("| server bytes per session | - | - |"), "{text}");
        assert!(text.contains("Lost messages (sent, neither delivered nor bounced): a 0; b 0;"), "{text}");
    }

    /// The summary carries the command and the headline figures; the folder gets the
    /// JSON, the Markdown and SVG charts.
    #[test]
    fn report_folder_has_summary_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        let run = result("a", 1000.0, 2000);
        write(dir.path(), &run).unwrap();
        let text = std::fs::read_to_string(dir.path().join("README.md")).unwrap();
        assert!(text.contains("starling-loadgen run --name a"), "{text}");
        assert!(text.contains("| messages sent / delivered / bounced / lost | 200 / 200 / 0 / 0 |"), "{text}");
        for chart in ["sessions.svg", "throughput.svg", "latency.svg"] {
            let svg = std::fs::read_to_string(dir.path().join(chart)).unwrap();
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{chart}");
        }
        let back: RunResult = serde_json::from_slice(&std::fs::read(dir.path().join("result.json")).unwrap()).unwrap();
        assert_eq!(back.summary.delivered, 200);
    }
}
