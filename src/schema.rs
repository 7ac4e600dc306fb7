//! What a pipeline file may say, as data: every stage kind's keys with their types,
//! defaults, ranges and a description. Each stage kind declares its keys beside its parser
//! (`StageKind::spec`); the parser's "unknown key" hints come from the same table, and
//! `taoflow schema` turns it into a JSON Schema for editors (Taplo / Even Better TOML).
//!
//! The table and the parsers are kept in agreement by the tests below: every key the schema
//! lists is accepted with its default (and leaves the stage key unchanged), at the ends of
//! its range and with each of its choices; values just outside are refused; and every key a
//! parser reads is listed.

use serde_json::{Map, Value, json};

use crate::stages;

/// A key's type as written in TOML.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Int,
    Float,
    Bool,
    /// A string or an array of strings.
    StrList,
    /// An array of integers.
    IntList,
    /// A number (fixed) or `[min, max]` (drawn per sample).
    NumOrRange,
    /// A size in pixels: one integer or a pair.
    Size,
    /// A table with these keys.
    Table(&'static [Key]),
    /// A table of strings (`name = "value"`).
    StrMap,
    /// Per-class settings: these keys apply to every class, and a sub-table named after a
    /// class (with the same keys) overrides them for it.
    PerClass(&'static [Key]),
    /// A number for every class, or a table of numbers by class name.
    NumOrClassMap,
    /// A free table (exec's `params`).
    Free,
    /// A path, an array of paths, or a table of `name = path` (exec's `outs`).
    Paths,
}

/// One key of a table.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub ty: Ty,
    pub doc: &'static str,
    /// The value the key takes when it is not written (a JSON literal); `None` where it
    /// depends on other keys or on the data (the description says how).
    pub default: Option<&'static str>,
    /// Lower bound of numbers, and whether it is allowed itself.
    pub min: Option<(f64, bool)>,
    /// Upper bound of numbers, and whether it is allowed itself.
    pub max: Option<(f64, bool)>,
    /// The strings allowed (empty: any).
    pub choices: &'static [&'static str],
    /// The integers allowed (empty: any).
    pub int_choices: &'static [i64],
    /// The stage cannot do without it (unless `[pipeline.defaults]` gives it).
    pub required: bool,
}

/// A key of type `ty`.
pub const fn key(name: &'static str, ty: Ty, doc: &'static str) -> Key {
    Key { name, ty, doc, default: None, min: None, max: None, choices: &[], int_choices: &[], required: false }
}

impl Key {
    pub const fn def(mut self, json: &'static str) -> Key {
        self.default = Some(json);
        self
    }
    /// Numbers in `[lo, hi]`.
    pub const fn range(mut self, lo: f64, hi: f64) -> Key {
        self.min = Some((lo, true));
        self.max = Some((hi, true));
        self
    }
    /// Numbers ≥ `lo`.
    pub const fn min(mut self, lo: f64) -> Key {
        self.min = Some((lo, true));
        self
    }
    /// Numbers > `lo`.
    pub const fn above(mut self, lo: f64) -> Key {
        self.min = Some((lo, false));
        self
    }
    /// Numbers ≤ `hi`.
    pub const fn max(mut self, hi: f64) -> Key {
        self.max = Some((hi, true));
        self
    }
    /// Numbers < `hi`.
    pub const fn below(mut self, hi: f64) -> Key {
        self.max = Some((hi, false));
        self
    }
    pub const fn one_of(mut self, choices: &'static [&'static str]) -> Key {
        self.choices = choices;
        self
    }
    pub const fn int_one_of(mut self, choices: &'static [i64]) -> Key {
        self.int_choices = choices;
        self
    }
    pub const fn required(mut self) -> Key {
        self.required = true;
        self
    }
}

