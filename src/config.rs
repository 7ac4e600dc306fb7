//! The pipeline file: TOML in, a validated [`Pipeline`] out, or diagnostics that name the
//! file, line and column of every mistake.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::diag::{did_you_mean, Diag, Diags, Source, Span};
use crate::stages::{self, StageDef, StageKind};
use crate::value::{parse_document, parse_value, Key, Node, PVal, Table, V};

/// Keys that every stage accepts, whatever its kind.
pub const COMMON_KEYS: &[&str] = &["kind", "gpus", "description"];

/// A validated pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// Path of the pipeline file as the user gave it (for messages).
    pub path: PathBuf,
    /// Folder that holds the pipeline file (absolute): commands run here, paths are relative to it.
    pub dir: PathBuf,
    pub src: Arc<Source>,
    pub name: String,
    pub seed: i64,
    pub stages: Vec<Stage>,
}

#[derive(Debug)]
pub struct Stage {
    pub name: String,
    pub name_span: Span,
    pub kind: &'static dyn StageKind,
    pub def: StageDef,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }
    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }
    /// The lock file that sits beside the pipeline file: `x.toml` -> `x.lock`.
    pub fn lock_path(&self) -> PathBuf {
        lock_path_for(&self.dir, &self.path)
    }
}

/// A `-S stage.key=value` override from the command line.
#[derive(Debug, Clone)]
pub struct Override {
    pub text: String,
}

/// Read and validate a pipeline file, applying command-line overrides.
pub fn load(path: &Path, overrides: &[String]) -> Result<Pipeline, Diags> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diag::error(format!("cannot read pipeline file `{}`: {e}", path.display()))
            .hint("check the path; pipelines usually live in `pipelines/NAME.toml`")
    })?;
    let dir = pipeline_dir(path).map_err(|(dir, e)| Diag::error(format!("cannot open folder `{}`: {e}", dir.display())))?;
    parse(path, dir, text, overrides)
}

/// The lock file of pipeline file `file` in its folder `dir`: `x.toml` → `dir/x.lock`.
pub fn lock_path_for(dir: &Path, file: &Path) -> PathBuf {
    let stem = file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "pipeline".into());
    dir.join(format!("{stem}.lock"))
}

/// The project a pipeline belongs to: the nearest folder above it that holds `cache/` or is
/// a git checkout, else the pipeline's own folder. The store defaults to its `cache/`; a
/// sweep's variant workspaces mirror it.
pub fn project_root(pipeline_dir: &Path) -> PathBuf {
    crate::runtime::project_root(pipeline_dir)
}

/// The folder a pipeline file lives in, canonical (relative paths and the store are
/// resolved from it); on failure, the folder tried and why.
pub fn pipeline_dir(path: &Path) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::canonicalize(dir).map_err(|e| (dir.to_path_buf(), e))
}

