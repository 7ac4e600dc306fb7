//! The `train` and `retrain` stages through the real binary, on a tiny learnable dataset:
//! the loss falls and the model learns, a run killed with SIGKILL resumes from its last
//! checkpoint (no epoch lost or repeated), `retrain` starts from a model artifact, and
//! mistakes are clear errors.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fixtures::learnable;
use common::{text, Project};

fn pipeline(p: &Project, train_extra: &str) {
    p.write(
        "p.toml",
        &format!(
            "[pipeline]\nname = \"t\"\nseed = 3\n\
             [stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"imgs\"\nval_fraction = 0.25\n\
             [stages.train]\nkind = \"train\"\ndataset = \"convert\"\narch = \"resnet18\"\nwidth = 0.125\ninput_size = 16\nbatch_size = 8\n{train_extra}\n\
             [stages.evaluate]\nkind = \"evaluate\"\nmodel = \"train.model\"\ndataset = \"convert\"\ntop_k = [1, 2]\n"
        ),
    );
}

fn metrics(p: &Project) -> serde_json::Value {
    serde_json::from_str(&p.read("outputs/t/train/model/metrics.json")).unwrap()
}

#[test]
fn training_lowers_the_loss_and_the_model_learns() {
    let p = Project::new();
    learnable(&p.path("imgs"), 40);
    pipeline(&p, "epochs = 5\noptimizer = \"adam\"\nlr = 0.01\nschedule = \"soft_start_annealing\"\nlabel_smoothing = 0.05\ncrop_padding = 1\nl1 = 1e-5");
    let out = p.run(&["run", "p.toml"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let m = metrics(&p);
    let h = m["history"].as_array().unwrap();
    assert_eq!(h.len(), 5);
    let first = h[0]["train_loss"].as_f64().unwrap();
    let last = h[4]["train_loss"].as_f64().unwrap();
    assert!(last < first * 0.7, "the training loss must fall: {first} -> {last}\n{t}");
    // Soft start: the rate rises, then anneals.
    let lrs: Vec<f64> = h.iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    assert!(lrs[4] < lrs[2], "{lrs:?}");
    assert!(m["val_accuracy"].as_f64().unwrap() >= 0.8, "{m}");
    for f in ["model.json", "weights.safetensors", "history.csv", "curves.png"] {
        assert!(p.path(&format!("outputs/t/train/model/{f}")).is_file(), "{f}");
    }
    let csv = p.read("outputs/t/train/model/history.csv");
    assert_eq!(csv.lines().count(), 6, "{csv}");
    // The evaluate stage reads the trained model; its accuracy is the last validation's.
    let e: serde_json::Value = serde_json::from_str(&p.read("outputs/t/evaluate/evaluation/metrics.json")).unwrap();
    assert!((e["accuracy"].as_f64().unwrap() - m["val_accuracy"].as_f64().unwrap()).abs() < 1e-9, "{e} vs {m}");
    // The checkpoints of a finished stage are gone; a re-run is served from the store.
    assert!(std::fs::read_dir(p.store.join("checkpoints-v1")).map(|d| d.count() == 0).unwrap_or(true));
    let (_, st, _) = p.run_json(&[]);
    assert_eq!(st["train"]["status"], "cached");
    // Another learning rate: train and evaluate run again, convert stays cached.
    let (code, st, err) = p.run_json(&["-S", "train.lr=0.005"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(st["convert"]["status"], "cached");
    assert_eq!(st["train"]["status"], "ran");
}

fn checkpoint_after(store: &Path, epoch: usize) -> bool {
    let Ok(rd) = std::fs::read_dir(store.join("checkpoints-v1")) else { return false };
    rd.flatten().any(|k| {
        std::fs::read_dir(k.path()).map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.strip_prefix("epoch-").and_then(|s| s.parse::<usize>().ok()).is_some_and(|n| n >= epoch) && e.path().join("state.json").is_file()
            })
        })
        .unwrap_or(false)
    })
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint() {
    let train = "epochs = 8\noptimizer = \"sgd\"\nlr = 0.05\nnesterov = true\nweight_decay = 1e-4\nschedule = \"step\"\nstep_epochs = 3\ncrop_padding = 2";
    let p = Project::new();
    learnable(&p.path("imgs"), 24);
    pipeline(&p, train);
    let mut child = p.spawn(&["run", "p.toml"]);
    let t0 = Instant::now();
    while !checkpoint_after(&p.store, 2) {
        assert!(t0.elapsed() < Duration::from_secs(600), "no checkpoint after 10 minutes");
        if let Ok(Some(st)) = child.try_wait() {
            panic!("taoflow ended ({st}) before it was killed; make the test's training longer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert!(!p.path("outputs/t/train/model").exists(), "a killed run leaves no model");

    let out = p.run(&["run", "p.toml"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("resumed from the checkpoint after epoch"), "{t}");
    let m = metrics(&p);
    let from = m["resumed_from_epoch"].as_u64().unwrap();
    assert!((2..8).contains(&from), "{m}");
    let h = m["history"].as_array().unwrap();
    let epochs: Vec<u64> = h.iter().map(|r| r["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, (1..=8).collect::<Vec<u64>>(), "every epoch once");
    // 54 training images, batch 8, drop_last: 6 steps an epoch, none lost or repeated.
    assert_eq!(m["steps"].as_u64().unwrap(), 8 * 6, "{m}");
    // The step schedule continued where it was: epochs 7-8 run at lr * 0.1^2.
    assert!((h[7]["lr"].as_f64().unwrap() - 0.05 * 0.01).abs() < 1e-9, "{m}");
    assert!(h[7]["train_loss"].as_f64().unwrap() < h[0]["train_loss"].as_f64().unwrap());
    assert!(std::fs::read_dir(p.store.join("checkpoints-v1")).map(|d| d.count() == 0).unwrap_or(true), "a finished stage removes its checkpoints");
}

#[test]
fn retrain_starts_from_a_model_artifact_and_freeze_blocks_keeps_weights() {
    let p = Project::new();
    learnable(&p.path("imgs"), 12);
    pipeline(&p, "epochs = 1\nfreeze_blocks = [0, 1]");
    let mut toml = p.read("p.toml");
    toml.push_str("[stages.retrain]\nkind = \"retrain\"\ninit = \"train.model\"\ndataset = \"convert\"\nepochs = 1\nlr = 0.001\nl1 = 1e-4\n");
    p.write("p.toml", &toml);
    let out = p.run(&["run", "p.toml"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("layers frozen"), "{t}");
    let read = |dir: &str| taoflow::model::import::read_weights(&p.path(&format!("outputs/t/{dir}/model/weights.safetensors"))).unwrap();
    let (a, b) = (read("train"), read("retrain"));
    assert_eq!(a.keys().collect::<std::collections::BTreeSet<_>>(), b.keys().collect());
    let g: taoflow::model::graph::ModelGraph = serde_json::from_str(&p.read("outputs/t/retrain/model/model.json")).unwrap();
    let g0: taoflow::model::graph::ModelGraph = serde_json::from_str(&p.read("outputs/t/train/model/model.json")).unwrap();
    assert_eq!(g.layers, g0.layers, "retrain keeps the structure");
    assert!(a["fc.weight"].data != b["fc.weight"].data, "retrain trains");

    // Frozen blocks: a second train stage from the first's weights with blocks 0-4 frozen
    // leaves every backbone weight as it was.
    toml.push_str("[stages.frozen]\nkind = \"train\"\ninit = \"train.model\"\ndataset = \"convert\"\nepochs = 1\nlr = 0.05\nfreeze_blocks = [0, 1, 2, 3, 4]\n");
    p.write("p.toml", &toml);
    let out = p.run(&["run", "p.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let c = read("frozen");
    for (k, v) in &a {
        if k.starts_with("fc.") {
            assert!(v.data != c[k].data, "{k} is trained");
        } else {
            assert_eq!(v.data, c[k].data, "{k} is frozen");
        }
    }
}

#[test]
fn mistakes_are_clear_errors() {
    let p = Project::new();
    learnable(&p.path("imgs"), 4);
    let cases: &[(&str, &str)] = &[
        ("arch = \"resnet19\"\n", "unknown architecture `resnet19`"),
        ("optimizer = \"adagrad\"\n", "unknown optimizer `adagrad`"),
        ("schedule = \"linear\"\n", "unknown schedule `linear`"),
        ("epochs = 0\n", "`epochs` must be positive"),
        ("lr = -1.0\n", "`lr` must be between"),
        ("val_split = \"holdout\"\n", "no `holdout` split"),
        ("pretrained = \"missing.pth\"\n", "missing.pth"),
        ("freeze_blocks = [\"a\"]\n", "freeze_blocks"),
        ("lr = 1e6\n", "`lr` must be between"),
    ];
    for (extra, want) in cases {
        p.write(
            "p.toml",
            &format!("[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"imgs\"\nval_fraction = 0.25\n[stages.train]\nkind = \"train\"\ndataset = \"convert\"\n{}input_size = 16\nwidth = 0.125\nepochs = 1\n", if extra.starts_with("arch") { extra.to_string() } else { format!("arch = \"resnet18\"\n{extra}") }),
        );
        let t = p.read("p.toml");
        // Later keys win in TOML only once: a duplicated key is itself an error, so cases
        // that repeat `epochs`/`lr` rewrite the line instead.
        let t = if extra.starts_with("epochs") { t.replacen("epochs = 1\n", "", 1) } else { t };
        p.write("p.toml", &t);
        let out = p.run(&["run", "p.toml"]);
        let s = text(&out);
        assert!(!out.status.success(), "{extra}: {s}");
        assert!(s.contains(want), "{extra}: wanted `{want}` in:\n{s}");
        assert!(!s.contains("panicked"), "{s}");
    }
    // A weights file that does not fit the architecture.
    std::fs::write(p.path("bad.safetensors"), b"not safetensors").unwrap();
    p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"imgs\"\nval_fraction = 0.25\n[stages.train]\nkind = \"train\"\ndataset = \"convert\"\narch = \"resnet18\"\npretrained = \"bad.safetensors\"\ninput_size = 16\nepochs = 1\n");
    let s = text(&p.run(&["run", "p.toml"]));
    assert!(s.contains("is not a safetensors file"), "{s}");
}

#[test]
fn train_prune_retrain_evaluate() {
    let p = Project::new();
    learnable(&p.path("imgs"), 16);
    pipeline(&p, "epochs = 2\nl1 = 1e-4");
    let mut toml = p.read("p.toml");
    toml.push_str(
        "[stages.prune]\nkind = \"prune\"\nmodel = \"train.model\"\nnorm = \"l1\"\nthreshold = 0.97\ngranularity = 2\nmin_channels = 2\nequalization = \"geometric_mean\"\nexcluded_layers = [\"layer4\"]\n\
         [stages.retrain]\nkind = \"retrain\"\ninit = \"prune.model\"\ndataset = \"convert\"\nepochs = 1\nlr = 0.005\n\
         [stages.evaluate_pruned]\nkind = \"evaluate\"\nmodel = \"retrain.model\"\ndataset = \"convert\"\n",
    );
    p.write("p.toml", &toml);
    let out = p.run(&["run", "p.toml"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("parameters") && t.contains("MMAC"), "{t}");
    let r: serde_json::Value = serde_json::from_str(&p.read("outputs/t/prune/model/metrics.json")).unwrap();
    let (before, after) = (r["param_count_before"].as_u64().unwrap(), r["param_count"].as_u64().unwrap());
    assert!(after < before, "{r}");
    assert!((r["pruning_ratio"].as_f64().unwrap() - after as f64 / before as f64).abs() < 1e-12);
    assert!(r["flops"].as_u64().unwrap() < r["flops_before"].as_u64().unwrap());
    // Excluded layers keep their channels.
    for l in r["layers"].as_array().unwrap() {
        if l["layer"].as_str().unwrap().starts_with("layer4") {
            assert_eq!(l["before"], l["after"], "{l}");
        }
    }
    let g: taoflow::model::graph::ModelGraph = serde_json::from_str(&p.read("outputs/t/retrain/model/model.json")).unwrap();
    assert_eq!(g.param_count() as u64, after, "retrain keeps the pruned structure");
    let e: serde_json::Value = serde_json::from_str(&p.read("outputs/t/evaluate_pruned/evaluation/metrics.json")).unwrap();
    assert_eq!(e["samples"], 12);

    // A layer that does not exist is a clear error.
    p.write("p.toml", &toml.replace("excluded_layers = [\"layer4\"]", "excluded_layers = [\"layer9\"]"));
    let s = text(&p.run(&["run", "p.toml"]));
    assert!(s.contains("`excluded_layers` names `layer9`, which is not a layer"), "{s}");
}

#[test]
fn device_choice_is_checked_before_training() {
    let p = Project::new();
    learnable(&p.path("imgs"), 4);
    pipeline(&p, "epochs = 1\n");
    // `--device cuda` on a machine without GPUs: the stage fails with a hint, nothing trains.
    let out = p.run(&["run", "p.toml", "--device", "cuda"]);
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    assert!(s.contains("needs 1 GPU(s) but this machine has 0") && s.contains("hint"), "{s}");
    assert!(!p.path("outputs/t/train/model/metrics.json").exists());
    // `cuda:N` names one GPU: one this machine lacks leaves none to lease.
    let mut c = p.cmd(&["run", "p.toml", "--device", "cuda:3"]);
    c.env("TAOFLOW_GPUS", "0");
    let s = text(&c.output().unwrap());
    assert!(s.contains("needs 1 GPU(s) but this machine has 0"), "{s}");
    let out = p.run(&["run", "p.toml", "--device", "gpu"]);
    assert!(!out.status.success() && text(&out).contains("cuda:N"), "{}", text(&out));
    // A leased GPU (listed by hand) in a build without the `torch` feature: a clear error
    // that says how to get GPU training or how to stay on the CPU.
    pipeline(&p, "epochs = 1\ngpus = 1\nprecision = \"bf16\"\n");
    let mut c = p.cmd(&["run", "p.toml"]);
    c.env("TAOFLOW_GPUS", "0");
    let out = c.output().unwrap();
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    if cfg!(feature = "torch") {
        assert!(s.contains("libtorch") || s.contains("CUDA"), "{s}");
    } else {
        assert!(s.contains("built without GPU training") && s.contains("--features torch") && s.contains("--device cpu"), "{s}");
    }
    assert!(!s.contains("panicked"), "{s}");
    // `--device cpu` overrides the stage's `gpus`: it trains on the CPU, and the GPU-only
    // `precision` is not part of the stage key (the same result either way).
    let out = p.run(&["run", "p.toml", "--device", "cpu"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(p.path("outputs/t/train/model/metrics.json").exists());
    pipeline(&p, "epochs = 1\ngpus = 1\nprecision = \"fp32\"\n");
    let (code, st, _) = p.run_json(&["--device", "cpu"]);
    assert_eq!(code, 0);
    assert_eq!(st["train"]["status"], "cached", "{st:?}");
    // A typo in `precision` is caught when the file is read.
    pipeline(&p, "epochs = 1\nprecision = \"fp8\"\n");
    let s = text(&p.run(&["run", "p.toml"]));
    assert!(s.contains("precision") && s.contains("fp8"), "{s}");
}

/// Without a terminal (CI logs, `nohup`): a line per epoch on stderr, and progress lines at
/// most every TAOFLOW_PROGRESS_INTERVAL seconds; `--progress none` and `--quiet` keep them out.
#[test]
fn progress_lines_without_a_terminal() {
    let p = Project::new();
    learnable(&p.path("imgs"), 24);
    pipeline(&p, "epochs = 2");
    let mut toml = p.read("p.toml");
    toml.push_str("[stages.quantize]\nkind = \"quantize\"\nmodel = \"train.model\"\ndataset = \"convert\"\ncalibration_batches = 2\nbatch_size = 8\n[stages.export]\nkind = \"export\"\nmodel = \"train.model\"\n");
    p.write("p.toml", &toml);
    let out = p.cmd(&["run", "p.toml"]).env("TAOFLOW_PROGRESS_INTERVAL", "0").output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{e}");
    // Other stages' long steps: conversion, calibration and the INT8 check.
    assert!(e.contains("progress convert: ") && e.contains("samples (writing `"), "{e}");
    assert!(e.contains("progress quantize: calibration: 16 images in 2 batches"), "{e}");
    assert!(e.contains("progress quantize: check: "), "{e}");
    assert!(e.contains("progress export: check: ") && e.contains("max relative difference"), "{e}");
    for ep in 1..=2 {
        assert!(e.contains(&format!("progress train: epoch {ep}/2: lr ")), "no line for epoch {ep}:\n{e}");
    }
    assert!(e.contains("progress train: 1/") && e.contains("running train"), "{e}");
    // the default interval (60 s) prints no step lines for a run this short, epochs still
    let out = p.cmd(&["run", "p.toml", "--force=train"]).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(e.contains("progress train: epoch 2/2") && !e.contains("progress train: 1/"), "{e}");
    let out = p.cmd(&["run", "p.toml", "--force=train", "--progress", "none"]).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && !e.contains("progress") && e.contains("running train") && e.contains("ran train"), "{e}");
    let out = p.cmd(&["run", "p.toml", "--force=train", "--quiet"]).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && !e.contains("progress") && !e.contains("running") && e.contains("ran train"), "{e}");
}