/// Keys every stage takes besides its kind's own.
pub const COMMON: &[Key] = &[
    key("kind", Ty::Str, "What the stage does (required)."),
    key("gpus", Ty::Int, "GPUs the stage leases: 1 trains or evaluates on a GPU with libtorch (build with --features torch; one GPU per train stage for now); an exec stage gets its GPUs in CUDA_VISIBLE_DEVICES; 0 runs on the CPU.").def("0").min(0.0),
    key("description", Ty::Str, "A line about the stage, shown by `taoflow dag`."),
];

/// Keys of `[pipeline]`.
pub const PIPELINE: &[Key] = &[
    key("name", Ty::Str, "The pipeline's name: its outputs go to outputs/NAME/ (default: the file's name without .toml)."),
    key("seed", Ty::Int, "Seed of every random choice (splits, initialisation, shuffling, augmentation); stages get it mixed with their name.").def("0"),
    key("defaults", Ty::Free, "Defaults for every stage: `[pipeline.defaults.KIND]` tables (keys of that kind) and the common keys `gpus`, `description`; a stage's own keys win."),
];

/// The names of `spec`'s keys.
pub fn names(spec: &[Key]) -> Vec<&'static str> {
    spec.iter().map(|k| k.name).collect()
}

/// The JSON Schema (draft-07) of a pipeline file.
pub fn pipeline_schema() -> Value {
    let kinds = stages::registry();
    let mut defs = Map::new();
    let mut conditions = Vec::new();
    let mut defaults_props = Map::new();
    // Keys a stage cannot do without: required in every stage of the kind unless
    // `[pipeline.defaults.KIND]` gives them (a check across tables, at the root).
    let mut required = Vec::new();
    for kind in kinds {
        let spec = kind.spec();
        for k in spec.iter().filter(|k| k.required) {
            let given_by_defaults = json!({
                "properties": { "pipeline": { "properties": { "defaults": { "properties": { kind.name(): { "required": [k.name] } }, "required": [kind.name()] } }, "required": ["defaults"] } },
                "required": ["pipeline"]
            });
            let stage_has_it = json!({
                "properties": { "stages": { "additionalProperties": {
                    "if": { "properties": { "kind": { "const": kind.name() } }, "required": ["kind"] },
                    "then": { "required": [k.name] }
                } } }
            });
            required.push(json!({ "if": { "not": given_by_defaults }, "then": stage_has_it }));
        }
        let mut props = Map::new();
        props.insert("kind".into(), json!({ "const": kind.name(), "description": kind.summary() }));
        for k in COMMON.iter().skip(1).chain(spec.iter()) {
            props.insert(k.name.into(), key_schema(k));
        }
        defs.insert(
            format!("stage-{}", kind.name()),
            json!({ "type": "object", "description": kind.summary(), "properties": Value::Object(props.clone()), "additionalProperties": false }),
        );
        conditions.push(json!({
            "if": { "properties": { "kind": { "const": kind.name() } }, "required": ["kind"] },
            "then": { "$ref": format!("#/definitions/stage-{}", kind.name()) }
        }));
        props.remove("kind");
        defaults_props.insert(
            kind.name().into(),
            json!({ "type": "object", "description": format!("Defaults for every `{}` stage.", kind.name()), "properties": Value::Object(props), "additionalProperties": false }),
        );
    }
    for k in COMMON.iter().skip(1) {
        defaults_props.insert(k.name.into(), key_schema(k));
    }
    let kind_names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let kind_docs: Vec<String> = kinds.iter().map(|k| format!("{}: {}", k.name(), k.summary())).collect();
    let mut stage = Map::new();
    stage.insert("type".into(), json!("object"));
    stage.insert("description".into(), json!("One stage: `kind` says what it does; its other keys depend on the kind."));
    stage.insert("required".into(), json!(["kind"]));
    stage.insert(
        "properties".into(),
        json!({ "kind": { "type": "string", "enum": kind_names, "description": format!("What the stage does. {}", kind_docs.join(" | ")) } }),
    );
    stage.insert("allOf".into(), Value::Array(conditions));
    defs.insert("stage".into(), Value::Object(stage));

    let mut pipeline_props = Map::new();
    for k in PIPELINE {
        let mut s = key_schema(k);
        if k.name == "defaults" {
            s = json!({ "type": "object", "description": k.doc, "properties": Value::Object(defaults_props.clone()), "additionalProperties": false });
        }
        pipeline_props.insert(k.name.into(), s);
    }
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "taoflow pipeline",
        "description": format!("A taoflow pipeline file (taoflow {}): a [pipeline] table and [stages.NAME] tables.", env!("CARGO_PKG_VERSION")),
        "type": "object",
        "properties": {
            "pipeline": { "type": "object", "description": "The pipeline's name, seed and defaults.", "properties": Value::Object(pipeline_props), "additionalProperties": false },
            "stages": {
                "type": "object",
                "description": "The stages, one `[stages.NAME]` table each (NAME: letters, digits, _ and -).",
                "propertyNames": { "pattern": "^[A-Za-z0-9_-]+$" },
                "minProperties": 1,
                "additionalProperties": { "$ref": "#/definitions/stage" }
            }
        },
        "required": ["stages"],
        "additionalProperties": false,
        "allOf": required,
        "definitions": Value::Object(defs),
    })
}

