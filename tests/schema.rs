//! `taoflow schema` checked by an independent validator (Python's `jsonschema`, the
//! reference implementation of JSON Schema, reading the TOML with `tomllib`): the schema is a
//! valid draft-07 schema, every committed pipeline passes it, and malformed pipelines fail
//! it — each with the error a person would look for.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{text, Project};

const VALIDATE: &str = r#"
import json, sys, tomllib
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
v = jsonschema.Draft7Validator(schema)
out = {}
for path in sys.argv[2:]:
    try:
        doc = tomllib.load(open(path, "rb"))
    except tomllib.TOMLDecodeError as e:
        out[path] = {"toml": str(e)}
        continue
    errs = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    # The deepest cause of each error (anyOf/if-then wrap the useful message).
    def leaves(e):
        return [x for c in (e.context or []) for x in leaves(c)] or [e]
    out[path] = {"errors": [".".join(map(str, x.absolute_path)) + ": " + x.message for e in errs for x in leaves(e)]}
print(json.dumps(out))
"#;

fn python_ok() -> bool {
    let ok = Command::new("python3").args(["-c", "import jsonschema, tomllib"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        assert!(std::env::var_os("TAOFLOW_REQUIRE_PYTHON").is_none(), "python3 with jsonschema is required (scripts/test.sh installs it)");
        eprintln!("skipping: python3 -c 'import jsonschema, tomllib' failed");
    }
    ok
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Validate `files` against the schema `taoflow schema -o` wrote: path -> errors.
fn validate(p: &Project, files: &[PathBuf]) -> serde_json::Map<String, serde_json::Value> {
    let schema = p.path("schema.json");
    let o = p.run(&["schema", "-o", schema.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let mut args = vec!["-c".to_string(), VALIDATE.to_string(), schema.display().to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let o = Command::new("python3").args(&args).output().unwrap();
    assert!(o.status.success(), "validator failed: {}", text(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_object().unwrap().clone()
}

fn tomls(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    v.sort();
    v
}

#[test]
fn schema_prints_and_writes_the_same() {
    let p = Project::new();
    let o = p.run(&["schema"]);
    assert!(o.status.success(), "{}", text(&o));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert!(p.run(&["schema", "--output", p.path("s.json").to_str().unwrap()]).status.success());
    let written: serde_json::Value = serde_json::from_str(&p.read("s.json")).unwrap();
    assert_eq!(printed, written);
    // Every stage kind, with described keys, defaults and ranges.
    let defs = printed["definitions"].as_object().unwrap();
    for kind in ["exec", "convert", "augment", "train", "retrain", "prune", "evaluate", "quantize", "export"] {
        let props = defs[&format!("stage-{kind}")]["properties"].as_object().unwrap_or_else(|| panic!("no definition for {kind}"));
        assert!(props.values().all(|v| v["description"].as_str().is_some_and(|d| !d.is_empty())), "{kind}: a key without description");
    }
    let epochs = &defs["stage-train"]["properties"]["epochs"];
    assert_eq!((epochs["type"].as_str(), epochs["default"].as_i64(), epochs["minimum"].as_i64()), (Some("integer"), Some(10), Some(1)));
    assert_eq!(defs["stage-export"]["properties"]["opset"]["maximum"], 21);
    // A write that cannot happen is an error, not a panic.
    let o = p.run(&["schema", "-o", p.path("s.json/x.json").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("cannot write"), "{}", text(&o));
}

#[test]
fn every_committed_pipeline_passes_the_schema() {
    if !python_ok() {
        return;
    }
    let files: Vec<PathBuf> = ["pipelines", "bench", "tests/fixtures"].iter().flat_map(|d| tomls(d)).collect();
    assert!(files.len() >= 10, "{files:?}");
    let p = Project::new();
    let r = validate(&p, &files);
    for f in &files {
        let errs = &r[&f.display().to_string()];
        assert_eq!(errs["errors"], serde_json::json!([]), "{} fails the schema: {errs}", f.display());
        // And taoflow itself reads it (the schema is not looser than needed to pass).
        let o = p.run(&["dag", f.to_str().unwrap()]);
        let t = text(&o);
        assert!(o.status.success() || t.contains("datasets/fashion-mnist"), "{}: {t}", f.display());
    }
}

/// Malformed pipelines whose fault is in the file's shape (keys, types, ranges, kinds) fail
/// the schema with a message naming it; the others (TOML syntax, references, cycles, paths)
/// are beyond a schema and are left to `taoflow`'s own checks (tests/malformed.rs).
#[test]
fn malformed_pipelines_fail_the_schema() {
    if !python_ok() {
        return;
    }
    let p = Project::new();
    let cases: &[(&str, &str)] = &[
        ("stage_typo.toml", "[stages.train]\nkind = \"train\"\ndataset = \"d\"\narch = \"resnet18\"\nlrr = 0.1\n"),
        ("wrong_type.toml", "[stages.train]\nkind = \"train\"\ndataset = \"d\"\narch = \"resnet18\"\nepochs = \"ten\"\n"),
        ("out_of_range.toml", "[stages.train]\nkind = \"train\"\ndataset = \"d\"\narch = \"resnet18\"\nmomentum = 1.5\n"),
        ("bad_choice.toml", "[stages.train]\nkind = \"train\"\ndataset = \"d\"\narch = \"resnet19\"\n"),
        ("nested_typo.toml", "[stages.aug]\nkind = \"augment\"\ndataset = \"d\"\n[stages.aug.spatial]\nflip_horizonal = 0.5\n"),
        ("range_out.toml", "[stages.aug]\nkind = \"augment\"\ndataset = \"d\"\n[stages.aug.spatial]\nrotation = [-200, 15]\n"),
        ("per_class.toml", "[stages.train]\nkind = \"train\"\ndataset = \"d\"\narch = \"resnet18\"\n[stages.train.postprocess.car]\ncoverage_threshold = 2.0\n"),
        ("required.toml", "[stages.e]\nkind = \"evaluate\"\nmodel = \"t.model\"\n"),
        ("other_kinds_key.toml", "[stages.e]\nkind = \"export\"\nmodel = \"t.model\"\nepochs = 3\n"),
    ];
    let mut files = Vec::new();
    for (name, body) in cases {
        p.write(name, body);
        files.push(p.path(name));
    }
    // The same faults are errors for taoflow itself.
    for f in &files {
        let o = p.run(&["dag", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "taoflow accepts {}: {}", f.display(), text(&o));
    }
    let must_fail = [
        "cmd_missing", "cmd_wrong_type", "deps_entry_wrong_type", "deps_wrong_type", "empty_stages_table", "gpus_negative", "gpus_wrong_type", "invalid_stage_name", "kind_not_string",
        "metrics_wrong_type", "missing_kind", "no_stages", "outs_wrong_type", "params_not_table", "pipeline_defaults_unknown", "pipeline_not_table", "pipeline_unknown_key", "planned_kind", "prune_two_criteria",
        "seed_wrong_type", "several_errors", "stage_not_table", "unknown_kind", "unknown_stage_key", "unknown_top_level_key",
    ];
    let malformed = tomls("tests/malformed");
    for m in must_fail {
        assert!(malformed.iter().any(|f| f.file_stem().unwrap() == m), "tests/malformed/{m}.toml is gone");
    }
    files.extend(malformed.iter().cloned());
    let r = validate(&p, &files);
    let errors = |f: &Path| -> Vec<String> { r[&f.display().to_string()]["errors"].as_array().map(|a| a.iter().map(|e| e.as_str().unwrap().to_string()).collect()).unwrap_or_default() };
    let expect: &[(&str, &str)] = &[
        ("stage_typo", "'lrr' was unexpected"),
        ("wrong_type", "'ten' is not of type 'integer'"),
        ("out_of_range", "1.5 is greater than the maximum"),
        ("bad_choice", "'resnet19' is not one of"),
        ("nested_typo", "'flip_horizonal' was unexpected"),
        ("range_out", "-200 is less than the minimum of -180"),
        ("per_class", "2.0 is greater than the maximum of 1"),
        ("required", "'dataset' is a required property"),
        ("other_kinds_key", "'epochs' was unexpected"),
    ];
    for (f, (name, want)) in files.iter().zip(expect) {
        let e = errors(f);
        assert!(e.iter().any(|m| m.contains(want)), "{name}: expected an error with {want:?}, got {e:?}");
    }
    for f in &malformed {
        let stem = f.file_stem().unwrap().to_str().unwrap();
        let res = &r[&f.display().to_string()];
        if stem.starts_with("syntax_") {
            assert!(res.get("toml").is_some(), "{stem}: TOML syntax error not seen");
        } else if must_fail.contains(&stem) {
            assert!(!errors(f).is_empty(), "{stem} passes the schema");
        } else {
            // Beyond a schema: references, cycles, paths, duplicate outputs, placeholders.
            assert_eq!(errors(f), Vec::<String>::new(), "{stem}: the schema refuses a file only taoflow's graph checks should");
        }
    }
}

/// The schema editors read (docs/pipeline.schema.json, named in .taplo.toml) is the current one.
#[test]
fn committed_schema_is_current() {
    let p = Project::new();
    let o = p.run(&["schema"]);
    assert!(o.status.success());
    let committed = std::fs::read_to_string(repo().join("docs/pipeline.schema.json")).unwrap();
    assert!(committed == String::from_utf8(o.stdout).unwrap(), "docs/pipeline.schema.json is out of date: run `taoflow schema -o docs/pipeline.schema.json`");
    let taplo = std::fs::read_to_string(repo().join(".taplo.toml")).unwrap();
    assert!(taplo.contains("path = \"docs/pipeline.schema.json\""), "{taplo}");
}

/// Taplo, as Even Better TOML runs it, with the repository's .taplo.toml: the committed
/// pipelines pass, and a stage with a typo and a value out of range fails with both named.
#[test]
fn taplo_checks_pipelines_with_the_schema() {
    let taplo = std::env::var("TAOFLOW_TAPLO").unwrap_or_else(|_| "taplo".into());
    // (`taplo --version` prints its version and exits with 1.)
    if !Command::new(&taplo).arg("--version").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("taplo ")) {
        assert!(std::env::var_os("TAOFLOW_REQUIRE_TAPLO").is_none(), "taplo is required (scripts/test.sh installs @taplo/cli)");
        eprintln!("skipping: no taplo");
        return;
    }
    let mut files: Vec<String> = ["pipelines", "bench", "tests/fixtures"].iter().flat_map(|d| tomls(d)).map(|f| f.strip_prefix(repo()).unwrap().display().to_string()).collect();
    files.sort();
    let o = Command::new(&taplo).arg("lint").args(&files).current_dir(repo()).env("RUST_LOG", "warn").output().unwrap();
    assert!(o.status.success(), "taplo lint of the committed pipelines failed:\n{}", text(&o));
    let p = Project::new();
    p.write("bad.toml", "[stages.train]\nkind = \"train\"\ndataset = \"d\"\narch = \"resnet18\"\nlrr = 0.1\n[stages.p]\nkind = \"prune\"\nmodel = \"train.model\"\nthreshold = 1.5\n");
    let schema = format!("file://{}", repo().join("docs/pipeline.schema.json").display());
    let o = Command::new(&taplo).args(["lint", "--no-auto-config", "--schema", &schema, "bad.toml"]).current_dir(p.path(".")).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "taplo accepts a bad pipeline: {t}");
    assert!(t.contains("'lrr' was unexpected") && t.contains("1.5 is greater than the maximum of 1"), "{t}");
}
