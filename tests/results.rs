//! `taoflow show`, `taoflow diff` and `taoflow exp show` on a real pipeline in a real git
//! repository with two commits and an uncommitted run.

mod common;

use std::process::Command;

use common::{text, Project};

fn pipeline(lr: &str) -> String {
    format!(
        r#"
[pipeline]
name = "res"
seed = 1

[stages.train]
kind = "exec"
cmd = "echo lr=${{lr}} > model.txt"
params = {{ lr = {lr}, epochs = 3 }}
outs = {{ model = "model.txt" }}

[stages.evaluate]
kind = "exec"
cmd = "awk 'BEGIN {{ printf \"{{\\\"accuracy\\\": %g, \\\"engine\\\": \\\"x\\\", \\\"history\\\": [{{\\\"loss\\\": 2}}, {{\\\"loss\\\": 1}}]}}\", 1 - ${{lr}} }}' > metrics.json"
params = {{ lr = {lr} }}
deps = ["train.model"]
metrics = "metrics.json"
"#
    )
}

fn git(p: &Project, args: &[&str]) {
    let ok = Command::new("git")
        .current_dir(p.path(""))
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .expect("git runs")
        .success();
    assert!(ok, "git {args:?}");
}

fn run_ok(p: &Project, args: &[&str]) -> String {
    let out = p.run(args);
    assert!(out.status.success(), "taoflow {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn show_diff_and_exp_show_over_git_history() {
    let p = Project::new();
    git(&p, &["init", "-q", "-b", "main"]);
    for (lr, msg) in [("0.1", "first: lr 0.1"), ("0.3", "second: lr 0.3")] {
        p.write("p.toml", &pipeline(lr));
        run_ok(&p, &["run", "p.toml", "--quiet"]);
        git(&p, &["add", "p.toml", "p.lock"]);
        git(&p, &["commit", "-q", "-m", msg]);
    }
    p.write("p.toml", &pipeline("0.2"));
    run_ok(&p, &["run", "p.toml", "--quiet"]);

    // show: numbers as a table, the history list summarised; --all lists it.
    let t = run_ok(&p, &["show", "p.toml"]);
    assert!(t.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["evaluate", "accuracy", "0.8000"]), "{t}");
    assert!(t.contains("1 list(s) not shown: evaluate.history"), "{t}");
    assert!(!t.contains("history[0]"), "{t}");
    let t = run_ok(&p, &["show", "p.toml", "--all"]);
    assert!(t.contains("history[1].loss") && !t.contains("not shown"), "{t}");

    // diff HEAD -> workspace: lr 0.3 -> 0.2 in both stages, accuracy 0.7 -> 0.8.
    let t = run_ok(&p, &["diff", "p.toml"]);
    assert!(t.contains("parameters (HEAD → workspace):"), "{t}");
    let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert!(t.lines().any(|l| words(l) == ["train", "params.lr", "0.3", "0.2"]), "{t}");
    assert!(t.lines().any(|l| words(l) == ["evaluate", "accuracy", "0.7000", "0.8000", "+0.1000"]), "{t}");
    assert!(!t.contains("epochs"), "unchanged parameters are left out: {t}");
    let t = run_ok(&p, &["diff", "p.toml", "--params"]);
    assert!(!t.contains("metrics"), "{t}");

    // diff between two commits, as JSON.
    let j: serde_json::Value = serde_json::from_str(&run_ok(&p, &["diff", "p.toml", "HEAD~1", "HEAD", "--json"])).unwrap();
    let lr = j["params"].as_array().unwrap().iter().find(|c| c["stage"] == "train" && c["param"] == "params.lr").expect("lr changed");
    assert_eq!((lr["old"].as_str(), lr["new"].as_str()), (Some("0.1"), Some("0.3")));
    let acc = j["metrics"].as_array().unwrap().iter().find(|c| c["metric"] == "accuracy").expect("accuracy changed");
    assert!((acc["change"].as_f64().unwrap() + 0.2).abs() < 1e-9, "{acc}");
    assert!(j["notes"].as_array().unwrap().is_empty(), "{j}");

    // exp show: the workspace and both commits, sorted by accuracy.
    let t = run_ok(&p, &["exp", "show", "p.toml", "--sort-by", "evaluate.accuracy"]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4, "{t}");
    assert_eq!(words(lines[0]), ["experiment", "evaluate.params.lr", "train.params.lr", "evaluate.accuracy"], "{t}");
    assert_eq!(&words(lines[1])[1..], ["0.1", "0.1", "0.9000"], "{t}");
    assert_eq!(words(lines[2]), ["workspace", "0.2", "0.2", "0.8000"], "{t}");
    assert_eq!(&words(lines[3])[1..], ["0.3", "0.3", "0.7000"], "{t}");
    let csv = run_ok(&p, &["exp", "show", "p.toml", "--csv", "--sort-by", "evaluate.accuracy", "--ascending"]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "experiment,source,description,evaluate.params.lr,train.params.lr,evaluate.accuracy");
    assert!(rows[1].ends_with(",commit,second: lr 0.3,0.3,0.3,0.7"), "{csv}");
    let j: serde_json::Value = serde_json::from_str(&run_ok(&p, &["exp", "show", "p.toml", "--json"])).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 3);
    assert_eq!(j[0]["name"], "workspace");

    // Mistakes are clear errors.
    let out = p.run(&["diff", "p.toml", "nosuchrev"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unknown revision `nosuchrev`"), "{}", text(&out));
    let out = p.run(&["exp", "show", "p.toml", "--sort-by", "evaluate.f1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no row has the metric `evaluate.f1`"), "{}", text(&out));
}

#[test]
fn diff_outside_git_is_a_clear_error() {
    let p = Project::new();
    p.write("p.toml", &pipeline("0.1"));
    let out = p.run(&["diff", "p.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not inside a git repository"), "{}", text(&out));
}