/// The schema of one key's value.
fn key_schema(k: &Key) -> Value {
    let mut s = value_schema(k);
    if let Value::Object(m) = &mut s {
        let mut doc = k.doc.to_string();
        if k.required {
            doc.push_str(" Required.");
        }
        m.insert("description".into(), json!(doc));
        if let Some(d) = k.default {
            m.insert("default".into(), serde_json::from_str(d).expect("schema defaults are JSON"));
        }
    }
    s
}

fn bounds(k: &Key, m: &mut Map<String, Value>) {
    if let Some((lo, incl)) = k.min {
        m.insert(if incl { "minimum" } else { "exclusiveMinimum" }.into(), num(lo));
    }
    if let Some((hi, incl)) = k.max {
        m.insert(if incl { "maximum" } else { "exclusiveMaximum" }.into(), num(hi));
    }
}

fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9e15 { json!(x as i64) } else { json!(x) }
}

fn number(k: &Key, ty: &str) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(ty));
    bounds(k, &mut m);
    if !k.int_choices.is_empty() {
        m.insert("enum".into(), json!(k.int_choices));
    }
    Value::Object(m)
}

fn value_schema(k: &Key) -> Value {
    match k.ty {
        Ty::Str if !k.choices.is_empty() => json!({ "type": "string", "enum": k.choices }),
        Ty::Str => json!({ "type": "string" }),
        Ty::Int => number(k, "integer"),
        Ty::Float => number(k, "number"),
        Ty::Bool => json!({ "type": "boolean" }),
        Ty::StrList => json!({ "anyOf": [{ "type": "string" }, { "type": "array", "items": { "type": "string" } }] }),
        Ty::IntList => json!({ "type": "array", "items": number(k, "integer"), "minItems": 1 }),
        Ty::NumOrRange => {
            let n = number(k, "number");
            json!({ "anyOf": [n.clone(), { "type": "array", "items": n, "minItems": 2, "maxItems": 2 }] })
        }
        Ty::Size => {
            let n = number(k, "integer");
            json!({ "anyOf": [n.clone(), { "type": "array", "items": n, "minItems": 2, "maxItems": 2 }] })
        }
        Ty::Table(keys) => table_schema(keys),
        Ty::StrMap => json!({ "type": "object", "additionalProperties": { "type": "string" } }),
        Ty::PerClass(keys) => {
            let mut per_class = table_schema(keys);
            per_class["description"] = json!("Settings for the class of this name (its keys override the shared ones).");
            let mut t = table_schema(keys);
            t["additionalProperties"] = per_class;
            t
        }
        Ty::NumOrClassMap => {
            let n = number(k, "number");
            json!({ "anyOf": [n.clone(), { "type": "object", "additionalProperties": n }] })
        }
        Ty::Free => json!({ "type": "object" }),
        Ty::Paths => json!({ "anyOf": [
            { "type": "string" },
            { "type": "array", "items": { "type": "string" } },
            { "type": "object", "additionalProperties": { "type": "string" } }
        ] }),
    }
}

