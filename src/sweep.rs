//! Sweeps: `taoflow run P -S train.lr=0.001,0.01 -S prune.threshold=0.1,0.3` runs the grid
//! of variants (`--sweep random:N` draws N of them from lists and `lo..hi` ranges). Each
//! variant is the pipeline with its overrides, run in a workspace of its own under the store
//! (`<store>/exps/<pipeline>/<variant>/`: a mirror of the project whose entries link to the
//! real ones, except the folders that hold outputs), so nothing lands in the user's
//! workspace; stages the variants have in common have the same key and run once. The
//! variants run at once on one set of job slots and GPUs. `exp show` lists them beside the
//! git history, `exp apply` writes one's overrides into the pipeline file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lockfile::LockFile;

/// One swept parameter: `stage.key` and the values it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub path: String,
    pub choice: Choice,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Values as written (TOML value text), in order.
    List(Vec<String>),
    /// `lo..hi` (uniform) or `log:lo..hi` (log-uniform); integers when both bounds are.
    Range { lo: f64, hi: f64, int: bool, log: bool },
}

/// How variants are made from the axes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Grid,
    Random(usize),
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        if s == "grid" {
            return Ok(Mode::Grid);
        }
        match s.strip_prefix("random:").map(str::parse::<usize>) {
            Some(Ok(n)) if n > 0 => Ok(Mode::Random(n)),
            _ => Err(format!("`{s}` is not a sweep: use `grid` or `random:N` (N > 0 variants)")),
        }
    }
}

/// Split at commas that are not inside brackets, braces or quotes: `0.1,0.2` → two values,
/// `[1,2]` and `"a,b"` → one.
pub fn split_top_level(v: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None::<char>);
    for c in v.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c)
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c)
            }
            (None, '[' | '{') => {
                depth += 1;
                cur.push(c)
            }
            (None, ']' | '}') => {
                depth -= 1;
                cur.push(c)
            }
            (None, ',') if depth == 0 => out.push(std::mem::take(&mut cur).trim().to_string()),
            (None, c) => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

fn parse_range(v: &str) -> Option<Choice> {
    let (log, body) = match v.strip_prefix("log:") {
        Some(b) => (true, b),
        None => (false, v),
    };
    let (a, b) = body.split_once("..")?;
    let int = a.trim().parse::<i64>().is_ok() && b.trim().parse::<i64>().is_ok();
    let (lo, hi) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
    Some(Choice::Range { lo, hi, int, log })
}

/// `-S` arguments → the overrides every variant shares and the swept axes. A value with
/// top-level commas is a list; `lo..hi` / `log:lo..hi` a range (random sweeps only).
pub fn parse_axes(sets: &[String]) -> Result<(Vec<String>, Vec<Axis>), String> {
    let (mut fixed, mut axes) = (Vec::new(), Vec::new());
    for s in sets {
        let Some((path, value)) = s.split_once('=') else {
            // Not ours to judge: the pipeline loader reports it with its position.
            fixed.push(s.clone());
            continue;
        };
        let path = path.trim().to_string();
        if let Some(r) = parse_range(value.trim()) {
            if let Choice::Range { lo, hi, log, .. } = r
                && (hi < lo || (log && lo <= 0.0))
            {
                return Err(format!("-S {s}: a range needs lo <= hi{}", if log { " and lo > 0 (log)" } else { "" }));
            }
            axes.push(Axis { path, choice: r });
            continue;
        }
        let values = split_top_level(value);
        if values.len() > 1 {
            if values.iter().any(String::is_empty) {
                return Err(format!("-S {s}: an empty value in the list\n  = hint: -S train.lr=0.001,0.01"));
            }
            axes.push(Axis { path, choice: Choice::List(values) });
        } else {
            fixed.push(s.clone());
        }
    }
    let mut seen = BTreeSet::new();
    for a in &axes {
        if !seen.insert(a.path.clone()) {
            return Err(format!("`{}` is swept twice: give each parameter one -S", a.path));
        }
    }
    Ok((fixed, axes))
}

