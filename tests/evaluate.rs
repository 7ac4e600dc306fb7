//! The `evaluate` stage: a model artifact on a dataset split, metrics consistent with the
//! predictions, `show` reads them, a class mismatch is a clear error.

mod common;

use burn::backend::NdArray;
use common::{fixtures, text, Project};
use taoflow::data::image_io::InputSpec;
use taoflow::model::{artifact, builders, net::GraphNet};

fn model(p: &Project, dir: &str, classes: &[&str]) {
    let g = builders::resnet(18, classes.len(), 0.125, InputSpec::plain(16, 16, 1), classes.iter().map(|s| s.to_string()).collect()).unwrap();
    let net = GraphNet::<NdArray<f32>>::new(&g, &Default::default()).unwrap();
    std::fs::create_dir_all(p.path(dir)).unwrap();
    artifact::save(&p.path(dir), &g, &net).unwrap();
}

#[test]
fn evaluate_a_model_artifact() {
    let p = Project::new();
    fixtures::idx(&p.path("mnist"), "train", 60, 8, 8, 5, true);
    let classes = ["0", "1", "2", "3", "4"];
    model(&p, "mymodel", &classes);
    p.write(
        "p.toml",
        "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"idx\"\nsource = \"mnist\"\nval_fraction = 0.5\n[stages.evaluate]\nkind = \"evaluate\"\nmodel = \"mymodel\"\ndataset = \"convert\"\ntop_k = [1, 3]\n",
    );
    let out = p.run(&["run", "p.toml"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("30 samples of `val`"), "{t}");
    let mut m: serde_json::Value = serde_json::from_str(&p.read("outputs/t/evaluate/evaluation/metrics.json")).unwrap();
    assert_eq!(m["samples"], 30);
    assert!(m["inference"]["images_per_second"].as_f64().unwrap() > 0.0);
    m.as_object_mut().unwrap().remove("inference");
    let conf: Vec<Vec<u64>> = serde_json::from_value(m["confusion"].clone()).unwrap();
    assert_eq!(conf.iter().flatten().sum::<u64>(), 30);
    let diag: u64 = (0..5).map(|i| conf[i][i]).sum();
    assert!((m["accuracy"].as_f64().unwrap() - diag as f64 / 30.0).abs() < 1e-12);
    assert!(m["top_k"][1][1].as_f64().unwrap() >= m["accuracy"].as_f64().unwrap());
    assert!(p.path("outputs/t/evaluate/evaluation/confusion.png").is_file());
    let direct = taoflow::stages::evaluate::evaluate(&p.path("mymodel"), &p.path("outputs/t/convert/dataset"), "val", 7, &[1, 3]).unwrap();
    // (Through text both times: serde_json's float parsing is not exactly round-trip.)
    let direct: serde_json::Value = serde_json::from_str(&serde_json::to_string_pretty(&direct).unwrap()).unwrap();
    assert_eq!(direct, m, "batch size does not change the result");
    let show = text(&p.run(&["show", "p.toml"]));
    assert!(show.contains("evaluate") && show.contains("accuracy"), "{show}");

    // Another model with other classes: a clear error.
    model(&p, "other", &["a", "b", "c", "d", "e"]);
    p.write("p.toml", &p.read("p.toml").replace("model = \"mymodel\"", "model = \"other\""));
    let out = p.run(&["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("the model's classes (a, b, c, d, e) differ from the dataset's (0, 1, 2, 3, 4)"), "{}", text(&out));
}

/// The CPU inference engine: onnxruntime where it loads (the test command installs it), Burn
/// with `TAOFLOW_ONNXRUNTIME=off` — the same metrics, each report naming its engine.
#[test]
fn onnxruntime_and_burn_evaluate_alike() {
    let p = Project::new();
    fixtures::idx(&p.path("mnist"), "train", 80, 8, 8, 5, true);
    model(&p, "mymodel", &["0", "1", "2", "3", "4"]);
    p.write(
        "p.toml",
        "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"idx\"\nsource = \"mnist\"\nval_fraction = 0.5\n[stages.evaluate]\nkind = \"evaluate\"\nmodel = \"mymodel\"\ndataset = \"convert\"\n",
    );
    let mut reports = Vec::new();
    for (setting, store) in [(None, "store-a"), (Some("off"), "store-b")] {
        let mut c = p.cmd(&["run", "p.toml"]);
        c.env("TAOFLOW_STORE", p.path(store));
        match setting {
            Some(v) => c.env("TAOFLOW_ONNXRUNTIME", v),
            None => c.env_remove("TAOFLOW_ONNXRUNTIME"),
        };
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let mut m: serde_json::Value = serde_json::from_str(&p.read("outputs/t/evaluate/evaluation/metrics.json")).unwrap();
        let engine = m["inference"]["engine"].as_str().unwrap().to_string();
        assert!(text(&out).contains(&format!("img/s forward ({engine})")), "{}", text(&out));
        m.as_object_mut().unwrap().remove("inference");
        reports.push((engine, m));
    }
    assert_eq!(reports[1].0, "burn-ndarray");
    if std::env::var_os("TAOFLOW_REQUIRE_PYTHON").is_some() {
        assert!(reports[0].0.starts_with("onnxruntime "), "{}", reports[0].0);
    }
    assert_eq!(reports[0].1, reports[1].1, "{} and {} disagree", reports[0].0, reports[1].0);
}
