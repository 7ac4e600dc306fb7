//! End-to-end tests of the real binary on small pipelines of `exec` stages.

mod common;

use common::{map, text, Project};

/// prepare -> train -> evaluate, plus an independent `lint` stage. Every stage appends its
/// name to ran.log when it really runs.
const PIPELINE: &str = r#"
[pipeline]
name = "e2e"
seed = 7

[stages.prepare]
kind = "exec"
cmd = "echo prepare >> ran.log && mkdir -p data && cat raw/input.txt > data/train.txt && echo rows=${rows} >> data/train.txt"
params = { rows = 10 }
deps = ["raw"]
outs = ["data"]

[stages.train]
kind = "exec"
cmd = "echo train >> ran.log && wc -l < data/train.txt > model.txt && echo lr=${lr} >> model.txt"
params = { lr = 0.1 }
deps = ["prepare.data"]
outs = { model = "model.txt" }

[stages.evaluate]
kind = "exec"
cmd = "echo evaluate >> ran.log && printf '{\"accuracy\": 0.5, \"loss\": {\"val\": 1.25}}' > metrics.json"
deps = ["train.model"]
metrics = "metrics.json"

[stages.lint]
kind = "exec"
cmd = "echo lint >> ran.log && echo ok > lint.txt"
outs = ["lint.txt"]
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("p.toml", PIPELINE);
    p.write("raw/input.txt", "a\nb\nc\n");
    p
}

