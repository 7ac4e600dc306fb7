//! Snapshot tests of the diagnostics for malformed pipeline files: every file in
//! `tests/malformed/` must give a clear error (exit code 2) and never a panic.
//! Update snapshots with `INSTA_UPDATE=always cargo test --test malformed` and review them.

use std::path::Path;
use std::process::Command;

fn taoflow(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_taoflow"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("TAOFLOW_STORE")
        .output()
        .expect("run taoflow");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn malformed_pipelines_get_clear_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus must have at least 30 cases, has {}", files.len());
    let mut seen = std::collections::HashSet::new();
    for f in &files {
        let (code, stderr) = taoflow(&dir, &["dag", f]);
        assert!(!stderr.contains("panicked"), "{f} panicked:\n{stderr}");
        assert_eq!(code, 2, "{f}: exit code {code}, stderr:\n{stderr}");
        assert!(stderr.starts_with("error: "), "{f}: {stderr}");
        assert!(stderr.contains(&format!("--> {f}:")), "{f}: the message must name the file and line:\n{stderr}");
        let body = stderr.replace(f.as_str(), "FILE");
        assert!(seen.insert(body), "{f}: same message as another case:\n{stderr}");
        insta::with_settings!({snapshot_path => "malformed/snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(f.trim_end_matches(".toml"), stderr);
        });
    }
}

#[test]
fn bad_overrides_point_at_the_command_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cases: &[(&str, &str)] = &[
        ("override_no_equals", "prep.n"),
        ("override_no_key", "prep=3"),
        ("override_unknown_stage", "perp.n=3"),
        ("override_unknown_param", "prep.m=3"),
        ("override_bad_value", "prep.n=[1,"),
    ];
    for (name, ov) in cases {
        let (code, stderr) = taoflow(&dir, &["dag", "override_base.toml", "-S", ov]);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(stderr.contains("--> command line:1:"), "{name}: {stderr}");
        insta::with_settings!({snapshot_path => "malformed/snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(*name, stderr);
        });
    }
    // A good override works, nested parameters included.
    let (code, stderr) = taoflow(&dir, &["dag", "override_base.toml", "-S", "prep.n=5", "-S", "prep.opt.lr=0.5"]);
    assert_eq!(code, 0, "{stderr}");
}
