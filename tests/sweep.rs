//! Sweeps through the real binary: a 2×2 grid whose variants share their upstream stages,
//! a second sweep that runs nothing, `exp show` over the variants, `exp apply` and a run
//! served from the store; random sweeps over ranges; mistakes.

mod common;

use common::{text, Project};

fn pipeline(log: &str) -> String {
    format!(
        r#"
[pipeline]
name = "sw"
seed = 3

[stages.prepare]
kind = "exec"
cmd = "echo prepare >> {log} && mkdir -p data && cat raw/input.txt > data/train.txt"
deps = ["raw"]
outs = ["data"]

[stages.train]
kind = "exec"
cmd = "echo train-${{lr}} >> {log} && cat data/train.txt > model.txt && echo lr=${{lr}} >> model.txt"
params = {{ lr = 0.1 }}   # the learning rate
deps = ["prepare.data"]
outs = {{ model = "model.txt" }}

[stages.evaluate]
kind = "exec"
cmd = "echo evaluate-${{threshold}} >> {log} && awk -F= -v t=${{threshold}} '/^lr=/ {{ printf \"{{\\\"accuracy\\\": %g}}\", 1 - $2 - t / 10 }}' model.txt > metrics.json"
params = {{ threshold = 0.1 }}
deps = ["train.model"]
metrics = "metrics.json"
"#
    )
}

fn project() -> Project {
    let p = Project::new();
    let log = p.path("ran.log").display().to_string();
    p.write("p.toml", &pipeline(&log));
    p.write("raw/input.txt", "a\nb\n");
    p
}

fn sorted_log(p: &Project) -> Vec<String> {
    let mut v = p.ran_log();
    v.sort();
    v
}

#[test]
fn grid_sweep_shares_upstream_stages_and_applies() {
    let p = project();
    let sweep = ["run", "p.toml", "-S", "train.lr=0.1,0.2", "-S", "evaluate.threshold=0.1,0.3"];
    let out = p.run(&sweep);
    assert!(out.status.success(), "{}", text(&out));
    // prepare once for all four, train once per learning rate, evaluate once per variant.
    assert_eq!(sorted_log(&p), ["evaluate-0.1", "evaluate-0.1", "evaluate-0.3", "evaluate-0.3", "prepare", "train-0.1", "train-0.2"], "{}", text(&out));
    assert!(text(&out).contains("4 variant(s)"), "{}", text(&out));
    // Nothing landed in the workspace.
    for f in ["model.txt", "data", "metrics.json", "p.lock", "outputs"] {
        assert!(!p.path(f).exists(), "{f} written into the workspace");
    }

    // The same sweep again runs nothing.
    p.clear_ran_log();
    let mut again: Vec<&str> = sweep.to_vec();
    again.push("--json");
    let out = p.run(&again);
    assert!(out.status.success(), "{}", text(&out));
    assert!(p.ran_log().is_empty(), "{:?}", p.ran_log());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12, "{}", text(&out));
    assert!(lines.iter().all(|l| l["status"] == "cached"), "{}", text(&out));

    // exp show: four variants, best first.
    let out = p.run(&["exp", "show", "p.toml", "--sort-by", "evaluate.accuracy", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["source"] == "variant"));
    let acc: Vec<f64> = rows.iter().map(|r| r["metrics"]["evaluate.accuracy"].as_f64().unwrap()).collect();
    assert!((acc[0] - 0.89).abs() < 1e-9 && (acc[3] - 0.77).abs() < 1e-9, "{acc:?}");
    let worst = rows[3]["name"].as_str().unwrap().to_string();
    assert_eq!(rows[3]["params"]["train.params.lr"], "0.2");
    let t = String::from_utf8_lossy(&p.run(&["exp", "show", "p.toml"]).stdout).to_string();
    assert!(t.starts_with("experiment") && t.contains("train.params.lr") && t.contains("evaluate.params.threshold"), "{t}");

    // exp apply writes the variant's values, keeping comments; the run is then all cached.
    let out = p.run(&["exp", "apply", "p.toml", &worst]);
    assert!(out.status.success(), "{}", text(&out));
    let toml = p.read("p.toml");
    assert!(toml.contains("params = { lr = 0.2 }   # the learning rate"), "{toml}");
    assert!(toml.contains("params = { threshold = 0.3 }"), "{toml}");
    p.clear_ran_log();
    let s = p.statuses(&[]);
    assert!(s.values().all(|v| v == "cached"), "{s:?}");
    assert!(p.ran_log().is_empty());
    assert!(p.read("model.txt").contains("lr=0.2"), "the variant's outputs are restored on `run`");

    let out = p.run(&["exp", "apply", "p.toml", "vnope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no variant `vnope`") && text(&out).contains(&worst), "{}", text(&out));
}

#[test]
fn random_sweeps_draw_from_ranges_and_mistakes_are_clear() {
    let p = project();
    let out = p.run(&["run", "p.toml", "--sweep", "random:3", "-S", "train.lr=0.1..0.5", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    let trains: Vec<f64> = p.ran_log().iter().filter_map(|l| l.strip_prefix("train-").map(|x| x.parse().unwrap())).collect();
    assert_eq!(trains.len(), 3, "{:?}", p.ran_log());
    assert!(trains.iter().all(|x| (0.1..=0.5).contains(x)), "{trains:?}");

    for (args, want) in [
        (vec!["run", "p.toml", "-S", "train.lr=0.1..0.5"], "ranges need `--sweep random:N`"),
        (vec!["run", "p.toml", "-S", "train.lr=0.1,0.2", "-S", "trian.lr=0.1,0.2"], "no stage named `trian`"),
        (vec!["run", "p.toml", "-S", "train.rate=0.1,0.2"], "has no parameter `rate`"),
        (vec!["run", "p.toml", "--sweep", "random:0", "-S", "train.lr=0.1,0.2"], "random:N"),
        (vec!["run", "p.toml", "--sweep", "grid"], "at least one swept parameter"),
    ] {
        let out = p.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{args:?}: {}", text(&out));
    }
}
