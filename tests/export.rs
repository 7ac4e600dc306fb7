//! `export`, `quantize` and `taoflow infer` through the real binary, and the exported ONNX
//! models in onnxruntime (pip; `scripts/test.sh` installs it, TAOFLOW_REQUIRE_PYTHON=1 makes
//! its absence a failure) against the Burn forward pass, for every architecture, pruned too.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use common::fixtures::learnable;
use common::Project;
use prost::Message;
use taoflow::data::image_io::InputSpec;
use taoflow::model::graph::ModelGraph;
use taoflow::model::net::{GraphNet, WeightData};
use taoflow::model::onnx::{export, ActType, ExportOptions, Lowering};
use tract_onnx::pb;

type B = NdArray<f32>;

fn pipeline(p: &Project, quantize_extra: &str) {
    p.write(
        "p.toml",
        &format!(
            "[pipeline]\nname = \"t\"\nseed = 3\n\
             [stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"imgs\"\nval_fraction = 0.25\n\
             [stages.train]\nkind = \"train\"\ndataset = \"convert\"\narch = \"resnet18\"\nwidth = 0.125\ninput_size = 16\nbatch_size = 8\nepochs = 8\noptimizer = \"adam\"\nlr = 0.01\nschedule = \"soft_start_annealing\"\n\
             [stages.quantize]\nkind = \"quantize\"\nmodel = \"train.model\"\ndataset = \"convert\"\ncalibration_batches = 3\nbatch_size = 8\n{quantize_extra}\n\
             [stages.export]\nkind = \"export\"\nmodel = \"train.model\"\n"
        ),
    );
}

fn json(p: &Project, rel: &str) -> serde_json::Value {
    serde_json::from_str(&p.read(rel)).unwrap()
}

fn onnx_tensor_names(path: &Path) -> HashSet<String> {
    let m = pb::ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap();
    let g = m.graph.unwrap();
    g.node.iter().flat_map(|n| n.output.clone()).chain(g.input.iter().map(|i| i.name.clone())).collect()
}