/// A nested table. Its required keys are only described: `[pipeline.defaults]` tables merge
/// into a stage's key by key, so a default may give them.
fn table_schema(keys: &[Key]) -> Value {
    let props: Map<String, Value> = keys.iter().map(|k| (k.name.to_string(), key_schema(k))).collect();
    json!({ "type": "object", "properties": Value::Object(props), "additionalProperties": false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// The smallest valid stage of each kind (the keys a stage cannot do without).
    fn minimal(kind: &str) -> &'static str {
        match kind {
            "exec" => "cmd = \"true\"",
            "convert" => "format = \"kitti\"\nsource = \"data\"",
            "augment" => "dataset = \"data\"",
            "train" => "dataset = \"data\"\narch = \"resnet18\"",
            "retrain" => "dataset = \"data\"\ninit = \"m\"",
            "prune" | "export" => "model = \"m\"",
            "evaluate" | "quantize" => "model = \"m\"\ndataset = \"data\"",
            other => panic!("no minimal stage for kind `{other}`: add one here"),
        }
    }

    /// Keys that need others beside them to be valid.
    fn context(kind: &str, path: &str) -> &'static str {
        match (kind, path) {
            ("quantize", "percentile") => "method = \"percentile\"",
            ("augment", "output_width") => "output_height = 10",
            ("augment", "output_height") => "output_width = 10",
            ("convert", "max_size") => "min_size = 0",
            ("convert", "test_fraction") => "val_fraction = 0.0",
            ("convert", "images" | "labels" | "val_images" | "val_labels") => "format = \"idx\"",
            ("convert", "annotations") => "format = \"coco\"",
            ("convert", "masks_dir") => "format = \"segmentation\"",
            ("convert", p) if p.starts_with("tile.") && p != "tile.size" => "tile.size = 416",
            ("train" | "retrain", "soft_start") => "schedule = \"soft_start_annealing\"\nannealing_start = 1.0",
            ("train" | "retrain", "annealing_start") => "schedule = \"soft_start_annealing\"\nsoft_start = 0.0",
            _ => "",
        }
    }

    fn parse(kind: &str, body: &str) -> Result<crate::config::Pipeline, String> {
        let mut text = format!("[stages.s]\nkind = \"{kind}\"\n{}\n", minimal(kind));
        // Later lines replace the minimal ones (a TOML table cannot repeat a key).
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        for l in body.lines().filter(|l| !l.trim().is_empty()) {
            let k = l.split('=').next().unwrap().trim();
            lines.retain(|x| x.split('=').next().unwrap().trim() != k);
            lines.push(l.to_string());
        }
        text = lines.join("\n");
        crate::config::parse(Path::new("t.toml"), PathBuf::from("."), text.clone(), &[]).map_err(|d| format!("{}\n---\n{text}", d.render(false)))
    }

    fn params(p: &crate::config::Pipeline) -> String {
        format!("{:?}", p.stages[0].def.params)
    }

    fn toml_of(v: &Value) -> String {
        match v {
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{}]", a.iter().map(toml_of).collect::<Vec<_>>().join(", ")),
            other => other.to_string(),
        }
    }

    fn lit(x: f64, int: bool) -> String {
        if int { format!("{}", x as i64) } else { format!("{x:?}") }
    }

    /// Values of `k` that must be accepted and values that must be refused, as TOML.
    fn probes(k: &Key) -> (Vec<String>, Vec<String>) {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        let int = matches!(k.ty, Ty::Int | Ty::IntList | Ty::Size);
        let wrap = |s: String| if let Ty::IntList = k.ty { format!("[{s}]") } else { s };
        let step = |x: f64| if int { 1.0 } else { 1e-6 * x.abs().max(1.0) };
        if let Some((lo, incl)) = k.min {
            if incl {
                ok.push(wrap(lit(lo, int)));
                bad.push(wrap(lit(lo - step(lo), int)));
            } else {
                ok.push(wrap(lit(lo + step(lo), int)));
                bad.push(wrap(lit(lo, int)));
            }
        }
        if let Some((hi, incl)) = k.max {
            if incl {
                ok.push(wrap(lit(hi, int)));
                bad.push(wrap(lit(hi + step(hi), int)));
            } else {
                ok.push(wrap(lit(hi - step(hi), int)));
                bad.push(wrap(lit(hi, int)));
            }
        }
        for c in k.choices {
            ok.push(format!("{c:?}"));
        }
        if !k.choices.is_empty() {
            bad.push("\"no-such-choice\"".into());
        }
        for c in k.int_choices {
            ok.push(c.to_string());
        }
        if let (Some(lo), Some(hi)) = (k.int_choices.iter().min(), k.int_choices.iter().max()) {
            for x in *lo..=*hi {
                if !k.int_choices.contains(&x) {
                    bad.push(x.to_string());
                }
            }
        }
        if let Ty::Bool = k.ty {
            ok.extend(["true".to_string(), "false".to_string()]);
        }
        match k.ty {
            Ty::Str | Ty::StrList | Ty::Paths => bad.push("1".into()),
            Ty::Int | Ty::Float | Ty::Bool | Ty::NumOrRange | Ty::Size | Ty::IntList | Ty::NumOrClassMap => bad.push("\"text\"".into()),
            Ty::Table(_) | Ty::StrMap | Ty::PerClass(_) | Ty::Free => bad.push("1".into()),
        }
        if matches!(k.ty, Ty::NumOrRange) && k.min.is_some() && k.max.is_some() {
            let (lo, hi) = (k.min.unwrap().0, k.max.unwrap().0);
            ok.push(format!("[{}, {}]", lit(lo, false), lit(hi, false)));
            bad.push(format!("[{}, {}]", lit(hi, false), lit(lo, false)));
        }
        (ok, bad)
    }

    /// Every (path, key) of a kind, nested tables as `table.key`.
    fn walk(prefix: &str, keys: &'static [Key], out: &mut Vec<(String, &'static Key)>) {
        for k in keys {
            let path = if prefix.is_empty() { k.name.to_string() } else { format!("{prefix}.{}", k.name) };
            out.push((path.clone(), k));
            if let Ty::Table(sub) | Ty::PerClass(sub) = k.ty {
                walk(&path, sub, out);
            }
        }
    }

    /// `a.b = v` as TOML lines for a stage table (`[stages.s]` has only dotted keys).
    fn assign(path: &str, v: &str) -> String {
        format!("{path} = {v}")
    }

    #[test]
    fn schema_and_parsers_agree() {
        let mut checked = 0;
        for kind in stages::registry() {
            let spec: &'static [Key] = Box::leak(kind.spec().into_boxed_slice());
            parse(kind.name(), "").unwrap_or_else(|e| panic!("minimal `{}` stage refused:\n{e}", kind.name()));
            let mut all = Vec::new();
            walk("", spec, &mut all);
            walk("", &COMMON[1..], &mut all);
            for (path, k) in all {
                let ctx = context(kind.name(), &path);
                let (ok, bad) = probes(k);
                // Defaults: accepted, and the same stage key as leaving the key out (where
                // writing a nested key does not itself switch a feature on).
                if let Some(d) = k.default {
                    let v = toml_of(&serde_json::from_str(d).unwrap());
                    let with = parse(kind.name(), &format!("{ctx}\n{}", assign(&path, &v))).unwrap_or_else(|e| panic!("`{}` refuses its own default {path} = {v}:\n{e}", kind.name()));
                    let nested_switch = path.contains('.') && matches!(kind.name(), "train" | "retrain" | "evaluate");
                    if !nested_switch {
                        let without = parse(kind.name(), ctx).unwrap();
                        assert_eq!(params(&with), params(&without), "`{}`: {path} = {v} (the schema's default) changes the stage's parameters", kind.name());
                    }
                }
                for v in ok {
                    parse(kind.name(), &format!("{ctx}\n{}", assign(&path, &v))).unwrap_or_else(|e| panic!("`{}`: the schema allows {path} = {v}, the parser refuses it:\n{e}", kind.name()));
                    checked += 1;
                }
                for v in bad {
                    assert!(parse(kind.name(), &format!("{ctx}\n{}", assign(&path, &v))).is_err(), "`{}`: the schema refuses {path} = {v}, the parser accepts it", kind.name());
                    checked += 1;
                }
            }
            // An unknown key is refused at the top and in every nested table.
            for (path, k) in spec.iter().map(|k| (k.name, k)) {
                if let Ty::Table(_) | Ty::PerClass(_) = k.ty {
                    let ctx = context(kind.name(), &format!("{path}.no_such_key"));
                    assert!(parse(kind.name(), &format!("{ctx}\n{path}.no_such_key = 1")).is_err(), "`{}`: {path}.no_such_key accepted", kind.name());
                }
            }
            assert!(parse(kind.name(), "no_such_key = 1").is_err());
        }
        assert!(checked > 300, "only {checked} probes");
    }

    /// Per-class tables are read into structs: the schema lists their fields and defaults.
    #[test]
    fn per_class_keys_are_the_structs_fields() {
        use crate::tasks::detection::{postprocess, train};
        for (keys, default) in [
            (postprocess::CLUSTER_KEYS, serde_json::to_value(postprocess::ClusterConfig::default()).unwrap()),
            (train::TARGET_KEYS, serde_json::to_value(train::ClassTraining::default()).unwrap()),
        ] {
            let fields = default.as_object().unwrap();
            let mut listed = names(keys);
            listed.sort();
            let mut want: Vec<&str> = fields.keys().map(|k| k.as_str()).collect();
            want.sort();
            assert_eq!(listed, want);
            for k in keys {
                let d: Value = serde_json::from_str(k.default.expect("per-class keys have defaults")).unwrap();
                let f = &fields[k.name];
                let same = match (d.as_f64(), f.as_f64()) {
                    (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                    _ => &d == f,
                };
                assert!(same, "{}: schema default {d}, the struct's {f}", k.name);
            }
        }
    }

    #[test]
    fn common_keys_are_the_configs() {
        assert_eq!(names(COMMON), crate::config::COMMON_KEYS);
    }

    #[test]
    fn parsers_read_only_listed_keys() {
        for kind in stages::registry() {
            let spec = kind.spec();
            let listed: Vec<&str> = COMMON.iter().chain(spec.iter()).map(|k| k.name).collect();
            let table = crate::value::Table::default();
            let mut diags = crate::diag::Diags::default();
            let mut f = crate::config::Fields::new(&table, "t", &mut diags);
            let _ = kind.parse(&mut f, "s");
            // `retrain` reads `arch` and `pretrained` only to explain that it takes neither.
            let explained: &[&str] = if kind.name() == "retrain" { &["arch", "pretrained"] } else { &[] };
            for used in f.used() {
                assert!(listed.contains(&used.as_str()) || explained.contains(&used.as_str()), "`{}` reads `{used}`, which its spec does not list", kind.name());
            }
        }
    }

    #[test]
    fn defaults_are_json_and_docs_are_written() {
        let mut all = Vec::new();
        for kind in stages::registry() {
            walk("", Box::leak(kind.spec().into_boxed_slice()), &mut all);
        }
        walk("", COMMON, &mut all);
        walk("", PIPELINE, &mut all);
        for (path, k) in all {
            if let Some(d) = k.default {
                serde_json::from_str::<Value>(d).unwrap_or_else(|e| panic!("{path}: default {d} is not JSON: {e}"));
            }
            assert!(k.doc.len() > 10 && k.doc.ends_with('.'), "{path}: write a sentence of description");
        }
        let s = pipeline_schema();
        assert_eq!(s["definitions"]["stage"]["properties"]["kind"]["enum"].as_array().unwrap().len(), stages::registry().len());
    }
}
