//! What a pipeline's runs produced, for people: the metrics of a run as a table
//! (`taoflow show`), parameter and metric changes between two lock files (`taoflow diff`),
//! and one row per revision or variant (`taoflow exp show`). Lock files come from the
//! workspace, from git (`crate::git`) or from recorded variants; metrics from the store's
//! manifests of the keys they name.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::lockfile::LockFile;
use crate::store::Store;
use crate::value::PVal;

/// One value of a table: numbers stay numbers (for deltas and sorting).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Num(f64),
    Text(String),
}

impl Cell {
    pub fn num(&self) -> Option<f64> {
        match self {
            Cell::Num(x) => Some(*x),
            Cell::Text(_) => None,
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Num(x) => f.write_str(&fmt_num(*x)),
            Cell::Text(s) => f.write_str(s),
        }
    }
}

/// A number for a table: integers as integers, else four significant digits (tiny and huge
/// values in exponent form).
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let a = x.abs();
    if !(1e-3..1e6).contains(&a) {
        return format!("{x:.3e}");
    }
    let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.digits$}")
}

/// The flat rows of a stage's metrics JSON: `a.b.c` → scalar. Lists (per-epoch history,
/// confusion matrices, per-class tables, curves) are rows only with `all` (`a.b[3].c`);
/// otherwise their keys are returned in `lists`.
pub fn metric_rows(v: &Value, all: bool) -> (Vec<(String, Cell)>, Vec<String>) {
    fn walk(prefix: &str, v: &Value, all: bool, rows: &mut Vec<(String, Cell)>, lists: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, x, all, rows, lists);
                }
            }
            Value::Array(a) if all => {
                for (i, x) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), x, all, rows, lists);
                }
            }
            Value::Array(_) => lists.push(prefix.to_string()),
            Value::Number(n) => rows.push((prefix.to_string(), Cell::Num(n.as_f64().unwrap_or(f64::NAN)))),
            Value::Bool(b) => rows.push((prefix.to_string(), Cell::Text(b.to_string()))),
            Value::String(s) => rows.push((prefix.to_string(), Cell::Text(s.clone()))),
            Value::Null => {}
        }
    }
    let (mut rows, mut lists) = (Vec::new(), Vec::new());
    walk("", v, all, &mut rows, &mut lists);
    (rows, lists)
}

/// Each stage's metrics for the keys a lock file records (stages whose manifest is not in
/// the store, or that report none, are left out), in the lock file's (sorted) order.
pub fn lock_metrics(lock: &LockFile, store: &Store) -> BTreeMap<String, Value> {
    lock.stages.iter().filter_map(|(name, ls)| store.get_manifest(&ls.key).and_then(|m| m.metrics).map(|m| (name.clone(), m))).collect()
}

/// A stage's parameters as flat `key → value` text, with the pipeline seed and the
/// implementation version beside them (both change results).
pub fn stage_params(lock: &LockFile, stage: &str) -> Option<BTreeMap<String, String>> {
    let ls = lock.stages.get(stage)?;
    let mut flat = BTreeMap::new();
    PVal::Table(ls.fingerprint.params.clone()).flatten("", &mut flat);
    let mut out: BTreeMap<String, String> = flat.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    out.insert("(seed)".into(), ls.fingerprint.seed.to_string());
    out.insert("(implementation)".into(), format!("{} v{}", ls.fingerprint.kind, ls.fingerprint.kind_version));
    Some(out)
}

/// A text table: a header row, columns padded to their widest cell; numeric-looking cells
/// right-aligned.
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let numeric = |s: &str| !s.is_empty() && s.parse::<f64>().is_ok();
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String, align: bool| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate().take(n) {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = w[i] - c.chars().count();
            if align && numeric(c) {
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers, &mut out, false);
    for r in rows {
        line(r, &mut out, true);
    }
    out
}

/// `taoflow show`: the metrics of the stages of `order` that `lock` records, one row per
/// scalar, the stage named on its first row.
pub fn show_table(order: &[String], lock: &LockFile, store: &Store, all: bool) -> Option<String> {
    let metrics = lock_metrics(lock, store);
    let mut rows = Vec::new();
    let mut left_out = Vec::new();
    for stage in order {
        let Some(m) = metrics.get(stage) else { continue };
        let (r, lists) = metric_rows(m, all);
        for (i, (k, v)) in r.into_iter().enumerate() {
            rows.push(vec![if i == 0 { stage.clone() } else { String::new() }, k, v.to_string()]);
        }
        left_out.extend(lists.into_iter().map(|l| format!("{stage}.{l}")));
    }
    if rows.is_empty() && left_out.is_empty() {
        return None;
    }
    let mut out = table(&["stage".into(), "metric".into(), "value".into()], &rows);
    if !left_out.is_empty() {
        let shown: Vec<&str> = left_out.iter().take(4).map(String::as_str).collect();
        out.push_str(&format!(
            "({} list(s) not shown: {}{}; `--all` prints every entry, `--json` the whole record)\n",
            left_out.len(),
            shown.join(", "),
            if left_out.len() > shown.len() { ", …" } else { "" }
        ));
    }
    Some(out)
}