/// Validate pipeline text (no file system access except for the folder it names).
pub fn parse(path: &Path, dir: PathBuf, text: String, overrides: &[String]) -> Result<Pipeline, Diags> {
    let src = Arc::new(Source { name: path.display().to_string(), text });
    let mut doc = parse_document(&src).map_err(Diags::from)?;
    let mut diags = Diags::default();
    apply_overrides(&mut doc, overrides, &mut diags);
    if !diags.is_empty() {
        return Err(diags);
    }

    let whole = Span::new(&src, 0..0);
    for (k, _) in &doc.entries {
        if k.name != "pipeline" && k.name != "stages" {
            let hint = match did_you_mean(&k.name, ["pipeline", "stages"]) {
                Some(s) => format!("did you mean `{s}`? A pipeline file has a `[pipeline]` table and `[stages.NAME]` tables"),
                None => "a pipeline file has a `[pipeline]` table and `[stages.NAME]` tables; put stage settings under `[stages.NAME]`".into(),
            };
            diags.push(Diag::error(format!("unknown top-level key `{}`", k.name)).at(&k.span, "not allowed here").hint(hint));
        }
    }

    // [pipeline]
    let default_name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "pipeline".into());
    let mut name = default_name;
    let mut seed = 0i64;
    let mut defaults: BTreeMap<String, Table> = BTreeMap::new();
    let mut common_defaults = Table::default();
    if let Some(p) = doc.get("pipeline") {
        match &p.v {
            V::Table(t) => {
                let mut f = Fields::new(t, "the `[pipeline]` table", &mut diags);
                if let Some((n, node)) = f.str("name") {
                    if n.trim().is_empty() {
                        f.diags.push(Diag::error("pipeline name is empty").at(&node.span, "empty").hint("give the pipeline a name, e.g. name = \"quickstart\""));
                    }
                    name = n;
                }
                if let Some((s, _)) = f.int("seed") {
                    seed = s;
                }
                if let Some(dt) = f.table("defaults") {
                    for (k, v) in &dt.entries {
                        if let Some(kind) = stages::lookup(&k.name) {
                            match &v.v {
                                V::Table(t) => {
                                    defaults.insert(kind.name().to_string(), t.clone());
                                }
                                _ => f.diags.push(type_error(&format!("`pipeline.defaults.{}`", k.name), "a table", v)),
                            }
                        } else if COMMON_KEYS.contains(&k.name.as_str()) && k.name != "kind" {
                            common_defaults.set(k.clone(), v.clone());
                        } else {
                            let cands: Vec<&str> = stages::names().into_iter().chain(["gpus", "description"]).collect();
                            f.diags.push(
                                Diag::error(format!("unknown key `{}` in `[pipeline.defaults]`", k.name))
                                    .at(&k.span, "not a stage kind or a common stage key")
                                    .hint(match did_you_mean(&k.name, cands.iter().copied()) {
                                        Some(s) => format!("did you mean `{s}`?"),
                                        None => format!(
                                            "defaults are `[pipeline.defaults.KIND]` tables (KIND one of {}) or the keys `gpus`, `description`",
                                            stages::names().join(", ")
                                        ),
                                    }),
                            );
                        }
                    }
                }
                f.finish(&["name", "seed", "defaults"]);
            }
            _ => diags.push(type_error("`pipeline`", "a table", p)),
        }
    }

    // [stages.*]
    let mut stages_out = Vec::new();
    match doc.get("stages") {
        None => diags.push(
            Diag::error("the pipeline has no stages")
                .at(&whole, "no `[stages.NAME]` table in this file")
                .hint("add a stage:\n\n  [stages.hello]\n  kind = \"exec\"\n  cmd = \"echo hi > hello.txt\"\n  outs = [\"hello.txt\"]"),
        ),
        Some(node) => match &node.v {
            V::Table(t) => {
                if t.entries.is_empty() {
                    diags.push(Diag::error("the `[stages]` table is empty").at(&node.span, "no stage inside").hint("add at least one `[stages.NAME]` table"));
                }
                for (k, v) in &t.entries {
                    if let Some(s) = parse_stage(k, v, &defaults, &common_defaults, &mut diags) {
                        stages_out.push(s);
                    }
                }
            }
            _ => diags.push(type_error("`stages`", "a table of `[stages.NAME]` tables", node)),
        },
    }

    if !diags.is_empty() {
        return Err(diags);
    }
    // Artifacts that taoflow writes itself live under outputs/PIPELINE/STAGE/ARTIFACT, so
    // that pipelines sharing a folder never write to the same place.
    for s in &mut stages_out {
        for o in s.def.outputs.iter_mut().filter(|o| o.owned) {
            o.path = PathBuf::from("outputs").join(&name).join(&s.name).join(&o.name);
        }
    }
    let pipeline = Pipeline { path: path.to_path_buf(), dir, src, name, seed, stages: stages_out };
    Ok(pipeline)
}