#[test]
fn train_quantize_export_and_infer() {
    let p = Project::new();
    learnable(&p.path("imgs"), 40);
    pipeline(&p, "method = \"entropy\"\ntrt_version = \"100300\"");
    let o = p.run(&["run", "p.toml"]);
    assert!(o.status.success(), "{}", common::text(&o));

    // quantize: QDQ model, TensorRT cache, FP32 vs INT8 report.
    let q = json(&p, "outputs/t/quantize/int8/metrics.json");
    let (a32, a8) = (q["evaluation"]["fp32_top1"].as_f64().unwrap(), q["evaluation"]["int8_top1"].as_f64().unwrap());
    assert!(a32 > 0.8, "the tiny model learns: {q}");
    assert!((a32 - a8).abs() <= 0.1, "INT8 stays close to FP32: {a32} vs {a8}");
    assert_eq!(q["calibration"]["images"], 24);
    assert_eq!(q["ranges"]["input"]["min"].as_f64().unwrap() as f32, -0.485f32 / 0.229, "the input range is the preprocessing's");
    let cache = p.read("outputs/t/quantize/int8/calibration.cache");
    let (header, scales) = taoflow::model::calibrate::parse_trt_cache(&cache).unwrap();
    assert_eq!(header, "TRT-100300-EntropyCalibration2");
    // Every cache entry names a tensor of the exported FP32 model, and every tensor is there.
    let names = onnx_tensor_names(&p.path("outputs/t/export/onnx/model.onnx"));
    for (k, s) in &scales {
        assert!(names.contains(k), "cache tensor `{k}` is not in model.onnx");
        assert!(*s > 0.0 && s.is_finite());
    }
    for n in &names {
        assert!(scales.contains_key(n), "tensor `{n}` of model.onnx has no scale in the cache");
    }
    let qnames = onnx_tensor_names(&p.path("outputs/t/quantize/int8/model.int8.onnx"));
    assert!(qnames.iter().any(|n| n.ends_with("_QuantizeLinear_Output")));

    // export: the check against the model passed and is recorded.
    let e = json(&p, "outputs/t/export/onnx/metrics.json");
    assert!(e["check"]["max_rel_diff_vs_model"].as_f64().unwrap() < 1e-4, "{e}");
    assert_eq!(e["opset"], 17);

    // infer: the artifact, the FP32 ONNX and the INT8 model agree on real images.
    let imgs: Vec<String> = ["left/000.png", "right/001.png", "stripes/002.png"].iter().map(|s| p.path("imgs").join(s).display().to_string()).collect();
    let run_infer = |model: &str| -> serde_json::Value {
        let mut args = vec!["infer", model, "--json", "-k", "2"];
        args.extend(imgs.iter().map(|s| s.as_str()));
        let o = p.run(&args);
        assert!(o.status.success(), "{}", common::text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let a = run_infer("outputs/t/train/model");
    let b = run_infer("outputs/t/export/onnx/model.onnx");
    let c = run_infer("outputs/t/quantize/int8");
    for i in 0..3 {
        let top = |v: &serde_json::Value| v[i]["top"][0]["class"].as_str().unwrap().to_string();
        assert_eq!(top(&a), ["left", "right", "stripes"][i], "{a}");
        assert_eq!(top(&a), top(&b));
        assert_eq!(top(&a), top(&c));
        let (pa, pb) = (a[i]["top"][0]["probability"].as_f64().unwrap(), b[i]["top"][0]["probability"].as_f64().unwrap());
        assert!((pa - pb).abs() < 1e-4, "{pa} vs {pb}");
    }
    // Text output names the classes.
    let o = p.run(&["infer", "outputs/t/export/onnx/model.onnx", &imgs[1]]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("1. right"), "{}", common::text(&o));

    // A second run is served from the store.
    let st = p.statuses(&[]);
    assert!(st.values().all(|s| s == "cached"), "{st:?}");
}

#[test]
fn malformed_inputs_give_clear_errors() {
    let p = Project::new();
    learnable(&p.path("imgs"), 4);
    let img = p.path("imgs/left/000.png").display().to_string();

    // Not ONNX.
    p.write("fake.onnx", "this is not a protobuf at all, just text\n");
    let o = p.run(&["infer", "fake.onnx", &img]);
    assert_eq!(o.status.code(), Some(1));
    assert!(common::text(&o).contains("is not an ONNX model"), "{}", common::text(&o));
    let o = p.run(&["infer", "missing.onnx", &img]);
    assert!(common::text(&o).contains("does not exist"), "{}", common::text(&o));

    // A model with an op this build cannot export (nor run): file, line and the list.
    let g = taoflow::model::builders::resnet(18, 2, 0.125, InputSpec::imagenet(16, 16), vec!["a".into(), "b".into()]).unwrap();
    let mut text = serde_json::to_string_pretty(&g).unwrap();
    text = text.replacen("\"op\": \"max_pool\"", "\"op\": \"deform_conv\"", 1);
    std::fs::create_dir_all(p.path("odd")).unwrap();
    p.write("odd/model.json", &text);
    p.write("odd/weights.safetensors", "");
    p.write("e.toml", "[pipeline]\nname = \"e\"\n[stages.export]\nkind = \"export\"\nmodel = \"odd\"\n");
    let o = p.run(&["run", "e.toml"]);
    assert_eq!(o.status.code(), Some(1));
    let t = common::text(&o);
    assert!(t.contains("model.json") && t.contains("line ") && t.contains("deform_conv") && t.contains("knows the ops"), "{t}");
    assert!(!p.path("outputs/e/export/onnx").exists(), "no half-written output");

    // An empty calibration set.
    pipeline(&p, "calibration_split = \"test\"");
    let o = p.run(&["run", "p.toml"]);
    assert_eq!(o.status.code(), Some(1));
    let t = common::text(&o);
    assert!(t.contains("calibration set is empty") && t.contains("`test`"), "{t}");
    assert!(!p.path("outputs/t/quantize/int8").exists());

    // Bad keys are caught when the pipeline is read.
    pipeline(&p, "method = \"kl\"\npercentile = 120");
    let o = p.run(&["run", "p.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let t = common::text(&o);
    assert!(t.contains("unknown method `kl`") && t.contains("minmax, percentile, entropy") && t.contains("percentile"), "{t}");
}

// ---- onnxruntime parity -------------------------------------------------------------------

fn have_onnxruntime() -> bool {
    let ok = std::process::Command::new("python3").args(["-c", "import onnxruntime, numpy"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        assert!(std::env::var_os("TAOFLOW_REQUIRE_PYTHON").is_none(), "onnxruntime is required (scripts/test.sh installs it)");
        eprintln!("skipping: python3 -c 'import onnxruntime' failed");
    }
    ok
}

fn burn_forward(g: &ModelGraph, w: &HashMap<String, WeightData>, x: &[f32], n: usize) -> Vec<f32> {
    let s = &g.input;
    taoflow::model::testutil::forward(g, w, Tensor::from_data(TensorData::new(x.to_vec(), [n, s.channels as usize, s.height as usize, s.width as usize]), &Default::default()))
}

fn ort(dir: &Path, model: &pb::ModelProto, x: &[f32], shape: [usize; 4], optimized: bool) -> (Vec<f32>, Option<HashMap<String, usize>>) {
    let mpath = dir.join("m.onnx");
    std::fs::write(&mpath, model.encode_to_vec()).unwrap();
    std::fs::write(dir.join("x.f32"), x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ort_run.py");
    let shape_s = shape.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script).arg(&mpath).arg(dir.join("x.f32")).arg(&shape_s).arg(dir.join("y.f32"));
    if optimized {
        cmd.arg(dir.join("opt.onnx"));
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "onnxruntime failed: {}", String::from_utf8_lossy(&o.stderr));
    let y: Vec<f32> = std::fs::read(dir.join("y.f32")).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let ops = optimized.then(|| {
        let m = pb::ModelProto::decode(&std::fs::read(dir.join("opt.onnx")).unwrap()[..]).unwrap();
        let mut c = HashMap::new();
        for n in m.graph.unwrap().node {
            *c.entry(n.op_type).or_default() += 1;
        }
        c
    });
    (y, ops)
}

/// The QDQ export of a model, min-max calibrated on `n` probe images.
fn qdq(g: &ModelGraph, w: &HashMap<String, WeightData>, n: usize, act: ActType) -> pb::ModelProto {
    let device = Default::default();
    let (net, _) = GraphNet::<B>::new(g, &device).unwrap().load_weights(w, &device).unwrap();
    let low = Lowering::new(g, true);
    let batches: Vec<(Vec<f32>, usize)> = vec![(taoflow::stages::export::probe_images(n, g.input.len(), 5), n)];
    let stats = taoflow::model::calibrate::collect(g, &net, &low, &batches, &device).unwrap();
    let r = taoflow::model::calibrate::ranges(&stats, taoflow::model::calibrate::Method::MinMax);
    let spec = taoflow::model::calibrate::quant_spec(&r, &low.quantized_tensors(g), act).unwrap();
    export(g, w, &ExportOptions::default(), Some(&spec)).unwrap()
}

/// A DetectNet_v2 detector exported with TAO's tensor names (`input_1`,
/// `output_cov/Sigmoid`, `output_bbox/BiasAdd`) runs in onnxruntime and in tract like the
/// Burn engine, to 1e-4 on each output, before and after pruning; its QDQ model runs on
/// INT8 kernels.
#[test]
fn onnxruntime_and_tract_run_the_exported_detector_like_burn() {
    use taoflow::model::prune::{Criterion, Equalization, Norm, PruneConfig};
    let dir = tempfile::tempdir().unwrap();
    let n = 2;
    let g = taoflow::model::builders::detectnet_v2("resnet18", 0.25, taoflow::data::image_io::InputSpec::plain(96, 64, 3), vec!["car".into(), "person".into()]).unwrap();
    let w = taoflow::model::testutil::random_weights(&g, 3);
    let cfg = PruneConfig { norm: Norm::L2, criterion: Criterion::ParamRatio(0.5), granularity: 4, min_channels: 4, equalization: Equalization::Union, excluded: vec![] };
    let (sps, ls, keep) = taoflow::model::prune::select(&g, &w, &cfg).unwrap();
    let pg = taoflow::model::prune::apply_to_graph(&g, &sps, &ls, &keep).unwrap();
    let pw = taoflow::model::prune::apply_to_weights(&g, &ls, &keep, &w).unwrap();
    assert!(pg.param_count() < g.param_count() * 6 / 10, "pruned {} of {}", pg.param_count(), g.param_count());
    for (g, w) in [(g, w), (pg, pw)] {
        let s = g.input.clone();
        let x = taoflow::stages::export::probe_images(n, s.len(), 11);
        let want = taoflow::model::testutil::forward_all(&g, &w, &x, n);
        assert_eq!((want[0].len(), want[1].len()), (n * 2 * 4 * 6, n * 8 * 4 * 6));
        let m = export(&g, &w, &ExportOptions::default(), None).unwrap();
        let gr = m.graph.as_ref().unwrap();
        assert_eq!(gr.input[0].name, "input_1");
        assert_eq!(gr.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["output_cov/Sigmoid", "output_bbox/BiasAdd"]);
        let meta: HashMap<String, String> = m.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        assert_eq!(meta["taoflow.task"], "detection");
        assert!(meta["taoflow.detection"].contains("\"bbox_scale\":35.0"));
        // tract
        let t = taoflow::model::onnx_run::OnnxModel::from_bytes_on(&m.encode_to_vec(), "detector", taoflow::model::onnx_run::Engine::Tract).unwrap().run_all(&x, n).unwrap();
        for (k, (a, b)) in t.iter().zip(&want).enumerate() {
            let d = taoflow::stages::export::max_rel_diff(a, b);
            assert!(d < 1e-4, "{}: tract output {k} differs by {d:e}", g.arch);
        }
        if !have_onnxruntime() {
            continue;
        }
        let shape = [n, s.channels as usize, s.height as usize, s.width as usize];
        let (got, _) = ort(dir.path(), &m, &x, shape, false);
        let (cov, bbox) = got.split_at(want[0].len());
        for (k, (a, b)) in [cov, bbox].iter().zip(&want).enumerate() {
            let d = taoflow::stages::export::max_rel_diff(a, b);
            assert!(d < 1e-4, "{}: onnxruntime output {k} differs by {d:e}", g.arch);
        }
        // INT8: QDQ on onnxruntime's INT8 kernels, near FP32
        assert_eq!(Lowering::new(&g, true).input, "input_1");
        let q = qdq(&g, &w, 8, ActType::Int8);
        let (got, ops) = ort(dir.path(), &q, &x, shape, true);
        let ops = ops.unwrap();
        assert!(ops.get("QLinearConv").copied().unwrap_or(0) > 0, "{ops:?}");
        let (cov, _) = got.split_at(want[0].len());
        let d = taoflow::stages::export::max_rel_diff(cov, &want[0]);
        assert!(d < 0.1, "{}: INT8 coverage differs from FP32 by {d}", g.arch);
    }
}

#[test]
fn onnxruntime_runs_every_exported_architecture_like_burn() {
    if !have_onnxruntime() {
        return;
    }
    use taoflow::model::prune::{Criterion, Equalization, Norm, PruneConfig};
    let dir = tempfile::tempdir().unwrap();
    let n = 3;
    for (i, g) in taoflow::model::testutil::graphs().into_iter().enumerate() {
        let w = taoflow::model::testutil::random_weights(&g, 40 + i as u64);
        let cfg = PruneConfig { norm: Norm::L1, criterion: Criterion::ParamRatio(0.6), granularity: 4, min_channels: 4, equalization: Equalization::ArithmeticMean, excluded: vec![] };
        let (sps, ls, keep) = taoflow::model::prune::select(&g, &w, &cfg).unwrap();
        let pg = taoflow::model::prune::apply_to_graph(&g, &sps, &ls, &keep).unwrap();
        let pw = taoflow::model::prune::apply_to_weights(&g, &ls, &keep, &w).unwrap();
        for (g, w) in [(g, w), (pg, pw)] {
            let s = g.input.clone();
            let x = taoflow::stages::export::probe_images(n, s.len(), 11);
            let want = burn_forward(&g, &w, &x, n);
            let shape = [n, s.channels as usize, s.height as usize, s.width as usize];
            let m = export(&g, &w, &ExportOptions::default(), None).unwrap();
            let (got, _) = ort(dir.path(), &m, &x, shape, false);
            let d = taoflow::stages::export::max_rel_diff(&got, &want);
            assert!(d < 1e-4, "{} ({} params): onnxruntime differs by {d:e}", g.arch, g.param_count());

            // The QDQ model runs on onnxruntime's INT8 kernels and stays near FP32.
            let q = qdq(&g, &w, 16, ActType::Uint8);
            let (got, ops) = ort(dir.path(), &q, &x, shape, true);
            let ops = ops.unwrap();
            let convs = ops.get("QLinearConv").copied().unwrap_or(0);
            assert!(convs > 0 && ops.get("Conv").copied().unwrap_or(0) == 0, "{}: onnxruntime must run every convolution on INT8 kernels: {ops:?}", g.arch);
            let d = taoflow::stages::export::max_rel_diff(&got, &want);
            assert!(d < 0.25, "{}: INT8 in onnxruntime differs from FP32 by {d}", g.arch);
        }
    }
}