fn fmt_draw(x: f64, int: bool) -> String {
    if int {
        format!("{}", x.round() as i64)
    } else {
        // Four significant digits, written as the lock file writes floats (always a TOML float).
        crate::value::fmt_float(format!("{x:.4e}").parse().unwrap_or(x))
    }
}

/// The variants: each a list of `stage.key=value` overrides (axes only; `fixed` is added by
/// the caller). Random draws are seeded by `seed`, so the same command gives the same variants.
pub fn expand(axes: &[Axis], mode: Mode, seed: u64) -> Result<Vec<Vec<String>>, String> {
    match mode {
        Mode::Grid => {
            let mut out: Vec<Vec<String>> = vec![Vec::new()];
            for a in axes {
                let Choice::List(vals) = &a.choice else {
                    return Err(format!("`{}` is a range: ranges need `--sweep random:N`; a grid takes lists (-S {}=a,b,c)", a.path, a.path));
                };
                out = out.into_iter().flat_map(|v| vals.iter().map(move |x| [v.clone(), vec![format!("{}={x}", a.path)]].concat())).collect();
            }
            Ok(out)
        }
        Mode::Random(n) => {
            let mut rng = crate::data::rng::Rng::for_purpose(seed, "sweep");
            let mut out = Vec::new();
            let mut seen = BTreeSet::new();
            // Distinct variants; lists alone may hold fewer combinations than asked for.
            for _ in 0..n * 20 {
                if out.len() == n {
                    break;
                }
                let v: Vec<String> = axes
                    .iter()
                    .map(|a| {
                        let x = match &a.choice {
                            Choice::List(vals) => vals[rng.below(vals.len() as u64) as usize].clone(),
                            Choice::Range { lo, hi, int: true, .. } => fmt_draw(lo + rng.below((hi - lo) as u64 + 1) as f64, true),
                            Choice::Range { lo, hi, log: true, .. } => fmt_draw((lo.ln() + rng.f64() * (hi.ln() - lo.ln())).exp(), false),
                            Choice::Range { lo, hi, .. } => fmt_draw(lo + rng.f64() * (hi - lo), false),
                        };
                        format!("{}={x}", a.path)
                    })
                    .collect();
                if seen.insert(v.clone()) {
                    out.push(v);
                }
            }
            Ok(out)
        }
    }
}

/// A variant's name: `v` and 7 hex digits of its overrides (sorted), the same every time.
pub fn variant_name(overrides: &[String]) -> String {
    let mut o: Vec<&String> = overrides.iter().collect();
    o.sort();
    let h = blake3::hash(o.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n").as_bytes());
    format!("v{}", &h.to_hex()[..7])
}

/// What `exp show` and `exp apply` read back: written beside the variant's lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantRecord {
    pub name: String,
    /// The pipeline file the variant was made from (absolute).
    pub pipeline: PathBuf,
    /// Every `-S` of the variant (shared and swept), as given.
    pub overrides: Vec<String>,
    /// Unix seconds of the sweep that last ran it.
    pub time: u64,
}

pub const RECORD: &str = "variant.json";

/// Where the variants of a pipeline file live: `<store>/exps/<stem>-<8 hex of its path>`.
pub fn exps_dir(store_root: &Path, pipeline: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(pipeline).unwrap_or_else(|_| pipeline.to_path_buf());
    let stem = pipeline.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "pipeline".into());
    store_root.join("exps").join(format!("{stem}-{}", &blake3::hash(abs.to_string_lossy().as_bytes()).to_hex()[..8]))
}