/// A parameter that differs between two lock files (None: the stage or key is absent there).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamChange {
    pub stage: String,
    pub param: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A metric that differs (or, with `all`, every metric), with the change when both are numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricChange {
    pub stage: String,
    pub metric: String,
    pub old: Option<Cell>,
    pub new: Option<Cell>,
    pub change: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    pub old: String,
    pub new: String,
    pub params: Vec<ParamChange>,
    pub metrics: Vec<MetricChange>,
    /// What could not be compared (a key whose manifest the store no longer holds).
    pub notes: Vec<String>,
}

/// Parameters and metrics of `new` against `old`; `all` keeps unchanged rows too.
pub fn diff(old: (&str, &LockFile), new: (&str, &LockFile), store: &Store, all: bool) -> Diff {
    let mut d = Diff { old: old.0.to_string(), new: new.0.to_string(), ..Default::default() };
    let stages: BTreeSet<&String> = old.1.stages.keys().chain(new.1.stages.keys()).collect();
    for stage in &stages {
        let (a, b) = (stage_params(old.1, stage), stage_params(new.1, stage));
        let keys: BTreeSet<String> = a.iter().chain(b.iter()).flat_map(|m| m.keys().cloned()).collect();
        for k in keys {
            let (x, y) = (a.as_ref().and_then(|m| m.get(&k)).cloned(), b.as_ref().and_then(|m| m.get(&k)).cloned());
            if all || x != y {
                d.params.push(ParamChange { stage: stage.to_string(), param: k, old: x, new: y });
            }
        }
    }
    let (ma, mb) = (lock_metrics(old.1, store), lock_metrics(new.1, store));
    for (side, lock, m) in [(old.0, old.1, &ma), (new.0, new.1, &mb)] {
        for (stage, ls) in &lock.stages {
            if !m.contains_key(stage) && store.get_manifest(&ls.key).is_none() {
                d.notes.push(format!("`{stage}` at {side}: its result (key {}) is not in the store, so its metrics are unknown", crate::hash::short(&ls.key)));
            }
        }
    }
    for stage in &stages {
        let flat = |m: &BTreeMap<String, Value>| -> BTreeMap<String, Cell> { m.get(stage.as_str()).map(|v| metric_rows(v, false).0.into_iter().collect()).unwrap_or_default() };
        let (a, b) = (flat(&ma), flat(&mb));
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let (x, y) = (a.get(k).cloned(), b.get(k).cloned());
            if all || x != y {
                let change = match (x.as_ref().and_then(Cell::num), y.as_ref().and_then(Cell::num)) {
                    (Some(p), Some(q)) => Some(q - p),
                    _ => None,
                };
                d.metrics.push(MetricChange { stage: stage.to_string(), metric: k.clone(), old: x, new: y, change });
            }
        }
    }
    d
}