/// Stage and artifact names: letters, digits, `_` and `-` (they appear in `stage.artifact`).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_stage(
    key: &Key,
    node: &Node,
    defaults: &BTreeMap<String, Table>,
    common_defaults: &Table,
    diags: &mut Diags,
) -> Option<Stage> {
    let name = key.name.clone();
    if !valid_name(&name) {
        diags.push(
            Diag::error(format!("invalid stage name `{name}`"))
                .at(&key.span, "letters, digits, `_` and `-` only")
                .hint("stage names are used in references like `train.model`, so they cannot contain dots or spaces"),
        );
        return None;
    }
    let table = match &node.v {
        V::Table(t) => t,
        _ => {
            diags.push(type_error(&format!("stage `{name}`"), "a table", node).hint(format!("write the stage as a table:\n\n  [stages.{name}]\n  kind = \"exec\"")));
            return None;
        }
    };
    let kind_node = match table.get("kind") {
        Some(k) => k,
        None => {
            diags.push(
                Diag::error(format!("stage `{name}` has no `kind`"))
                    .at(&key.span, "this stage")
                    .hint(format!("add `kind = \"…\"`, one of: {}", stages::names().join(", "))),
            );
            return None;
        }
    };
    let kind_name = match &kind_node.v {
        V::Str(s) => s.clone(),
        _ => {
            diags.push(type_error("`kind`", "a string", kind_node));
            return None;
        }
    };
    let kind = match stages::lookup(&kind_name) {
        Some(k) => k,
        None => {
            let planned = stages::PLANNED.contains(&kind_name.as_str());
            let d = if planned {
                Diag::error(format!("stage kind `{kind_name}` is not available in this build"))
                    .at(&kind_node.span, "planned, not implemented yet")
                    .hint(format!("available kinds: {}; use `exec` to run your own command for this step", stages::names().join(", ")))
            } else {
                Diag::error(format!("unknown stage kind `{kind_name}`")).at(&kind_node.span, "unknown kind").hint(
                    match did_you_mean(&kind_name, stages::names().into_iter().chain(stages::PLANNED.iter().copied())) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("available kinds: {}", stages::names().join(", ")),
                    },
                )
            };
            diags.push(d);
            return None;
        }
    };
    // Defaults: common ones, then per kind, then the stage's own keys win.
    let mut merged = Table::default();
    for (k, v) in &common_defaults.entries {
        merged.set(k.clone(), v.clone());
    }
    if let Some(d) = defaults.get(kind.name()) {
        for (k, v) in &d.entries {
            merge_into(&mut merged, k, v);
        }
    }
    for (k, v) in &table.entries {
        merge_into(&mut merged, k, v);
    }
    let before = diags.0.len();
    let ctx = format!("stage `{name}`");
    let mut f = Fields::new(&merged, &ctx, diags);
    f.mark("kind");
    let gpus = f.uint("gpus").map(|(g, _)| g as u32).unwrap_or(0);
    let description = f.str("description").map(|(d, _)| d);
    let def = kind.parse(&mut f, &name);
    let mut known: Vec<&str> = COMMON_KEYS.to_vec();
    known.extend(kind.keys());
    f.finish(&known);
    let mut def = def?;
    if diags.0.len() > before {
        return None;
    }
    def.gpus = gpus;
    def.description = description;
    Some(Stage { name, name_span: key.span.clone(), kind, def })
}

/// Merge `v` into `t[k]`: tables merge key by key, anything else replaces.
fn merge_into(t: &mut Table, k: &Key, v: &Node) {
    if let (Some(Node { v: V::Table(old), .. }), V::Table(new)) = (t.get(&k.name).cloned(), &v.v) {
        let mut m = old;
        for (k2, v2) in &new.entries {
            merge_into(&mut m, k2, v2);
        }
        t.set(k.clone(), Node { span: v.span.clone(), v: V::Table(m) });
    } else {
        t.set(k.clone(), v.clone());
    }
}