/// The recorded variants of a pipeline, with their lock files (empty when none ran).
pub fn list_variants(store_root: &Path, pipeline: &Path) -> Vec<(VariantRecord, LockFile)> {
    let dir = exps_dir(store_root, pipeline);
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else { return out };
    for e in rd.flatten() {
        let Ok(bytes) = std::fs::read(e.path().join(RECORD)) else { continue };
        let Ok(rec) = serde_json::from_slice::<VariantRecord>(&bytes) else { continue };
        let Some(lock) = variant_lock_path(&e.path()) else { continue };
        out.push((rec, LockFile::read(&lock)));
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    out
}

/// A variant's lock file: the pipeline's lock file name at the pipeline's place in the mirror.
fn variant_lock_path(variant_dir: &Path) -> Option<PathBuf> {
    let rel = std::fs::read_to_string(variant_dir.join("pipeline-path")).ok()?;
    let p = variant_dir.join("ws").join(rel.trim());
    Some(crate::config::lock_path_for(p.parent()?, &p))
}

/// Make (or refresh) `dest` as a mirror of `root`: every entry a symlink to the real one,
/// except folders in `real` (recreated as folders and mirrored inside) and paths in `skip`
/// (left out: outputs, the lock file, the store). Variant outputs already in `dest` stay.
pub fn mirror(root: &Path, dest: &Path, real: &BTreeSet<PathBuf>, skip: &BTreeSet<PathBuf>) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut wanted = BTreeSet::new();
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let src = e.path();
        let name = e.file_name();
        if skip.contains(&src) {
            continue;
        }
        wanted.insert(name.clone());
        let dst = dest.join(&name);
        if real.contains(&src) && src.is_dir() {
            if dst.symlink_metadata().map(|m| m.file_type().is_symlink()).unwrap_or(false) {
                std::fs::remove_file(&dst)?;
            }
            mirror(&src, &dst, real, skip)?;
            continue;
        }
        match dst.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                if std::fs::read_link(&dst)? == src {
                    continue;
                }
                std::fs::remove_file(&dst)?;
            }
            // A real file or folder here is the variant's own output: keep it.
            Ok(_) => continue,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&src, &dst)?;
    }
    // Links to entries the project no longer has.
    for e in std::fs::read_dir(dest)? {
        let e = e?;
        if !wanted.contains(&e.file_name()) && e.file_type()?.is_symlink() {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// A variant ready to run: its pipeline loaded from its mirrored workspace.
pub struct Variant {
    pub name: String,
    /// The swept overrides alone (what tells variants apart).
    pub swept: Vec<String>,
    pub pipeline: std::sync::Arc<crate::config::Pipeline>,
    pub graph: std::sync::Arc<crate::graph::Graph>,
}

/// Validate every variant's pipeline (so that a bad value fails before anything runs),
/// make or refresh its workspace and record it. Errors are rendered diagnostics.
pub fn prepare(pipeline_path: &Path, fixed: &[String], variants: &[Vec<String>], store_root: &Path) -> Result<Vec<Variant>, String> {
    use std::sync::Arc;
    let color = crate::ui::color_enabled();
    let abs = std::fs::canonicalize(pipeline_path).map_err(|e| format!("cannot read pipeline file `{}`: {e}", pipeline_path.display()))?;
    let store_abs = std::fs::canonicalize(store_root).unwrap_or_else(|_| store_root.to_path_buf());
    let exps = exps_dir(store_root, pipeline_path);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut out = Vec::new();
    for swept in variants {
        let overrides: Vec<String> = fixed.iter().chain(swept.iter()).cloned().collect();
        let p0 = crate::config::load(&abs, &overrides).map_err(|d| d.render(color))?;
        crate::graph::build(&p0).map_err(|d| d.render(color))?;
        let root = crate::config::project_root(&p0.dir);
        let within = |p: &Path| p.starts_with(&root);
        let mut real: BTreeSet<PathBuf> = p0.dir.ancestors().filter(|a| within(a)).map(Path::to_path_buf).collect();
        let mut skip: BTreeSet<PathBuf> = [p0.lock_path(), store_abs.clone()].into();
        for s in &p0.stages {
            for o in &s.def.outputs {
                let o = p0.dir.join(&o.path);
                real.extend(o.ancestors().skip(1).filter(|a| within(a)).map(Path::to_path_buf));
                skip.insert(o);
            }
        }
        let name = variant_name(swept);
        let vdir = exps.join(&name);
        let ws = vdir.join("ws");
        mirror(&root, &ws, &real, &skip).map_err(|e| format!("cannot make the workspace of variant {name} in {}: {e}", ws.display()))?;
        let rel = abs.strip_prefix(&root).map_err(|_| format!("{} is not inside {}", abs.display(), root.display()))?;
        crate::store::write_atomic(&vdir.join("pipeline-path"), rel.to_string_lossy().as_bytes()).map_err(|e| format!("cannot record variant {name}: {e}"))?;
        let rec = VariantRecord { name: name.clone(), pipeline: abs.clone(), overrides: overrides.clone(), time: now };
        crate::store::write_atomic(&vdir.join(RECORD), &serde_json::to_vec_pretty(&rec).expect("record serialises")).map_err(|e| format!("cannot record variant {name}: {e}"))?;
        let p = crate::config::load(&ws.join(rel), &overrides).map_err(|d| d.render(color))?;
        let g = crate::graph::build(&p).map_err(|d| d.render(color))?;
        out.push(Variant { name, swept: swept.clone(), pipeline: Arc::new(p), graph: Arc::new(g) });
    }
    Ok(out)
}

/// Stage names as `variant/stage` for the reporter, so the variants' lines tell apart.
struct Prefixed {
    name: String,
    inner: std::sync::Arc<dyn crate::engine::Reporter>,
}

impl Prefixed {
    fn n(&self, stage: &str) -> String {
        format!("{}/{stage}", self.name)
    }
}

impl crate::engine::Reporter for Prefixed {
    fn started(&self, stage: &str) {
        self.inner.started(&self.n(stage))
    }
    fn waiting(&self, stage: &str, why: &str) {
        let why = if why.starts_with("another taoflow process") { "another variant is running this same stage; waiting for its result" } else { why };
        self.inner.waiting(&self.n(stage), why)
    }
    fn finished(&self, report: &crate::engine::StageReport) {
        let mut r = report.clone();
        r.stage = self.n(&r.stage);
        self.inner.finished(&r)
    }
    fn warn(&self, msg: &str) {
        self.inner.warn(&format!("{}: {msg}", self.name))
    }
    fn progress(&self, stage: &str, done: u64, total: u64, msg: &str) {
        self.inner.progress(&self.n(stage), done, total, msg)
    }
    fn note(&self, stage: &str, msg: &str) {
        self.inner.note(&self.n(stage), msg)
    }
}

/// Run the variants at once on one set of job slots and GPUs; each summary in `variants`' order.
pub async fn run_all(
    variants: &[Variant],
    store: std::sync::Arc<crate::store::Store>,
    opts: crate::engine::RunOptions,
    reporter: std::sync::Arc<dyn crate::engine::Reporter>,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> Vec<crate::engine::RunSummary> {
    use std::sync::Arc;
    let res = Arc::new(crate::engine::Resources::new(opts.jobs, opts.device));
    let mut set = tokio::task::JoinSet::new();
    for (i, v) in variants.iter().enumerate() {
        let (p, g, store, opts, res, cancel) = (Arc::clone(&v.pipeline), Arc::clone(&v.graph), Arc::clone(&store), opts.clone(), Arc::clone(&res), cancel.clone());
        let rep: Arc<dyn crate::engine::Reporter> = Arc::new(Prefixed { name: v.name.clone(), inner: Arc::clone(&reporter) });
        set.spawn(async move { (i, crate::engine::run_with(p, g, store, opts, rep, cancel, &res).await) });
    }
    let mut out: Vec<Option<crate::engine::RunSummary>> = (0..variants.len()).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, s)) => out[i] = Some(s),
            Err(e) => tracing::error!("a variant's run crashed: {e}"),
        }
    }
    out.into_iter().map(|s| s.unwrap_or(crate::engine::RunSummary { reports: Vec::new(), interrupted: true })).collect()
}