impl Diff {
    /// The text `taoflow diff` prints; `params`/`metrics` choose the parts (both when neither).
    pub fn render(&self, params: bool, metrics: bool) -> String {
        let both = !params && !metrics;
        let mut out = String::new();
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
        if params || both {
            if self.params.is_empty() {
                out.push_str(&format!("parameters: no change ({} → {})\n", self.old, self.new));
            } else {
                out.push_str(&format!("parameters ({} → {}):\n", self.old, self.new));
                let rows: Vec<Vec<String>> = self.params.iter().map(|c| vec![c.stage.clone(), c.param.clone(), dash(&c.old), dash(&c.new)]).collect();
                out.push_str(&indent(&table(&["stage".into(), "parameter".into(), self.old.clone(), self.new.clone()], &rows)));
            }
        }
        if metrics || both {
            if self.metrics.is_empty() {
                out.push_str(&format!("metrics: no change ({} → {})\n", self.old, self.new));
            } else {
                out.push_str(&format!("metrics ({} → {}):\n", self.old, self.new));
                let rows: Vec<Vec<String>> = self
                    .metrics
                    .iter()
                    .map(|c| {
                        let ch = c.change.map(|x| if x > 0.0 { format!("+{}", fmt_num(x)) } else { fmt_num(x) }).unwrap_or_default();
                        vec![c.stage.clone(), c.metric.clone(), dash(&c.old.as_ref().map(Cell::to_string)), dash(&c.new.as_ref().map(Cell::to_string)), ch]
                    })
                    .collect();
                out.push_str(&indent(&table(&["stage".into(), "metric".into(), self.old.clone(), self.new.clone(), "change".into()], &rows)));
            }
            for n in &self.notes {
                out.push_str(&format!("note: {n}\n"));
            }
        }
        out
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// One row of `taoflow exp show`: a revision of the lock file, the workspace, or a variant.
#[derive(Debug, Clone, Serialize)]
pub struct ExpRow {
    pub name: String,
    /// `workspace`, `commit` or `variant`.
    pub source: String,
    /// Commit summary, or a variant's overrides.
    pub description: String,
    /// Commit time (seconds since the epoch) when a commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
    pub params: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, Cell>,
}

impl ExpRow {
    /// A row from a lock file: every stage's parameters (`stage.key`) and scalar metrics.
    pub fn from_lock(name: &str, source: &str, description: &str, time: Option<i64>, lock: &LockFile, store: &Store) -> ExpRow {
        let mut params = BTreeMap::new();
        for stage in lock.stages.keys() {
            for (k, v) in stage_params(lock, stage).unwrap_or_default() {
                params.insert(format!("{stage}.{k}"), v);
            }
        }
        let mut metrics = BTreeMap::new();
        for (stage, m) in lock_metrics(lock, store) {
            for (k, v) in metric_rows(&m, false).0 {
                metrics.insert(format!("{stage}.{k}"), v);
            }
        }
        ExpRow { name: name.to_string(), source: source.to_string(), description: description.to_string(), time, params, metrics }
    }
}

/// The columns worth showing: parameters whose value is not the same in every row, and
/// metrics that are numbers in at least one row and not all equal (with `all`: every one).
pub fn exp_columns(rows: &[ExpRow], all: bool) -> (Vec<String>, Vec<String>) {
    let varies = |vals: Vec<Option<String>>| -> bool { vals.windows(2).any(|w| w[0] != w[1]) };
    let pkeys: BTreeSet<&String> = rows.iter().flat_map(|r| r.params.keys()).collect();
    let params = pkeys.into_iter().filter(|k| all || varies(rows.iter().map(|r| r.params.get(*k).cloned()).collect())).cloned().collect();
    let mkeys: BTreeSet<&String> = rows.iter().flat_map(|r| r.metrics.keys()).collect();
    let metrics = mkeys
        .into_iter()
        .filter(|k| rows.iter().any(|r| matches!(r.metrics.get(*k), Some(Cell::Num(_)))))
        .filter(|k| all || rows.len() == 1 || varies(rows.iter().map(|r| r.metrics.get(*k).map(Cell::to_string)).collect()))
        .cloned()
        .collect();
    (params, metrics)
}

/// Sort rows by a metric, best (largest, or smallest with `ascending`) first; rows without
/// it last. An unknown metric is an error naming the ones there are.
pub fn sort_rows(rows: &mut [ExpRow], metric: &str, ascending: bool) -> Result<(), String> {
    if !rows.iter().any(|r| r.metrics.contains_key(metric)) {
        let known: BTreeSet<&String> = rows.iter().flat_map(|r| r.metrics.iter().filter(|(_, v)| v.num().is_some()).map(|(k, _)| k)).collect();
        let mut hint = known.iter().take(8).map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        if known.len() > 8 {
            hint.push_str(", …");
        }
        return Err(format!("no row has the metric `{metric}`\n  = hint: metrics are `stage.name`, e.g. {hint}"));
    }
    let key = |r: &ExpRow| r.metrics.get(metric).and_then(Cell::num);
    rows.sort_by(|a, b| match (key(a), key(b)) {
        (Some(x), Some(y)) => {
            let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
            if ascending { o } else { o.reverse() }
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    Ok(())
}

/// `exp show`'s text table: name, then the varying parameters, then the metrics.
pub fn exp_table(rows: &[ExpRow], params: &[String], metrics: &[String]) -> String {
    let mut headers = vec!["experiment".to_string()];
    headers.extend(params.iter().cloned());
    headers.extend(metrics.iter().cloned());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut v = vec![r.name.clone()];
            v.extend(params.iter().map(|k| r.params.get(k).cloned().unwrap_or_else(|| "—".into())));
            v.extend(metrics.iter().map(|k| r.metrics.get(k).map(Cell::to_string).unwrap_or_else(|| "—".into())));
            v
        })
        .collect();
    table(&headers, &body)
}

/// CSV of the same table (RFC 4180 quoting).
pub fn exp_csv(rows: &[ExpRow], params: &[String], metrics: &[String]) -> String {
    let q = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    let mut out = String::new();
    let mut head = vec!["experiment".to_string(), "source".to_string(), "description".to_string()];
    head.extend(params.iter().cloned());
    head.extend(metrics.iter().cloned());
    out.push_str(&head.iter().map(|h| q(h)).collect::<Vec<_>>().join(","));
    out.push('\n');
    for r in rows {
        let mut v = vec![r.name.clone(), r.source.clone(), r.description.clone()];
        v.extend(params.iter().map(|k| r.params.get(k).cloned().unwrap_or_default()));
        v.extend(metrics.iter().map(|k| match r.metrics.get(k) {
            Some(Cell::Num(x)) => format!("{x}"),
            Some(Cell::Text(s)) => s.clone(),
            None => String::new(),
        }));
        out.push_str(&v.iter().map(|c| q(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(12.0), "12");
        assert_eq!(fmt_num(0.123456), "0.1235");
        assert_eq!(fmt_num(12.34567), "12.35");
        assert_eq!(fmt_num(1234.567), "1235");
        assert_eq!(fmt_num(0.0001234), "1.234e-4");
        assert_eq!(fmt_num(-0.5), "-0.5000");
    }

    #[test]
    fn lists_are_summarised_unless_all() {
        let m = json!({"accuracy": 0.5, "history": [{"loss": 1.0}, {"loss": 0.5}], "per_class": {"cat": {"f1": 0.25}}, "engine": "tract", "none": null});
        let (rows, lists) = metric_rows(&m, false);
        assert_eq!(rows, vec![("accuracy".into(), Cell::Num(0.5)), ("engine".into(), Cell::Text("tract".into())), ("per_class.cat.f1".into(), Cell::Num(0.25))]);
        assert_eq!(lists, vec!["history".to_string()]);
        let (rows, lists) = metric_rows(&m, true);
        assert!(lists.is_empty());
        assert!(rows.contains(&("history[1].loss".into(), Cell::Num(0.5))), "{rows:?}");
    }

    #[test]
    fn tables_align_and_right_align_numbers() {
        let t = table(&["a".into(), "value".into()], &[vec!["long name".into(), "1.5".into()], vec!["b".into(), "12.25".into()]]);
        assert_eq!(t, "a          value\nlong name    1.5\nb          12.25\n");
    }

    fn row(name: &str, lr: &str, acc: f64) -> ExpRow {
        ExpRow {
            name: name.into(),
            source: "variant".into(),
            description: String::new(),
            time: None,
            params: [("train.lr".to_string(), lr.to_string()), ("train.epochs".to_string(), "3".to_string())].into(),
            metrics: [("evaluate.accuracy".to_string(), Cell::Num(acc)), ("evaluate.engine".to_string(), Cell::Text("tract".into()))].into(),
        }
    }

    #[test]
    fn experiments_show_what_varies_sorted_by_a_metric() {
        let mut rows = vec![row("a", "0.1", 0.5), row("b", "0.01", 0.75), row("c", "0.001", 0.6)];
        let (p, m) = exp_columns(&rows, false);
        assert_eq!(p, vec!["train.lr".to_string()]);
        assert_eq!(m, vec!["evaluate.accuracy".to_string()]);
        sort_rows(&mut rows, "evaluate.accuracy", false).unwrap();
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["b", "c", "a"]);
        sort_rows(&mut rows, "evaluate.accuracy", true).unwrap();
        assert_eq!(rows[0].name, "a");
        let e = sort_rows(&mut rows, "evaluate.f1", false).unwrap_err();
        assert!(e.contains("`evaluate.f1`") && e.contains("evaluate.accuracy"), "{e}");
        let t = exp_table(&rows, &p, &m);
        assert!(t.starts_with("experiment  train.lr  evaluate.accuracy\n"), "{t}");
        let csv = exp_csv(&rows, &p, &m);
        assert_eq!(csv.lines().next().unwrap(), "experiment,source,description,train.lr,evaluate.accuracy");
        assert_eq!(csv.lines().nth(1).unwrap(), "a,variant,,0.1,0.5");
    }
}