/// Apply `-S stage.key=value` overrides to the parsed document before validation.
fn apply_overrides(doc: &mut Table, overrides: &[String], diags: &mut Diags) {
    if overrides.is_empty() {
        return;
    }
    // One source for all overrides, so that each error points at its own `-S`.
    let mut text = String::new();
    let mut ranges = Vec::new();
    for o in overrides {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str("-S ");
        let start = text.len();
        text.push_str(o);
        ranges.push(start..text.len());
    }
    let src = Arc::new(Source { name: "command line".into(), text });
    for (o, r) in overrides.iter().zip(ranges) {
        let Some(eq) = o.find('=') else {
            diags.push(
                Diag::error(format!("override `{o}` has no `=`"))
                    .at(&Span::new(&src, r), "expected STAGE.KEY=VALUE")
                    .hint("write e.g. -S train.lr=0.02"),
            );
            continue;
        };
        let path_range = r.start..r.start + eq;
        let value_range = r.start + eq + 1..r.end;
        let path_span = Span::new(&src, path_range);
        let parts: Vec<&str> = o[..eq].trim().split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            diags.push(
                Diag::error(format!("override `{o}` must name a stage and a key"))
                    .at(&path_span, "expected STAGE.KEY")
                    .hint("write e.g. -S train.lr=0.02 or -S pipeline.seed=7"),
            );
            continue;
        }
        let value = match parse_value(&src, value_range) {
            Ok(v) => v,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        let mk_key = |name: &str| Key { name: name.to_string(), span: path_span.clone() };
        if parts[0] == "pipeline" {
            let slot = ensure_table(doc, &mk_key("pipeline"));
            set_path(slot, &parts[1..], &mk_key, value);
            continue;
        }
        let stage_name = parts[0];
        let stages = match doc.entries.iter_mut().find(|(k, _)| k.name == "stages") {
            Some((_, Node { v: V::Table(t), .. })) => t,
            _ => {
                diags.push(Diag::error(format!("override `{o}`: the pipeline has no stages")).at(&path_span, ""));
                continue;
            }
        };
        let names: Vec<String> = stages.keys().map(str::to_string).collect();
        let Some((_, Node { v: V::Table(st), .. })) = stages.entries.iter_mut().find(|(k, _)| k.name == stage_name) else {
            diags.push(
                Diag::error(format!("override `{o}`: no stage named `{stage_name}`"))
                    .at(&Span::new(&src, path_span.range.start..path_span.range.start + stage_name.len()), "unknown stage")
                    .hint(match did_you_mean(stage_name, names.iter().map(String::as_str)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("stages in this pipeline: {}", names.join(", ")),
                    }),
            );
            continue;
        };
        let kind = st.get("kind").and_then(|k| if let V::Str(s) = &k.v { stages::lookup(s) } else { None });
        let key = parts[1];
        let top_level = COMMON_KEYS.contains(&key) || kind.is_some_and(|k| k.keys().contains(&key));
        match (top_level, kind.and_then(|k| k.free_params_key())) {
            (false, Some(pk)) => {
                // `-S train.lr=…` on an exec stage means `params.lr`: it must exist.
                let existing = st.get(pk).and_then(|p| if let V::Table(t) = &p.v { Some(t) } else { None });
                let known: Vec<String> = existing.map(|t| t.keys().map(str::to_string).collect()).unwrap_or_default();
                if !known.iter().any(|k| k == key) {
                    diags.push(
                        Diag::error(format!("override `{o}`: stage `{stage_name}` has no parameter `{key}`"))
                            .at(&path_span, "unknown parameter")
                            .hint(match did_you_mean(key, known.iter().map(String::as_str)) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None if known.is_empty() => format!("stage `{stage_name}` has no `{pk}`; declare the parameter in its `{pk}` table first"),
                                None => format!("its parameters: {}", known.join(", ")),
                            }),
                    );
                    continue;
                }
                let slot = ensure_table(st, &mk_key(pk));
                set_path(slot, &parts[1..], &mk_key, value);
            }
            _ => {
                set_path(st, &parts[1..], &mk_key, value);
            }
        }
    }
}

fn ensure_table<'a>(t: &'a mut Table, key: &Key) -> &'a mut Table {
    if !matches!(t.get(&key.name), Some(Node { v: V::Table(_), .. })) {
        t.set(key.clone(), Node { span: key.span.clone(), v: V::Table(Table::default()) });
    }
    match t.entries.iter_mut().find(|(k, _)| k.name == key.name) {
        Some((_, Node { v: V::Table(inner), .. })) => inner,
        _ => unreachable!("table was just inserted"),
    }
}

fn set_path(t: &mut Table, path: &[&str], mk_key: &dyn Fn(&str) -> Key, value: Node) {
    if path.len() == 1 {
        t.set(mk_key(path[0]), value);
    } else {
        let inner = ensure_table(t, &mk_key(path[0]));
        set_path(inner, &path[1..], mk_key, value);
    }
}

pub fn type_error(what: &str, expected: &str, node: &Node) -> Diag {
    Diag::error(format!("{what} must be {expected}, found {}", node.v.type_name()))
        .at(&node.span, format!("expected {expected}"))
}

