//! What the user sees while a run goes: progress bars on a terminal, plain lines otherwise
//! (CI logs, `nohup`: one line per epoch and a progress line at most every
//! `TAOFLOW_PROGRESS_INTERVAL` seconds, default 60), JSON lines with `--json`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{Reporter, StageReport, Status};

/// Colours are used on a terminal unless `NO_COLOR` is set (https://no-color.org).
pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// How running stages are shown (`taoflow run --progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Progress bars (stderr must be a terminal; else plain).
    Bar,
    /// Plain lines: each epoch, and a progress line at most every TAOFLOW_PROGRESS_INTERVAL seconds.
    Plain,
    /// No progress: stage results only.
    None,
}

pub struct Ui {
    json: bool,
    mode: ProgressMode,
    /// `--quiet`: no progress and no "running" lines; results, warnings and errors only.
    quiet: bool,
    /// Plain mode: when each running stage last printed a progress line.
    last_line: Mutex<HashMap<String, Instant>>,
    interval: Duration,
    color: bool,
    quiet_cached: bool,
    /// Verb used for stages that would run (`status` says "stale").
    would_run_word: &'static str,
    mp: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Ui {
    pub fn new(json: bool) -> Self {
        Self::with_progress(json, ProgressMode::Auto, false)
    }

    /// `mode` as `--progress` says; `quiet` as `--quiet` (which implies `none`).
    pub fn with_progress(json: bool, mode: ProgressMode, quiet: bool) -> Self {
        let color = color_enabled();
        let terminal = std::io::stderr().is_terminal() && std::env::var_os("TAOFLOW_NO_PROGRESS").is_none();
        let mode = match mode {
            _ if quiet => ProgressMode::None,
            ProgressMode::Auto | ProgressMode::Bar if terminal => ProgressMode::Bar,
            ProgressMode::Auto | ProgressMode::Bar => ProgressMode::Plain,
            m => m,
        };
        let mp = (!json && mode == ProgressMode::Bar).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let interval = Duration::from_secs_f64(std::env::var("TAOFLOW_PROGRESS_INTERVAL").ok().and_then(|v| v.parse::<f64>().ok()).filter(|v| *v >= 0.0).unwrap_or(60.0));
        Ui { json, mode, quiet, last_line: Mutex::new(HashMap::new()), interval, color, quiet_cached: false, would_run_word: "would run", mp, bars: Mutex::new(HashMap::new()) }
    }

    pub fn for_status() -> Self {
        let mut u = Ui::new(false);
        u.would_run_word = "stale";
        u.mp = None;
        u
    }

    pub fn quiet_cached(mut self, q: bool) -> Self {
        self.quiet_cached = q;
        self
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    fn line(&self, text: &str) {
        match &self.mp {
            Some(mp) => {
                let _ = mp.println(text);
            }
            None => {
                let mut e = std::io::stderr().lock();
                let _ = writeln!(e, "{text}");
            }
        }
    }

    /// Render one stage's result as text.
    pub fn describe(&self, r: &StageReport) -> String {
        let (word, code) = match r.status {
            Status::Ran => ("ran", "1;32"),
            Status::Cached => ("cached", "1;36"),
            Status::Failed => ("failed", "1;31"),
            Status::Skipped => ("skipped", "1;33"),
            Status::WouldRun => (self.would_run_word, "1;33"),
            Status::Interrupted => ("interrupted", "1;31"),
        };
        let mut s = format!("{} {}", self.paint(&format!("{word:>11}"), code), r.stage);
        match r.status {
            Status::Ran => {
                s.push_str(&format!(" in {:.2}s", r.duration_s));
                if !r.reasons.is_empty() {
                    s.push_str(&format!(": {}", r.reasons.join("; ")));
                }
                for n in &r.notes {
                    s.push_str(&format!("\n              {n}"));
                }
            }
            Status::Cached => {
                s.push_str(": cache hit");
                if !r.restored.is_empty() {
                    let verb = if self.would_run_word == "stale" { "will restore" } else { "restored" };
                    s.push_str(&format!(", {verb} {} from the store", r.restored.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")));
                }
                if let Some(first) = r.reasons.first()
                    && first == "made by another taoflow process"
                {
                    s.push_str(" (made by another taoflow process)");
                } else if !r.restored.is_empty() {
                    for reason in &r.reasons {
                        s.push_str(&format!("\n              - {reason}"));
                    }
                }
            }
            Status::WouldRun => {
                for reason in &r.reasons {
                    s.push_str(&format!("\n              - {reason}"));
                }
            }
            Status::Failed | Status::Skipped | Status::Interrupted => {
                if let Some(e) = &r.error {
                    let mut lines = e.lines();
                    if let Some(first) = lines.next() {
                        s.push_str(&format!(": {first}"));
                    }
                    for l in lines {
                        s.push_str(&format!("\n              {l}"));
                    }
                }
                if r.status == Status::Failed
                    && let Some(log) = &r.log
                {
                    s.push_str(&format!("\n              log: {}", log.display()));
                }
            }
        }
        s
    }
}

impl Reporter for Ui {
    fn started(&self, stage: &str) {
        self.last_line.lock().unwrap_or_else(|e| e.into_inner()).insert(stage.to_string(), Instant::now());
        if self.json || self.quiet {
            return;
        }
        match &self.mp {
            Some(mp) => {
                let pb = mp.add(ProgressBar::new_spinner());
                pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").unwrap_or_else(|_| ProgressStyle::default_spinner()));
                pb.set_message(format!("running {stage}"));
                pb.enable_steady_tick(Duration::from_millis(120));
                self.bars.lock().unwrap_or_else(|e| e.into_inner()).insert(stage.to_string(), pb);
            }
            None => self.line(&format!("{} {stage}", self.paint(&format!("{:>11}", "running"), "1;34"))),
        }
    }

    fn waiting(&self, stage: &str, why: &str) {
        // Also with --json: stdout holds the JSON, this goes to stderr.
        self.line(&format!("{} {stage}: {why}", self.paint(&format!("{:>11}", "waiting"), "1;33")));
    }

    fn finished(&self, r: &StageReport) {
        if let Some(pb) = self.bars.lock().unwrap_or_else(|e| e.into_inner()).remove(&r.stage) {
            pb.finish_and_clear();
        }
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
            return;
        }
        if self.quiet_cached && r.status == Status::Cached && r.restored.is_empty() {
            return;
        }
        self.line(&self.describe(r));
    }

    fn progress(&self, stage: &str, done: u64, total: u64, msg: &str) {
        if self.json {
            return;
        }
        if self.mode == ProgressMode::Plain {
            let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.get(stage).is_none_or(|t| t.elapsed() >= self.interval);
            if due {
                last.insert(stage.to_string(), Instant::now());
                drop(last);
                self.line(&format!("{} {stage}: {done}/{total} {msg}", self.paint(&format!("{:>11}", "progress"), "2")));
            }
            return;
        }
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pb) = bars.get(stage) {
            if pb.length() != Some(total) {
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} [{bar:24}] {pos}/{len} {msg} (ETA {eta})")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                pb.set_prefix(stage.to_string());
                pb.set_length(total);
            }
            pb.set_position(done);
            pb.set_message(msg.to_string());
        }
    }

    fn note(&self, stage: &str, msg: &str) {
        if self.json || self.mode == ProgressMode::None {
            return;
        }
        self.last_line.lock().unwrap_or_else(|e| e.into_inner()).insert(stage.to_string(), Instant::now());
        self.line(&format!("{} {stage}: {msg}", self.paint(&format!("{:>11}", "progress"), "2")));
    }

    fn warn(&self, msg: &str) {
        self.line(&format!("{}: {msg}", self.paint("warning", "1;33")));
    }
}

/// A throughput for people: whole numbers from 10 up, else 2 significant digits, so a slow
/// CPU run reads `0.21 img/s`, not `0 img/s`.
pub fn rate(x: f64) -> String {
    if !x.is_finite() || x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod rate_tests {
    #[test]
    fn rates_keep_two_digits_below_ten() {
        assert_eq!(super::rate(1234.4), "1234");
        assert_eq!(super::rate(12.6), "13");
        assert_eq!(super::rate(3.26), "3.3");
        assert_eq!(super::rate(0.2149), "0.21");
    }
}
