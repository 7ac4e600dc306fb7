//! Helpers for end-to-end tests that drive the real binary.
#![allow(dead_code)]

pub mod fixtures;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct Project {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
}

impl Project {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        Project { dir, store }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_taoflow"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("TAOFLOW_STORE", &self.store)
            .env("TAOFLOW_GPUS", "none")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run taoflow")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn taoflow")
    }

    /// `taoflow run --json` -> stage name -> status; panics on a crash.
    pub fn run_json(&self, extra: &[&str]) -> (i32, BTreeMap<String, serde_json::Value>, String) {
        let mut args = vec!["run", "p.toml", "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        parse_json_run(&out)
    }

    /// Stage -> status of `run --json`.
    pub fn statuses(&self, extra: &[&str]) -> BTreeMap<String, String> {
        let (code, m, err) = self.run_json(extra);
        assert!(code == 0 || code == 1, "exit {code}: {err}");
        m.into_iter().map(|(k, v)| (k, v["status"].as_str().unwrap().to_string())).collect()
    }

    /// Lines of the file each stage appends to when it really runs.
    pub fn ran_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("ran.log")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    pub fn clear_ran_log(&self) {
        let _ = std::fs::remove_file(self.path("ran.log"));
    }
}

pub fn parse_json_run(out: &Output) -> (i32, BTreeMap<String, serde_json::Value>, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "taoflow panicked:\n{stderr}");
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
        m.insert(v["stage"].as_str().unwrap().to_string(), v);
    }
    (out.status.code().unwrap_or(-1), m, stderr)
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn wait_for(path: &Path, secs: u64) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < secs {
        if path.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}