#[test]
fn miss_hit_change_one_param_restore() {
    let p = project();
    // First run: everything runs.
    let s = p.statuses(&[]);
    assert_eq!(s, map(&[("prepare", "ran"), ("train", "ran"), ("evaluate", "ran"), ("lint", "ran")]));
    let mut ran = p.ran_log();
    ran.sort();
    assert_eq!(ran, ["evaluate", "lint", "prepare", "train"]);
    assert!(p.path("p.lock").exists(), "lock file beside the pipeline");
    assert!(p.store.join("CACHEDIR.TAG").exists());

    // Second run: nothing runs.
    p.clear_ran_log();
    let out = p.run(&["run", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cache hit"), "{}", text(&out));
    assert!(p.ran_log().is_empty());

    // status before the change: all up to date.
    let st = text(&p.run(&["status", "p.toml"]));
    assert!(st.contains("all 4 stage(s) up to date"), "{st}");

    // Change one parameter in the file: that stage and its dependents only.
    std::fs::write(p.path("p.toml"), PIPELINE.replace("lr = 0.1", "lr = 0.2")).unwrap();
    let st = text(&p.run(&["status", "p.toml"]));
    assert!(st.contains("parameter params.lr changed: 0.1 → 0.2"), "{st}");
    assert!(st.contains("train") && st.contains("evaluate"), "{st}");
    assert!(!st.contains("prepare") && !st.contains("lint"), "{st}");
    let s = p.statuses(&[]);
    assert_eq!(s, map(&[("prepare", "cached"), ("train", "ran"), ("evaluate", "ran"), ("lint", "cached")]));
    assert_eq!(p.ran_log(), ["train", "evaluate"]);
    assert!(p.read("model.txt").contains("lr=0.2"));

    // A `-S` override does the same without editing the file.
    p.clear_ran_log();
    // train re-runs on the new data but writes the same model (the line count did not
    // change), so evaluate's key is unchanged: early cut-off, as in Bazel.
    let s = p.statuses(&["-S", "prepare.rows=20"]);
    assert_eq!(s, map(&[("prepare", "ran"), ("train", "ran"), ("evaluate", "cached"), ("lint", "cached")]));

    // Back to the file's parameters: all of it is in the store already.
    p.clear_ran_log();
    let s = p.statuses(&[]);
    assert!(s.values().all(|v| v == "cached"), "{s:?}");
    assert!(p.ran_log().is_empty());
    assert!(p.read("data/train.txt").contains("rows=10"), "workspace restored to the cached result");

    // Deleting an output restores it from the store without running anything.
    std::fs::remove_file(p.path("model.txt")).unwrap();
    std::fs::remove_dir_all(p.path("data")).unwrap();
    let (code, m, err) = p.run_json(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(m["train"]["status"], "cached");
    assert_eq!(m["train"]["restored"][0], "model");
    assert_eq!(m["prepare"]["restored"][0], "data");
    assert!(p.ran_log().is_empty(), "nothing re-ran: {:?}", p.ran_log());
    assert!(p.read("model.txt").contains("lr=0.2"));
    assert!(p.read("data/train.txt").starts_with("a\nb\nc\n"));

    // Editing an external input re-runs what reads it.
    p.write("raw/input.txt", "a\nb\nc\nd\n");
    let st = text(&p.run(&["status", "p.toml"]));
    assert!(st.contains("input `raw` changed"), "{st}");
    p.clear_ran_log();
    let s = p.statuses(&[]);
    assert_eq!(s["prepare"], "ran");
    assert_eq!(s["lint"], "cached");
}

#[test]
fn show_dag_and_json() {
    let p = project();
    assert!(p.run(&["run", "p.toml"]).status.success());
    let show = text(&p.run(&["show", "p.toml"]));
    assert!(show.contains("evaluate") && show.contains("accuracy") && show.contains("0.5"), "{show}");
    assert!(show.contains("loss.val") && show.contains("1.25"), "{show}");
    let j: serde_json::Value = serde_json::from_slice(&p.run(&["show", "p.toml", "--json"]).stdout).unwrap();
    assert_eq!(j["evaluate"]["accuracy"], 0.5);

    let dag = text(&p.run(&["dag", "p.toml"]));
    assert!(dag.contains("train (exec)\n  <- prepare.data (artifact)"), "{dag}");
    let dot = text(&p.run(&["dag", "p.toml", "--dot"]));
    assert!(dot.contains("\"prepare\" -> \"train\""), "{dot}");
    let mm = text(&p.run(&["dag", "p.toml", "--mermaid"]));
    assert!(mm.contains("s_train --> s_evaluate"), "{mm}");

    // The lock file is stable JSON that names every stage with its key and outputs.
    let lock: serde_json::Value = serde_json::from_str(&p.read("p.lock")).unwrap();
    assert_eq!(lock["stages"]["train"]["outs"]["model"]["path"], "model.txt");
    assert_eq!(lock["stages"]["train"]["key"].as_str().unwrap().len(), 64);
    let before = p.read("p.lock");
    assert!(p.run(&["run", "p.toml"]).status.success());
    assert_eq!(before, p.read("p.lock"), "a no-op run leaves the lock file unchanged");
}

#[test]
fn only_downstream_force_dry_run() {
    let p = project();
    assert!(p.run(&["run", "p.toml"]).status.success());
    p.clear_ran_log();

    let s = p.statuses(&["--force=train"]);
    assert_eq!(s["train"], "ran");
    assert_eq!(s["evaluate"], "cached", "same output, same key downstream");
    assert_eq!(p.ran_log(), ["train"]);

    p.clear_ran_log();
    let s = p.statuses(&["--force"]);
    assert!(s.values().all(|v| v == "ran"), "{s:?}");

    // --dry-run runs nothing and reports what would run.
    p.clear_ran_log();
    let (code, m, _) = p.run_json(&["--dry-run", "-S", "train.lr=0.3"]);
    assert_eq!(code, 0);
    assert_eq!(m["train"]["status"], "would-run");
    assert_eq!(m["evaluate"]["status"], "would-run");
    assert_eq!(m["prepare"]["status"], "cached");
    assert!(p.ran_log().is_empty());

    // --only runs one stage; its dependents are left alone, and the run succeeds.
    let (code, m, err) = p.run_json(&["--only", "train", "-S", "train.lr=0.3"]);
    let s: std::collections::BTreeMap<&str, &str> = m.iter().map(|(k, v)| (k.as_str(), v["status"].as_str().unwrap())).collect();
    assert_eq!(code, 0, "{s:?} {err}");
    assert_eq!(s["train"], "ran");
    assert!(!s.contains_key("evaluate") || s["evaluate"] != "ran", "{s:?}");
    assert_eq!(p.ran_log(), ["train"]);
    p.clear_ran_log();
    let s = p.statuses(&["--only", "train", "--downstream", "-S", "train.lr=0.4"]);
    assert_eq!(s["train"], "ran");
    assert_eq!(s["evaluate"], "ran");
    assert_eq!(s["lint"], "cached");

    // --only on a stage whose upstream is stale says so instead of using stale data.
    let (code, m, _) = p.run_json(&["--only", "train", "-S", "prepare.rows=99"]);
    assert_eq!(code, 1);
    assert_eq!(m["prepare"]["status"], "skipped");
    assert!(m["prepare"]["error"].as_str().unwrap().contains("not selected by --only"));
    assert_eq!(m["train"]["status"], "skipped");

    let out = p.run(&["run", "p.toml", "--only", "trian"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("did you mean `train`?"), "{}", text(&out));
}

#[test]
fn failures_skip_dependents_and_keep_going_runs_the_rest() {
    let p = Project::new();
    p.write(
        "p.toml",
        r#"
[stages.bad]
kind = "exec"
cmd = "echo about to fail; echo oops >&2; exit 3"
outs = ["bad.txt"]

[stages.after]
kind = "exec"
cmd = "cat bad.txt > after.txt"
deps = ["bad"]
outs = ["after.txt"]

[stages.free]
kind = "exec"
cmd = "sleep 0.3; echo free > free.txt"
outs = ["free.txt"]

[stages.lazy]
kind = "exec"
cmd = "true"
outs = ["never.txt"]
"#,
    );
    let (code, m, err) = p.run_json(&["--keep-going"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(m["bad"]["status"], "failed");
    let e = m["bad"]["error"].as_str().unwrap();
    assert!(e.contains("exit status 3") && e.contains("oops"), "the error shows the log tail: {e}");
    assert_eq!(m["after"]["status"], "skipped");
    assert!(m["after"]["error"].as_str().unwrap().contains("upstream stage `bad` failed"));
    assert_eq!(m["free"]["status"], "ran");
    assert_eq!(m["lazy"]["status"], "failed");
    let e = m["lazy"]["error"].as_str().unwrap();
    assert!(e.contains("did not create `never.txt`") && e.contains("p.toml:21:"), "names the output and its line: {e}");
    // Nothing of a failed stage is recorded.
    let lock: serde_json::Value = serde_json::from_str(&p.read("p.lock")).unwrap();
    assert!(lock["stages"].get("bad").is_none());
    assert!(lock["stages"].get("free").is_some());
    // Human output names the log file.
    let out = p.run(&["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("log: "), "{}", text(&out));
}

#[test]
fn gpu_leases() {
    let p = Project::new();
    p.write(
        "p.toml",
        r#"
[stages.a]
kind = "exec"
cmd = "echo \"$CUDA_VISIBLE_DEVICES\" > a.txt; sleep 0.2"
gpus = 1
outs = ["a.txt"]

[stages.b]
kind = "exec"
cmd = "echo \"$CUDA_VISIBLE_DEVICES\" > b.txt; sleep 0.2"
gpus = 1
outs = ["b.txt"]

[stages.both]
kind = "exec"
cmd = "echo \"$CUDA_VISIBLE_DEVICES\" > both.txt"
gpus = 2
outs = ["both.txt"]
"#,
    );
    // No GPU on this machine: a clear failure.
    let (code, m, _) = p.run_json(&["--keep-going"]);
    assert_eq!(code, 1);
    let e = m["a"]["error"].as_str().unwrap();
    assert!(e.contains("needs 1 GPU(s) but this machine has 0") && e.contains("gpus = 0"), "{e}");
    // Two (declared) GPUs: each stage gets its own lease.
    let out = p.cmd(&["run", "p.toml", "--json"]).env("TAOFLOW_GPUS", "0,1").output().unwrap();
    let (code, _, err) = common::parse_json_run(&out);
    assert_eq!(code, 0, "{err}");
    let (a, b) = (p.read("a.txt").trim().to_string(), p.read("b.txt").trim().to_string());
    assert!(["0", "1"].contains(&a.as_str()) && ["0", "1"].contains(&b.as_str()), "{a} {b}");
    assert_eq!(p.read("both.txt").trim(), "0,1");
    // Cached results need no GPU.
    let (code, m, _) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert!(m.values().all(|v| v["status"] == "cached"));
}

#[test]
fn checkout_restores_from_the_store() {
    let p = project();
    assert!(p.run(&["run", "p.toml"]).status.success());
    std::fs::remove_dir_all(p.path("data")).unwrap();
    std::fs::write(p.path("model.txt"), "tampered").unwrap();
    let out = p.run(&["checkout", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(p.read("data/train.txt").starts_with("a\nb\nc\n"));
    assert!(!p.read("model.txt").contains("tampered"));
    assert!(text(&out).contains("2 output(s) restored"), "{}", text(&out));
}

#[test]
fn corrupt_store_objects_are_a_miss_and_a_warning() {
    let p = project();
    assert!(p.run(&["run", "p.toml"]).status.success());
    // Damage every object in the store, then delete a workspace output.
    let objects = p.store.join("cas-v1/objects");
    for shard in std::fs::read_dir(&objects).unwrap().flatten() {
        for obj in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let path = obj.path();
            let mut perm = std::fs::metadata(&path).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&path, perm).unwrap();
            std::fs::write(&path, "garbage").unwrap();
        }
    }
    std::fs::remove_file(p.path("model.txt")).unwrap();
    p.clear_ran_log();
    let out = p.run(&["run", "p.toml", "--json"]);
    let (code, m, err) = common::parse_json_run(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(m["train"]["status"], "ran", "a corrupt object is never served");
    assert!(err.contains("warning"), "{err}");
    assert!(p.read("model.txt").contains("lr=0.1"));
}

#[test]
fn gc_keeps_what_the_lock_file_reaches() {
    let p = project();
    assert!(p.run(&["run", "p.toml"]).status.success());
    assert!(p.run(&["run", "p.toml", "-S", "train.lr=0.9"]).status.success());
    // The lock file now names the lr=0.9 results; the lr=0.1 ones are unreachable.
    let out = p.run(&["gc", "--keep-days", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed"), "{}", text(&out));
    p.clear_ran_log();
    let s = p.statuses(&["-S", "train.lr=0.9"]);
    assert!(s.values().all(|v| v == "cached"), "{s:?}");
    let s = p.statuses(&[]);
    assert_eq!(s["train"], "ran", "collected results are made again");
}

#[test]
fn default_store_is_cache_beside_the_project() {
    let p = project();
    std::fs::create_dir(p.path(".git")).unwrap();
    let out = p.cmd(&["run", "p.toml"]).env_remove("TAOFLOW_STORE").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(p.path("cache/CACHEDIR.TAG").exists());
    assert!(p.path("cache/ac-v1").is_dir());
}

#[test]
fn defaults_and_key_order_do_not_change_keys() {
    let p = project();
    let (_, a, _) = p.run_json(&["--dry-run"]);
    // Same stages, keys in another order and defaults written out.
    let reordered = PIPELINE
        .replace("kind = \"exec\"\ncmd = \"echo lint", "cmd = \"echo lint")
        .replace("outs = [\"lint.txt\"]", "outs = [\"lint.txt\"]\nkind = \"exec\"\ngpus = 0\ndeps = []\nparams = {}");
    assert_ne!(reordered, PIPELINE);
    std::fs::write(p.path("p.toml"), reordered).unwrap();
    let (_, b, _) = p.run_json(&["--dry-run"]);
    assert_eq!(a["lint"]["key"], b["lint"]["key"]);
}

#[test]
fn every_committed_pipeline_is_valid() {
    // The pipelines in `pipelines/` (the README's, the GPU ones) parse, resolve their
    // inputs and plan, without running anything: a key renamed in a stage kind cannot
    // silently break them.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(root.join("pipelines")).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_taoflow"))
            .args(["run", "--dry-run"])
            .arg(&p)
            .current_dir(root)
            .env("TAOFLOW_STORE", store.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let s = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && s.contains("would run"), "{}: {s}", p.display());
        n += 1;
    }
    assert!(n >= 5, "found {n} pipelines");
}

#[test]
fn run_keeps_cudas_jit_cache_in_the_store() {
    // What the CUDA driver compiles at run time (cuDNN's run-time compiled engines, our
    // kernels) outlives the machine in the store, unless the user points it elsewhere.
    let p = Project::new();
    p.write("p.toml", "[stages.env]\nkind = \"exec\"\ncmd = \"echo $CUDA_CACHE_PATH > env.txt\"\nouts = [\"env.txt\"]\n");
    let out = p.cmd(&["run", "p.toml"]).env_remove("CUDA_CACHE_PATH").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(p.read("env.txt").trim(), p.store.join("cuda-jit").to_str().unwrap());
    let out = p.cmd(&["run", "p.toml", "--force"]).env("CUDA_CACHE_PATH", "/elsewhere/jit").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(p.read("env.txt").trim(), "/elsewhere/jit");
}

/// `--version` names the commit the binary was built from; `completions` prints scripts the
/// shells accept, generated from the same command definition (so `run --progress` is there).
#[test]
fn version_names_the_commit_and_completions_parse() {
    let p = Project::new();
    let v = String::from_utf8(p.run(&["--version"]).stdout).unwrap();
    assert!(v.starts_with(&format!("taoflow {}", env!("CARGO_PKG_VERSION"))), "{v}");
    let head = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok().filter(|o| o.status.success());
    if let Some(h) = head {
        // the binary is built from this checkout (a commit made since the build would differ,
        // but cargo rebuilds when HEAD moves)
        assert!(v.contains(&format!("({})", String::from_utf8_lossy(&h.stdout).trim())), "{v}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let o = p.run(&["completions", shell]);
        assert!(o.status.success(), "{}", text(&o));
        let s = String::from_utf8(o.stdout).unwrap();
        assert!(s.contains("taoflow") && s.contains("eval-detections") && s.contains("progress"), "{shell}: {s}");
    }
    p.write("c.bash", &String::from_utf8(p.run(&["completions", "bash"]).stdout).unwrap());
    let o = std::process::Command::new("bash").args(["-n", "c.bash"]).current_dir(p.path("")).output().unwrap();
    assert!(o.status.success(), "bash -n: {}", text(&o));
    let o = p.run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
