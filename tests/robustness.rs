//! Kill, interrupt, run twice at once, watch: the store stays valid and nothing half-made
//! is ever served.

mod common;

use std::time::{Duration, Instant};

use common::{text, wait_for, Project};

/// `slow` writes a partial output, then (while the file `slow.flag` exists) waits long
/// enough to be killed, then writes the real output.
const SLOW: &str = r#"
[stages.slow]
kind = "exec"
cmd = "echo slow >> ran.log; mkdir -p out; echo partial > out/result.txt; touch started; while [ -f slow.flag ]; do sleep 0.05; done; echo complete > out/result.txt"
outs = ["out"]

[stages.after]
kind = "exec"
cmd = "cat out/result.txt > after.txt"
deps = ["slow"]
outs = ["after.txt"]
"#;

fn kill(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a child process we spawned.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

#[test]
fn sigkill_mid_stage_then_next_run_finishes_and_serves_nothing_corrupt() {
    let p = Project::new();
    p.write("p.toml", SLOW);
    p.write("slow.flag", "");
    let mut child = p.spawn(&["run", "p.toml"]);
    assert!(wait_for(&p.path("started"), 20), "stage did not start");
    kill(child.id(), libc::SIGKILL);
    let _ = child.wait();
    // The stage's shell dies with taoflow (PDEATHSIG), so nothing writes afterwards.
    std::fs::remove_file(p.path("slow.flag")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.read("out/result.txt").trim(), "partial", "the orphaned command must not finish");
    // Nothing was recorded: no manifest, no lock entry.
    let manifests = walk_count(&p.store.join("ac-v1"));
    assert_eq!(manifests, 0, "a killed stage leaves no manifest");
    // The next run runs the stage again and finishes correctly.
    let (code, m, err) = p.run_json(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(m["slow"]["status"], "ran");
    assert_eq!(m["after"]["status"], "ran");
    assert_eq!(p.read("out/result.txt").trim(), "complete");
    assert_eq!(p.read("after.txt").trim(), "complete");
    // And the run after that is a cache hit that restores the complete result.
    std::fs::remove_dir_all(p.path("out")).unwrap();
    let (code, m, _) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(m["slow"]["status"], "cached");
    assert_eq!(p.read("out/result.txt").trim(), "complete");
    assert_eq!(p.ran_log(), ["slow", "slow"]);
}

#[test]
fn ctrl_c_stops_cleanly_and_stores_nothing() {
    let p = Project::new();
    p.write("p.toml", SLOW);
    p.write("slow.flag", "");
    let child = p.spawn(&["run", "p.toml", "--json"]);
    assert!(wait_for(&p.path("started"), 20), "stage did not start");
    let t0 = Instant::now();
    kill(child.id(), libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let (_, m, _) = common::parse_json_run(&out);
    assert_eq!(m["slow"]["status"], "interrupted");
    assert_eq!(m["after"]["status"], "interrupted");
    assert_eq!(walk_count(&p.store.join("ac-v1")), 0);
    std::fs::remove_file(p.path("slow.flag")).unwrap();
    let (code, m, _) = p.run_json(&[]);
    assert_eq!(code, 0);
    assert_eq!(m["slow"]["status"], "ran");
    assert_eq!(p.read("after.txt").trim(), "complete");
}

#[test]
fn two_runs_at_once_on_one_store() {
    // Same pipeline, same workspace, same store: one runs the stage, the other waits for
    // it and takes the result from the store.
    let p = Project::new();
    p.write("p.toml", SLOW);
    p.write("slow.flag", "");
    let a = p.spawn(&["run", "p.toml", "--json"]);
    assert!(wait_for(&p.path("started"), 20));
    let b = p.spawn(&["run", "p.toml", "--json"]);
    std::thread::sleep(Duration::from_millis(400));
    std::fs::remove_file(p.path("slow.flag")).unwrap();
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (ca, ma, ea) = common::parse_json_run(&oa);
    let (cb, mb, eb) = common::parse_json_run(&ob);
    assert_eq!((ca, cb), (0, 0), "{ea}\n{eb}");
    assert_eq!(ma["slow"]["status"], "ran");
    assert_eq!(mb["slow"]["status"], "cached", "{eb}");
    assert!(eb.contains("another taoflow process is running this stage"), "{eb}");
    assert_eq!(mb["slow"]["reasons"][0], "made by another taoflow process");
    assert_eq!(p.ran_log(), ["slow"], "the stage ran exactly once");
    assert_eq!(p.read("out/result.txt").trim(), "complete");

    // Two projects sharing one store: identical stages are made once.
    let q1 = Project::new();
    let q2 = Project::new();
    let stage = "[stages.s]\nkind = \"exec\"\ncmd = \"sleep 0.5; echo s >> ran.log; echo shared > s.txt\"\nouts = [\"s.txt\"]\n";
    for q in [&q1, &q2] {
        q.write("p.toml", stage);
    }
    let store = q1.store.clone();
    let c1 = q1.cmd(&["run", "p.toml", "--json"]).env("TAOFLOW_STORE", &store).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let c2 = q2.cmd(&["run", "p.toml", "--json"]).env("TAOFLOW_STORE", &store).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (o1, o2) = (c1.wait_with_output().unwrap(), c2.wait_with_output().unwrap());
    let (_, m1, e1) = common::parse_json_run(&o1);
    let (_, m2, e2) = common::parse_json_run(&o2);
    let mut st = vec![m1["s"]["status"].as_str().unwrap().to_string(), m2["s"]["status"].as_str().unwrap().to_string()];
    st.sort();
    assert_eq!(st, ["cached", "ran"], "{e1}\n{e2}");
    assert_eq!(q1.read("s.txt"), "shared\n");
    assert_eq!(q2.read("s.txt"), "shared\n");
    assert_eq!(q1.ran_log().len() + q2.ran_log().len(), 1);
}

#[test]
fn watch_reruns_what_a_change_affects() {
    let p = Project::new();
    p.write(
        "p.toml",
        r#"
[stages.copy]
kind = "exec"
cmd = "cp input.txt copy.txt"
deps = ["input.txt"]
outs = ["copy.txt"]

[stages.other]
kind = "exec"
cmd = "echo other >> ran.log; echo x > other.txt"
outs = ["other.txt"]
"#,
    );
    p.write("input.txt", "one\n");
    let mut child = p.cmd(&["watch", "p.toml", "--debounce-ms", "100"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && std::fs::read_to_string(p.path("copy.txt")).unwrap_or_default() != "one\n" {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.read("copy.txt"), "one\n");
    std::thread::sleep(Duration::from_millis(300));
    p.write("input.txt", "two\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && std::fs::read_to_string(p.path("copy.txt")).unwrap_or_default() != "two\n" {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(child.id(), libc::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(p.read("copy.txt"), "two\n", "watch re-ran the stage after the change");
    assert_eq!(p.ran_log(), ["other"], "the unaffected stage ran once only");
    assert_eq!(status.code(), Some(130));
}

fn walk_count(dir: &std::path::Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                n += walk_count(&e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}