/// Typed access to the keys of a table, recording which keys were used so that the rest
/// can be reported as unknown.
pub struct Fields<'a> {
    pub table: &'a Table,
    pub ctx: &'a str,
    pub diags: &'a mut Diags,
    used: Vec<String>,
}

impl<'a> Fields<'a> {
    pub fn new(table: &'a Table, ctx: &'a str, diags: &'a mut Diags) -> Self {
        Fields { table, ctx, diags, used: Vec::new() }
    }

    pub fn mark(&mut self, key: &str) {
        self.used.push(key.to_string());
    }

    pub fn get(&mut self, key: &str) -> Option<&'a Node> {
        self.mark(key);
        self.table.get(key)
    }

    /// Span of the stage/table as a whole (its first key), for "missing key" errors.
    pub fn anchor(&self) -> Option<Span> {
        self.table.entries.first().map(|(k, _)| k.span.clone())
    }

    pub fn missing(&mut self, key: &str, example: &str) {
        let mut d = Diag::error(format!("{} is missing the required key `{key}`", self.ctx)).hint(format!("add e.g. {example}"));
        if let Some(a) = self.anchor() {
            d = d.at(&a, "in this table");
        }
        self.diags.push(d);
    }

    pub fn str(&mut self, key: &str) -> Option<(String, &'a Node)> {
        let n = self.get(key)?;
        match &n.v {
            V::Str(s) => Some((s.clone(), n)),
            _ => {
                self.diags.push(type_error(&format!("`{key}` in {}", self.ctx), "a string", n));
                None
            }
        }
    }

    /// A string the stage cannot do without: a missing key is reported with `example`.
    pub fn required_str(&mut self, key: &str, example: &str) -> Option<(String, &'a Node)> {
        let v = self.str(key);
        if v.is_none() && self.table.get(key).is_none() {
            self.missing(key, example);
        }
        v
    }

    pub fn int(&mut self, key: &str) -> Option<(i64, &'a Node)> {
        let n = self.get(key)?;
        match &n.v {
            V::Int(i) => Some((*i, n)),
            _ => {
                self.diags.push(type_error(&format!("`{key}` in {}", self.ctx), "an integer", n));
                None
            }
        }
    }

    pub fn uint(&mut self, key: &str) -> Option<(u64, &'a Node)> {
        let (i, n) = self.int(key)?;
        if i < 0 {
            self.diags.push(
                Diag::error(format!("`{key}` in {} must not be negative", self.ctx))
                    .at(&n.span, "negative")
                    .hint("use 0 or a positive integer"),
            );
            return None;
        }
        Some((i as u64, n))
    }

    /// A positive integer with a default; zero or a wrong type is reported.
    pub fn positive_uint(&mut self, key: &str, default: u64) -> u64 {
        match self.uint(key) {
            Some((0, n)) => {
                self.diags.push(Diag::error(format!("`{key}` must be positive")).at(&n.span, "zero"));
                default
            }
            Some((v, _)) => v,
            None => default,
        }
    }

    /// One of `options` (a string), with a default; anything else is reported with the list.
    pub fn choice(&mut self, key: &str, options: &[&str], default: &str) -> String {
        match self.str(key) {
            None => default.to_string(),
            Some((s, n)) if options.contains(&s.as_str()) => {
                let _ = n;
                s
            }
            Some((s, n)) => {
                self.diags.push(Diag::error(format!("unknown {key} `{s}` in {}", self.ctx)).at(&n.span, "unknown").hint(format!("choose one of: {}", options.join(", "))));
                default.to_string()
            }
        }
    }

    pub fn float(&mut self, key: &str) -> Option<(f64, &'a Node)> {
        let n = self.get(key)?;
        match &n.v {
            V::Float(f) => Some((*f, n)),
            V::Int(i) => Some((*i as f64, n)),
            _ => {
                self.diags.push(type_error(&format!("`{key}` in {}", self.ctx), "a number", n));
                None
            }
        }
    }

    pub fn bool(&mut self, key: &str) -> Option<(bool, &'a Node)> {
        let n = self.get(key)?;
        match &n.v {
            V::Bool(b) => Some((*b, n)),
            _ => {
                self.diags.push(type_error(&format!("`{key}` in {}", self.ctx), "true or false", n));
                None
            }
        }
    }

    pub fn table(&mut self, key: &str) -> Option<&'a Table> {
        let n = self.get(key)?;
        match &n.v {
            V::Table(t) => Some(t),
            _ => {
                self.diags.push(type_error(&format!("`{key}` in {}", self.ctx), "a table", n));
                None
            }
        }
    }

    /// A string or an array of strings.
    pub fn str_list(&mut self, key: &str) -> Option<Vec<(String, Span)>> {
        let n = self.get(key)?;
        match &n.v {
            V::Str(s) => Some(vec![(s.clone(), n.span.clone())]),
            V::Array(a) => {
                let mut out = Vec::new();
                for x in a {
                    match &x.v {
                        V::Str(s) => out.push((s.clone(), x.span.clone())),
                        _ => self.diags.push(type_error(&format!("each entry of `{key}` in {}", self.ctx), "a string", x)),
                    }
                }
                Some(out)
            }
            _ => {
                self.diags.push(type_error(&format!("`{key}` in {}", self.ctx), "an array of strings", n));
                None
            }
        }
    }

    /// Canonical value of a free-form table (e.g. exec's `params`).
    pub fn pval_table(&mut self, key: &str) -> Option<(BTreeMap<String, PVal>, &'a Table)> {
        let t = self.table(key)?;
        let m = t.entries.iter().map(|(k, v)| (k.name.clone(), PVal::from_node(v))).collect();
        Some((m, t))
    }

    /// The keys read so far.
    pub fn used(&self) -> &[String] {
        &self.used
    }

    /// Report every key that was not read as unknown, with a suggestion.
    pub fn finish(self, known: &[&str]) {
        for (k, _) in &self.table.entries {
            if self.used.contains(&k.name) {
                continue;
            }
            let hint = match did_you_mean(&k.name, known.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid keys here: {}", known.join(", ")),
            };
            self.diags.push(Diag::error(format!("unknown key `{}` in {}", k.name, self.ctx)).at(&k.span, "unknown key").hint(hint));
        }
    }
}