/// Write `stage.key=value` overrides into the pipeline file, keeping its comments and layout
/// (toml_edit), as `-S` reads them (`-S train.lr` on an `exec` stage is `params.lr`). The
/// result is validated before it replaces the file (atomically). Returns `key: old → new`.
pub fn apply(pipeline: &Path, overrides: &[String]) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(pipeline).map_err(|e| format!("cannot read {}: {e}", pipeline.display()))?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{} is not valid TOML: {e}", pipeline.display()))?;
    let mut changed = Vec::new();
    for o in overrides {
        let (path, value) = o.split_once('=').ok_or_else(|| format!("override `{o}` has no `=`"))?;
        let parts: Vec<&str> = path.trim().split('.').collect();
        if parts.len() < 2 {
            return Err(format!("override `{o}` must name a stage and a key"));
        }
        let value: toml_edit::Value = value.trim().parse().unwrap_or_else(|_| toml_edit::Value::from(value.trim()));
        let full: Vec<String> = if parts[0] == "pipeline" {
            parts.iter().map(|s| s.to_string()).collect()
        } else {
            let stage = &doc.get("stages").and_then(|s| s.get(parts[0])).ok_or_else(|| format!("{} has no stage `{}`", pipeline.display(), parts[0]))?;
            let kind = stage.get("kind").and_then(|k| k.as_str()).and_then(crate::stages::lookup);
            let key = parts[1];
            let top = crate::config::COMMON_KEYS.contains(&key) || kind.is_some_and(|k| k.keys().contains(&key));
            let mut full = vec!["stages".to_string(), parts[0].to_string()];
            if let (false, Some(pk)) = (top, kind.and_then(|k| k.free_params_key())) {
                full.push(pk.to_string());
            }
            full.extend(parts[1..].iter().map(|s| s.to_string()));
            full
        };
        let mut item = doc.as_item_mut();
        for k in &full[..full.len() - 1] {
            if item.get(k).is_none() {
                item[k.as_str()] = toml_edit::table();
            }
            item = &mut item[k.as_str()];
        }
        let last = full.last().expect("two parts at least");
        let old = item.get(last).and_then(|i| i.as_value()).map(|v| v.to_string().trim().to_string());
        let mut v = value.clone();
        v.decor_mut().clear();
        let new = v.to_string();
        if old.as_deref() != Some(new.as_str()) {
            changed.push(format!("{}: {} → {new}", full[if full[0] == "stages" { 1 } else { 0 }..].join("."), old.unwrap_or_else(|| "(unset)".into())));
        }
        // Keep the old value's spacing and trailing comment.
        let mut v = value;
        if let Some(oldv) = item.get(last).and_then(|i| i.as_value()) {
            *v.decor_mut() = oldv.decor().clone();
        }
        item[last.as_str()] = toml_edit::Item::Value(v);
    }
    let new_text = doc.to_string();
    let dir = crate::config::pipeline_dir(pipeline).map_err(|(d, e)| format!("cannot open {}: {e}", d.display()))?;
    crate::config::parse(pipeline, dir, new_text.clone(), &[]).map_err(|d| format!("the pipeline would not be valid with these values; left unchanged:\n{}", d.render(false)))?;
    crate::store::write_atomic(pipeline, new_text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", pipeline.display()))?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_at_top_level_commas_only() {
        assert_eq!(split_top_level("0.1, 0.2,0.3"), vec!["0.1", "0.2", "0.3"]);
        assert_eq!(split_top_level("[1,2]"), vec!["[1,2]"]);
        assert_eq!(split_top_level("[1,2],[3]"), vec!["[1,2]", "[3]"]);
        assert_eq!(split_top_level("\"a,b\",'c'"), vec!["\"a,b\"", "'c'"]);
        assert_eq!(split_top_level("{ a = 1, b = 2 }"), vec!["{ a = 1, b = 2 }"]);
    }

    #[test]
    fn grid_is_the_product_and_ranges_need_random() {
        let (fixed, axes) = parse_axes(&["train.lr=0.1,0.01".into(), "train.epochs=3".into(), "prune.threshold=0.1,0.3".into()]).unwrap();
        assert_eq!(fixed, vec!["train.epochs=3".to_string()]);
        let g = expand(&axes, Mode::Grid, 0).unwrap();
        assert_eq!(g.len(), 4);
        assert_eq!(g[0], vec!["train.lr=0.1".to_string(), "prune.threshold=0.1".to_string()]);
        assert_eq!(g[3], vec!["train.lr=0.01".to_string(), "prune.threshold=0.3".to_string()]);
        let (_, axes) = parse_axes(&["train.lr=log:1e-4..1e-1".into(), "train.epochs=2..5".into()]).unwrap();
        assert!(expand(&axes, Mode::Grid, 0).unwrap_err().contains("random:N"));
        let r = expand(&axes, Mode::Random(6), 7).unwrap();
        assert_eq!(r, expand(&axes, Mode::Random(6), 7).unwrap(), "seeded");
        assert_eq!(r.len(), 6);
        for v in &r {
            let lr: f64 = v[0].strip_prefix("train.lr=").unwrap().parse().unwrap();
            let ep: i64 = v[1].strip_prefix("train.epochs=").unwrap().parse().unwrap();
            assert!((1e-4..=1e-1).contains(&lr) && (2..=5).contains(&ep), "{v:?}");
            assert!(v[0].contains('.') || v[0].contains('e'), "a float stays a TOML float: {v:?}");
        }
        // Lists alone: no more variants than combinations.
        let (_, axes) = parse_axes(&["a.b=1,2".into()]).unwrap();
        assert_eq!(expand(&axes, Mode::Random(5), 0).unwrap().len(), 2);
    }

    #[test]
    fn bad_sweeps_are_clear() {
        assert!(parse_axes(&["a.b=5..1".into()]).unwrap_err().contains("lo <= hi"));
        assert!(parse_axes(&["a.b=log:0..1".into()]).unwrap_err().contains("lo > 0"));
        assert!(parse_axes(&["a.b=1,,2".into()]).unwrap_err().contains("empty value"));
        assert!(parse_axes(&["a.b=1,2".into(), "a.b=3,4".into()]).unwrap_err().contains("swept twice"));
        assert!("random:0".parse::<Mode>().is_err());
        assert_eq!("random:8".parse::<Mode>(), Ok(Mode::Random(8)));
    }

    #[test]
    fn names_do_not_depend_on_order() {
        assert_eq!(variant_name(&["a=1".into(), "b=2".into()]), variant_name(&["b=2".into(), "a=1".into()]));
        assert_ne!(variant_name(&["a=1".into()]), variant_name(&["a=2".into()]));
    }

    #[test]
    fn mirrors_link_all_but_output_folders() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("proj");
        std::fs::create_dir_all(root.join("raw")).unwrap();
        std::fs::create_dir_all(root.join("pipes/outputs/old")).unwrap();
        std::fs::write(root.join("raw/a.txt"), "a").unwrap();
        std::fs::write(root.join("pipes/p.toml"), "t").unwrap();
        std::fs::write(root.join("pipes/p.lock"), "l").unwrap();
        let dest = d.path().join("mirror");
        let real: BTreeSet<PathBuf> = [root.join("pipes")].into();
        let skip: BTreeSet<PathBuf> = [root.join("pipes/p.lock"), root.join("pipes/outputs")].into();
        mirror(&root, &dest, &real, &skip).unwrap();
        assert!(dest.join("raw").symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(dest.join("raw/a.txt")).unwrap(), "a");
        assert!(!dest.join("pipes").symlink_metadata().unwrap().file_type().is_symlink());
        assert!(dest.join("pipes/p.toml").symlink_metadata().unwrap().file_type().is_symlink());
        assert!(!dest.join("pipes/p.lock").exists() && !dest.join("pipes/outputs").exists());
        // A variant's own output stays on refresh; a new project file is linked; a removed one unlinked.
        std::fs::write(dest.join("pipes/model.txt"), "variant").unwrap();
        std::fs::write(root.join("new.txt"), "n").unwrap();
        std::fs::remove_dir_all(root.join("raw")).unwrap();
        mirror(&root, &dest, &real, &skip).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("pipes/model.txt")).unwrap(), "variant");
        assert!(dest.join("new.txt").exists());
        assert!(dest.join("raw").symlink_metadata().is_err());
    }
}
