//! `taoflow report`: one self-contained HTML file for the last run of a pipeline — the stage
//! graph with each stage's state, a timeline of the runs that made the current results,
//! and per stage its parameters, metrics, training curves, confusion matrix, prune table,
//! INT8 vs FP32, dataset statistics, sample images and the PNGs it wrote. Everything is
//! inlined (SVG drawn here, PNGs as data URIs, CSS and a few lines of script): no network.
//! Light and dark themes (the system's, or the toggle), and a print style.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;

use crate::results::{fmt_num, metric_rows, Cell};
use crate::store::Manifest;

/// What the report shows of one stage.
pub struct StageView {
    pub name: String,
    pub kind: String,
    pub description: Option<String>,
    /// `up to date`, `stale`, `not run`, …, and why.
    pub state: String,
    pub state_class: &'static str,
    pub reasons: Vec<String>,
    pub upstream: Vec<usize>,
    /// The manifest of the result the lock file names (None: never ran, or not in the store).
    pub manifest: Option<Manifest>,
    /// Output name → its path in the workspace (present or not).
    pub outputs: Vec<(String, PathBuf)>,
    /// Other runs' metrics of this stage, to overlay training curves (label, metrics).
    pub compare: Vec<(String, Value)>,
}

pub struct ReportInput {
    pub pipeline: String,
    pub file: String,
    pub generated: String,
    pub version: String,
    pub stages: Vec<StageView>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const PALETTE: [&str; 8] = ["#2f6fde", "#e4572e", "#29a36a", "#a05fd6", "#d9a21b", "#17a2b8", "#c2185b", "#6c757d"];

const CSS: &str = r#"
:root { --bg:#ffffff; --fg:#1d2430; --muted:#5d6778; --card:#f5f7fa; --line:#d5dae3; --ok:#2f9e5b; --stale:#d9931b; --none:#8a94a6; --bad:#d64545; --accent:#2f6fde; }
:root[data-theme=dark] { --bg:#11151c; --fg:#e5e9f0; --muted:#9aa4b5; --card:#1a2029; --line:#343d4b; --accent:#6ea1ff; }
@media (prefers-color-scheme: dark) { :root:not([data-theme=light]) { --bg:#11151c; --fg:#e5e9f0; --muted:#9aa4b5; --card:#1a2029; --line:#343d4b; --accent:#6ea1ff; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1200px; padding: 24px; background: var(--bg); color: var(--fg); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 28px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; } h3 { font-size: 15px; margin: 16px 0 6px; }
.meta, .muted { color: var(--muted); }
section.stage { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin: 14px 0; break-inside: avoid; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
td, th { border-bottom: 1px solid var(--line); padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
td.n { text-align: right; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; }
.ok { background: var(--ok); } .stale { background: var(--stale); } .none { background: var(--none); } .bad { background: var(--bad); }
svg text { fill: var(--fg); font: 12px system-ui, sans-serif; } svg .axis { stroke: var(--muted); } svg .grid { stroke: var(--line); }
svg .node rect { stroke: var(--line); } svg .edge { stroke: var(--muted); fill: none; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } .charts svg { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; }
.imgs { display: flex; flex-wrap: wrap; gap: 8px; } .imgs img { max-width: 100%; max-height: 420px; border: 1px solid var(--line); border-radius: 4px; image-rendering: pixelated; }
.imgs.small img { height: 128px; }
.cm td { text-align: center; min-width: 34px; padding: 3px; border: 1px solid var(--line); }
button#theme { float: right; background: var(--card); color: var(--fg); border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; cursor: pointer; }
details summary { cursor: pointer; color: var(--muted); }
@media print { button#theme { display: none; } body { max-width: none; padding: 0; background: #fff; color: #000; } section.stage { border-color: #bbb; background: #fff; } details { display: block; } }
"#;

const SCRIPT: &str = r#"
(function () {
  var root = document.documentElement, b = document.getElementById('theme');
  function label() { b.textContent = root.getAttribute('data-theme') === 'dark' ? 'light theme' : 'dark theme'; }
  var dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches;
  root.setAttribute('data-theme', dark ? 'dark' : 'light');
  label();
  b.addEventListener('click', function () { root.setAttribute('data-theme', root.getAttribute('data-theme') === 'dark' ? 'light' : 'dark'); label(); });
})();
"#;

/// The whole report.
pub fn render(r: &ReportInput) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} — taoflow report</title><style>{CSS}</style></head><body>\
         <button id=\"theme\" type=\"button\">dark theme</button><h1>{}</h1><div class=\"meta\">{} · generated {} · taoflow {}</div>",
        esc(&r.pipeline),
        esc(&r.pipeline),
        esc(&r.file),
        esc(&r.generated),
        esc(&r.version)
    );
    let counts = r.stages.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.state.as_str()).or_insert(0) += 1;
        m
    });
    let _ = write!(h, "<p>{} stage(s): {}</p>", r.stages.len(), counts.iter().map(|(k, v)| format!("{v} {}", esc(k))).collect::<Vec<_>>().join(", "));
    h.push_str("<h2>Stages</h2>");
    h.push_str(&dag_svg(&r.stages));
    h.push_str("<h2>Timeline</h2>");
    h.push_str(&timeline_svg(&r.stages));
    h.push_str("<h2>Results</h2>");
    for s in &r.stages {
        h.push_str(&stage_section(s));
    }
    let _ = writeln!(h, "<script>{SCRIPT}</script></body></html>");
    h
}

/// Layered drawing of the graph: a column per depth (longest path from a source).
fn dag_svg(stages: &[StageView]) -> String {
    let n = stages.len();
    let mut depth = vec![0usize; n];
    // Stages come in a valid order for the graph, but compute to a fixed point to be safe.
    for _ in 0..n {
        for i in 0..n {
            for &u in &stages[i].upstream {
                depth[i] = depth[i].max(depth[u] + 1);
            }
        }
    }
    let mut row = vec![0usize; n];
    let mut per: BTreeMap<usize, usize> = BTreeMap::new();
    for i in 0..n {
        let c = per.entry(depth[i]).or_insert(0);
        row[i] = *c;
        *c += 1;
    }
    let (w, hgt, dx, dy) = (168.0, 40.0, 210.0, 58.0);
    let cols = depth.iter().max().map(|d| d + 1).unwrap_or(1);
    let rows = per.values().max().copied().unwrap_or(1);
    let (width, height) = (cols as f64 * dx + 10.0, rows as f64 * dy + 10.0);
    let pos = |i: usize| (10.0 + depth[i] as f64 * dx, 10.0 + row[i] as f64 * dy);
    let mut s = format!("<svg role=\"img\" aria-label=\"stage graph\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" style=\"max-width:100%;height:auto\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" class=\"axis\"/></marker></defs>");
    for (i, st) in stages.iter().enumerate() {
        for &u in &st.upstream {
            let ((x1, y1), (x2, y2)) = (pos(u), pos(i));
            let (ax, ay, bx, by) = (x1 + w, y1 + hgt / 2.0, x2, y2 + hgt / 2.0);
            let _ = write!(s, "<path class=\"edge\" marker-end=\"url(#arrow)\" d=\"M{ax},{ay} C{},{ay} {},{by} {bx},{by}\"/>", ax + 30.0, bx - 30.0);
        }
    }
    for (i, st) in stages.iter().enumerate() {
        let (x, y) = pos(i);
        let colour = match st.state_class {
            "ok" => "var(--ok)",
            "stale" => "var(--stale)",
            "bad" => "var(--bad)",
            _ => "var(--none)",
        };
        let _ = write!(
            s,
            "<g class=\"node\"><title>{} ({}): {}</title><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{hgt}\" rx=\"6\" fill=\"var(--card)\"/><rect x=\"{x}\" y=\"{y}\" width=\"6\" height=\"{hgt}\" rx=\"3\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\" font-weight=\"600\">{}</text><text x=\"{}\" y=\"{}\" class=\"muted\" style=\"fill:var(--muted)\">{} · {}</text></g>",
            esc(&st.name),
            esc(&st.kind),
            esc(&st.state),
            x + 14.0,
            y + 17.0,
            esc(&st.name),
            x + 14.0,
            y + 32.0,
            esc(&st.kind),
            esc(&st.state)
        );
    }
    s.push_str("</svg>");
    s
}

/// When each current result was made, how long it took, on which device.
fn timeline_svg(stages: &[StageView]) -> String {
    let runs: Vec<(&str, f64, f64, &str)> = stages.iter().filter_map(|s| s.manifest.as_ref().map(|m| (s.name.as_str(), m.provenance.started_unix as f64, m.provenance.duration_s.max(0.0), m.provenance.device.as_str()))).collect();
    if runs.is_empty() {
        return "<p class=\"muted\">No stage has a stored result yet: run the pipeline first.</p>".into();
    }
    let t0 = runs.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let t1 = runs.iter().map(|r| r.1 + r.2).fold(f64::NEG_INFINITY, f64::max).max(t0 + 1.0);
    let (left, width, bar) = (150.0, 760.0, 22.0);
    let height = runs.len() as f64 * (bar + 6.0) + 30.0;
    let x = |t: f64| left + (t - t0) / (t1 - t0) * width;
    let mut s = format!("<svg role=\"img\" aria-label=\"timeline\" width=\"{}\" height=\"{height}\">", left + width + 170.0);
    for (k, (name, start, dur, device)) in runs.iter().enumerate() {
        let y = 4.0 + k as f64 * (bar + 6.0);
        let (a, b) = (x(*start), x(start + dur).max(x(*start) + 2.0));
        let colour = if device.starts_with("cuda") { PALETTE[1] } else { PALETTE[0] };
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{a}\" y=\"{y}\" width=\"{}\" height=\"{bar}\" rx=\"3\" fill=\"{colour}\"><title>{}: {} on {}</title></rect><text x=\"{}\" y=\"{}\">{} · {}</text>",
            left - 8.0,
            y + 15.0,
            esc(name),
            b - a,
            esc(name),
            dur_text(*dur),
            esc(device),
            b + 6.0,
            y + 15.0,
            dur_text(*dur),
            esc(device)
        );
    }
    let _ = write!(s, "<line class=\"axis\" x1=\"{left}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>", left + width, height - 22.0, height - 22.0);
    let _ = write!(s, "<text x=\"{left}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">+{}</text></svg>", height - 6.0, esc(&unix_text(t0 as u64)), left + width, height - 6.0, dur_text(t1 - t0));
    s
}

fn dur_text(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// `YYYY-MM-DD HH:MM UTC` from Unix seconds (civil-from-days, no time-zone database).
pub fn unix_text(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// A line chart: several series of (x, y).
pub fn line_chart(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    if pts.is_empty() {
        return String::new();
    }
    let (w, h, l, r, t, b) = (390.0, 230.0, 66.0, 12.0, 26.0, 44.0);
    let (mut x0, mut x1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (mut y0, mut y1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    if x1 <= x0 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 <= y0 {
        let d = y0.abs().max(1e-3) * 0.05;
        y0 -= d;
        y1 += d;
    }
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0) * (h - t - b);
    let mut s = format!("<svg role=\"img\" aria-label=\"{}\" width=\"{w}\" height=\"{h}\"><text x=\"{l}\" y=\"16\" font-weight=\"600\">{}</text>", esc(title), esc(title));
    for k in 0..=4 {
        let y = y0 + (y1 - y0) * k as f64 / 4.0;
        let (gx, gy) = (w - r, py(y));
        let _ = write!(s, "<line class=\"grid\" x1=\"{l}\" x2=\"{gx}\" y1=\"{gy}\" y2=\"{gy}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", l - 4.0, gy + 4.0, fmt_num(y));
    }
    let (ax, ay) = (w - r, h - b);
    let _ = write!(s, "<line class=\"axis\" x1=\"{l}\" x2=\"{ax}\" y1=\"{ay}\" y2=\"{ay}\"/>");
    let _ = write!(s, "<text x=\"{l}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", h - b + 15.0, fmt_num(x0), w - r, h - b + 15.0, fmt_num(x1));
    let mut lx = l;
    for (k, (label, ps)) in series.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let path: Vec<String> = ps.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1))).collect();
        if path.is_empty() {
            continue;
        }
        let _ = write!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>", path.join(" "), esc(label));
        if ps.len() == 1 {
            let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>", px(ps[0].0), py(ps[0].1));
        }
        let _ = write!(s, "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>", h - 16.0, lx + 13.0, h - 7.0, esc(label));
        lx += 20.0 + label.chars().count() as f64 * 6.6;
    }
    s.push_str("</svg>");
    s
}

/// Per-epoch `history` → charts: losses, learning rate, and the rest (accuracy, mAP, …).
fn history_charts(own: &Value, compare: &[(String, Value)]) -> String {
    let runs: Vec<(String, &Value)> = std::iter::once(("this run".to_string(), own)).chain(compare.iter().map(|(l, v)| (l.clone(), v))).collect();
    type Series = Vec<(String, Vec<(f64, f64)>)>;
    let mut groups: BTreeMap<&'static str, Series> = BTreeMap::new();
    for (label, m) in &runs {
        let Some(hist) = m.get("history").and_then(Value::as_array) else { continue };
        let mut keys: Vec<String> = Vec::new();
        for e in hist {
            if let Some(o) = e.as_object() {
                for (k, v) in o {
                    if v.is_number() && !keys.contains(k) && !matches!(k.as_str(), "epoch" | "seconds" | "images_per_second" | "step") {
                        keys.push(k.clone());
                    }
                }
            }
        }
        for k in keys {
            let pts: Vec<(f64, f64)> = hist.iter().enumerate().filter_map(|(i, e)| Some((e.get("epoch").and_then(Value::as_f64).unwrap_or(i as f64 + 1.0), e.get(&k)?.as_f64()?))).collect();
            let group = if k.contains("loss") {
                "loss"
            } else if k == "lr" || k.ends_with("_lr") {
                "learning rate"
            } else {
                "quality"
            };
            let name = if runs.len() > 1 { format!("{k} ({label})") } else { k };
            groups.entry(group).or_default().push((name, pts));
        }
    }
    if groups.is_empty() {
        return String::new();
    }
    let mut s = String::from("<h3>Training curves (per epoch)</h3><div class=\"charts\">");
    for g in ["loss", "quality", "learning rate"] {
        if let Some(series) = groups.get(g) {
            s.push_str(&line_chart(g, series));
        }
    }
    s.push_str("</div>");
    s
}

fn confusion_table(m: &Value) -> String {
    let Some(cm) = m.get("confusion").and_then(Value::as_array) else { return String::new() };
    let names: Vec<String> = m.get("per_class").and_then(Value::as_array).map(|a| a.iter().map(|c| c.get("class").and_then(Value::as_str).unwrap_or("?").to_string()).collect()).unwrap_or_default();
    let rows: Vec<Vec<f64>> = cm.iter().map(|r| r.as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect()).unwrap_or_default()).collect();
    if rows.is_empty() || rows.len() > 60 {
        return String::new();
    }
    let mut s = String::from("<h3>Confusion matrix</h3><table class=\"cm\"><tr><th>true \\ predicted</th>");
    for j in 0..rows.len() {
        let _ = write!(s, "<th>{}</th>", esc(names.get(j).map(String::as_str).unwrap_or("?")));
    }
    s.push_str("</tr>");
    for (i, r) in rows.iter().enumerate() {
        let total: f64 = r.iter().sum::<f64>().max(1.0);
        let _ = write!(s, "<tr><th>{}</th>", esc(names.get(i).map(String::as_str).unwrap_or("?")));
        for (j, v) in r.iter().enumerate() {
            let a = v / total;
            let hue = if i == j { "47,158,91" } else { "214,69,69" };
            let _ = write!(s, "<td style=\"background:rgba({hue},{a:.3})\" title=\"{} of {}\">{}</td>", fmt_num(*v), fmt_num(total), fmt_num(*v));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

fn prune_table(m: &Value) -> String {
    let Some(layers) = m.get("layers").and_then(Value::as_array) else { return String::new() };
    let mut s = String::from("<h3>Channels per layer</h3><details open><summary>before → after</summary><table><tr><th>layer</th><th>before</th><th>after</th><th>kept</th></tr>");
    for l in layers {
        let (b, a) = (l.get("before").and_then(Value::as_f64).unwrap_or(0.0), l.get("after").and_then(Value::as_f64).unwrap_or(0.0));
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td><svg width=\"120\" height=\"10\"><rect width=\"120\" height=\"10\" fill=\"var(--line)\"/><rect width=\"{:.1}\" height=\"10\" fill=\"var(--accent)\"/></svg></td></tr>",
            esc(l.get("layer").and_then(Value::as_str).unwrap_or("?")),
            fmt_num(b),
            fmt_num(a),
            if b > 0.0 { 120.0 * a / b } else { 0.0 }
        );
    }
    s.push_str("</table></details>");
    s
}

fn quantize_table(m: &Value) -> String {
    let Some(e) = m.get("evaluation").and_then(Value::as_object) else { return String::new() };
    let mut fp32 = BTreeMap::new();
    let mut int8 = BTreeMap::new();
    for (k, v) in e {
        if let Some(x) = v.as_f64() {
            if let Some(n) = k.strip_prefix("fp32_") {
                fp32.insert(n.to_string(), x);
            } else if let Some(n) = k.strip_prefix("int8_") {
                int8.insert(n.to_string(), x);
            }
        }
    }
    if fp32.is_empty() {
        return String::new();
    }
    let mut s = String::from("<h3>INT8 vs FP32</h3><table><tr><th>metric</th><th>FP32</th><th>INT8</th><th>change</th></tr>");
    for (k, a) in &fp32 {
        let b = int8.get(k).copied();
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(k),
            fmt_num(*a),
            b.map(fmt_num).unwrap_or_default(),
            b.map(|b| format!("{:+.2} points", (b - a) * 100.0)).unwrap_or_default()
        );
    }
    let _ = write!(s, "</table><p class=\"muted\">{}</p>", esc(&e.iter().filter(|(k, v)| !k.starts_with("fp32_") && !k.starts_with("int8_") && !v.is_number()).map(|(k, v)| format!("{k}: {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect::<Vec<_>>().join(" · ")));
    s
}

/// Dataset statistics and a few samples with their labels drawn, for dataset artifacts.
fn dataset_section(path: &std::path::Path) -> String {
    let Ok(bytes) = std::fs::read(path.join("dataset.json")) else { return String::new() };
    let Ok(m) = serde_json::from_slice::<Value>(&bytes) else { return String::new() };
    let mut s = format!("<h3>Dataset</h3><p>{} · classes: {}</p>", esc(m.get("task").and_then(Value::as_str).unwrap_or("")), esc(&m.get("classes").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()));
    if let Some(splits) = m.get("splits").and_then(Value::as_object) {
        let classes: Vec<String> = splits.values().flat_map(|v| v.get("per_class").and_then(Value::as_object).map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()).fold(Vec::new(), |mut a, k| {
            if !a.contains(&k) {
                a.push(k);
            }
            a
        });
        s.push_str("<table><tr><th>split</th><th>samples</th>");
        for c in classes.iter().take(30) {
            let _ = write!(s, "<th>{}</th>", esc(c));
        }
        s.push_str("</tr>");
        for (name, v) in splits {
            let _ = write!(s, "<tr><td>{}</td><td class=\"n\">{}</td>", esc(name), v.get("count").map(|c| c.to_string()).unwrap_or_default());
            for c in classes.iter().take(30) {
                let n = v.get("per_class").and_then(|p| p.get(c)).map(|x| x.to_string()).unwrap_or_default();
                let b = v.get("boxes_per_class").and_then(|p| p.get(c)).map(|x| format!(" ({x} boxes)")).unwrap_or_default();
                let _ = write!(s, "<td class=\"n\">{n}{b}</td>", b = esc(&b));
            }
            s.push_str("</tr>");
        }
        s.push_str("</table>");
    }
    if let Some(img) = m.get("image") {
        let f = |k: &str| img.get(k).map(|d| format!("{}–{} (mean {})", d.get("min").map(|x| x.to_string()).unwrap_or_default(), d.get("max").map(|x| x.to_string()).unwrap_or_default(), d.get("mean").and_then(Value::as_f64).map(fmt_num).unwrap_or_default())).unwrap_or_default();
        let _ = write!(s, "<p class=\"muted\">image width {} · height {}</p>", esc(&f("width")), esc(&f("height")));
    }
    // A few samples of the first split, labels drawn (the `preview` command's pictures).
    if let Some(split) = m.get("splits").and_then(Value::as_object).and_then(|o| o.keys().next().cloned())
        && let Ok(tmp) = tempfile::tempdir()
        && let Ok(files) = crate::data::preview::preview(path, &split, 6, tmp.path())
        && !files.is_empty()
    {
        let _ = write!(s, "<p class=\"muted\">samples of `{}` (boxes and masks drawn):</p><div class=\"imgs small\">", esc(&split));
        for f in files {
            if let Some(b) = thumbnail(&tmp.path().join(&f), 192) {
                let _ = write!(s, "<img alt=\"{}\" src=\"data:image/png;base64,{}\">", esc(&f), base64::engine::general_purpose::STANDARD.encode(b));
            }
        }
        s.push_str("</div>");
    }
    s
}

/// A PNG no larger than `max` pixels a side (nearest-neighbour below 2x: label outlines stay crisp).
fn thumbnail(path: &std::path::Path, max: u32) -> Option<Vec<u8>> {
    let img = image::open(path).ok()?;
    let img = if img.width() > max || img.height() > max { img.thumbnail(max, max) } else { img };
    crate::data::image_io::encode_png(&img).ok()
}

/// PNGs a stage wrote into an output folder (PR curves, prediction grids), inlined.
fn pngs(path: &std::path::Path) -> String {
    let Ok(rd) = std::fs::read_dir(path) else { return String::new() };
    let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "png")).collect();
    files.sort();
    let mut s = String::new();
    for f in files.iter().take(6) {
        let Ok(b) = std::fs::read(f) else { continue };
        if b.len() > 4 << 20 {
            continue;
        }
        let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let _ = write!(s, "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption class=\"muted\">{}</figcaption></figure>", esc(&name), base64::engine::general_purpose::STANDARD.encode(&b), esc(&name));
    }
    if s.is_empty() { s } else { format!("<div class=\"imgs\">{s}</div>") }
}

fn stage_section(s: &StageView) -> String {
    let mut h = format!(
        "<section class=\"stage\" id=\"stage-{}\"><h3>{} <span class=\"muted\">({})</span> <span class=\"pill {}\">{}</span></h3>",
        esc(&s.name),
        esc(&s.name),
        esc(&s.kind),
        s.state_class,
        esc(&s.state)
    );
    if let Some(d) = &s.description {
        let _ = write!(h, "<p>{}</p>", esc(d));
    }
    if !s.reasons.is_empty() {
        let _ = write!(h, "<p class=\"muted\">{}</p>", s.reasons.iter().map(|r| esc(r)).collect::<Vec<_>>().join("<br>"));
    }
    let Some(m) = &s.manifest else {
        h.push_str("<p class=\"muted\">No stored result.</p></section>");
        return h;
    };
    let p = &m.provenance;
    let _ = write!(h, "<p class=\"muted\">made {} on {} ({}) in {} · key {}</p>", esc(&unix_text(p.started_unix)), esc(&p.host), esc(&p.device), dur_text(p.duration_s), esc(crate::hash::short(&m.key)));
    let mut flat = BTreeMap::new();
    crate::value::PVal::Table(m.fingerprint.params.clone()).flatten("", &mut flat);
    if !flat.is_empty() {
        h.push_str("<details><summary>parameters</summary><table>");
        for (k, v) in &flat {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v.to_string()));
        }
        h.push_str("</table></details>");
    }
    if let Some(metrics) = &m.metrics {
        let (rows, _lists) = metric_rows(metrics, false);
        if !rows.is_empty() {
            h.push_str("<h3>Metrics</h3><table>");
            for (k, v) in rows.iter().take(80) {
                let cls = if matches!(v, Cell::Num(_)) { " class=\"n\"" } else { "" };
                let _ = write!(h, "<tr><td>{}</td><td{cls}>{}</td></tr>", esc(k), esc(&v.to_string()));
            }
            h.push_str("</table>");
            if rows.len() > 80 {
                let _ = write!(h, "<p class=\"muted\">{} more: `taoflow show --all`</p>", rows.len() - 80);
            }
        }
        h.push_str(&history_charts(metrics, &s.compare));
        h.push_str(&confusion_table(metrics));
        h.push_str(&prune_table(metrics));
        h.push_str(&quantize_table(metrics));
    }
    let mut missing = Vec::new();
    for (name, path) in &s.outputs {
        if !path.exists() {
            missing.push(name.clone());
            continue;
        }
        if path.is_dir() {
            h.push_str(&dataset_section(path));
            h.push_str(&pngs(path));
        }
    }
    if !missing.is_empty() {
        let _ = write!(h, "<p class=\"muted\">Outputs not in the workspace ({}): `taoflow checkout` restores them, and their pictures into this report.</p>", esc(&missing.join(", ")));
    }
    h.push_str("</section>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(unix_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(unix_text(1_796_650_000), "2026-12-07 13:26 UTC");
        assert_eq!(unix_text(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn charts_scale_and_escape() {
        let s = line_chart("loss <train>", &[("a&b".into(), vec![(1.0, 2.0), (2.0, 1.0)]), ("flat".into(), vec![(1.0, 5.0)])]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("loss &lt;train&gt;") && s.contains("a&amp;b"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(line_chart("empty", &[("x".into(), vec![])]).is_empty());
    }
}