/// Lexically normalise a relative path (`a/./b/../c` -> `a/c`); `None` if it is empty.
pub fn normalize_rel(p: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() { None } else { Some(out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(t: &str, ov: &[&str]) -> Result<Pipeline, Diags> {
        let ov: Vec<String> = ov.iter().map(|s| s.to_string()).collect();
        parse(Path::new("p.toml"), PathBuf::from("/tmp"), t.to_string(), &ov)
    }

    #[test]
    fn minimal_pipeline() {
        let p = parse_str("[stages.a]\nkind = \"exec\"\ncmd = \"echo hi > a.txt\"\nouts = [\"a.txt\"]\n", &[]).unwrap();
        assert_eq!(p.name, "p");
        assert_eq!(p.stages.len(), 1);
    }

    #[test]
    fn override_param() {
        let t = "[stages.a]\nkind = \"exec\"\ncmd = \"echo ${n}\"\nparams = { n = 1 }\n";
        let p = parse_str(t, &["a.n=5"]).unwrap();
        assert_eq!(p.stages[0].def.params["params"], PVal::Table([("n".to_string(), PVal::Int(5))].into()));
        let e = parse_str(t, &["a.m=5"]).unwrap_err().render(false);
        assert!(e.contains("has no parameter `m`"), "{e}");
        let e = parse_str(t, &["b.n=5"]).unwrap_err().render(false);
        assert!(e.contains("no stage named `b`"), "{e}");
    }

    #[test]
    fn defaults_fill_before_hashing() {
        let a = parse_str("[stages.a]\nkind = \"exec\"\ncmd = \"x\"\n", &[]).unwrap();
        let b = parse_str("[stages.a]\nkind = \"exec\"\ncmd = \"x\"\ndeps = []\nparams = {}\n", &[]).unwrap();
        assert_eq!(a.stages[0].def.params, b.stages[0].def.params);
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_rel("./a/../b/c"), Some(PathBuf::from("b/c")));
        assert_eq!(normalize_rel("../x"), Some(PathBuf::from("../x")));
        assert_eq!(normalize_rel("."), None);
    }
}
