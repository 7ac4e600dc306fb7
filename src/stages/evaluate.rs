//! `evaluate`: a model artifact on a split of a dataset artifact. A classifier: top-1/top-k
//! accuracy, per-class precision/recall/F1, the confusion matrix (JSON and PNG). A detector:
//! TAO's per-class AP and mAP and the twelve COCO numbers, per-class table, precision-recall
//! curves and a picture of predictions against ground truth (`tasks::detection::evaluate`).
//!
//! ```toml
//! [stages.evaluate]
//! kind = "evaluate"
//! model = "train.model"        # a model artifact (model.json + weights.safetensors)
//! dataset = "convert"          # a dataset artifact
//! split = "val"
//! batch_size = 64
//! top_k = [1, 5]               # classifiers
//! iou = { car = 0.7 }          # detectors: TAO's metric per class (or one number for all),
//! min_height = 20              #   likewise max_height, min_width, max_width
//! ap_mode = "integrate"        #   or "sample" (11-point)
//! grid = 16                    #   images in predictions.png (0: none)
//! [stages.evaluate.postprocess] # detectors: the model's post-processing, overridden
//! coverage_threshold = 0.01
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};

use crate::schema::{Key, Ty, key};
use crate::config::Fields;
use crate::data::loader::{Dataset, LoaderOptions};
use crate::diag::Diag;
use crate::metrics::{classification_report, ClassificationReport};
use crate::stages::{InputDecl, OutputDecl, RunCtx, StageDef, StageError, StageKind};
use crate::tasks::detection::postprocess::ClusterConfig;
use crate::tasks::detection::report::EvalOptions;
use crate::tasks::detection::settings::{self, PerClass};
use crate::value::PVal;

#[derive(Debug)]
pub struct Evaluate;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct DetectionEval {
    postprocess: PerClass,
    eval: EvalOptions,
    grid: Option<usize>,
    grid_score: Option<f64>,
}

#[derive(Debug)]
struct Parsed {
    split: String,
    batch_size: usize,
    top_k: Vec<usize>,
    detection: DetectionEval,
}

const SPEC: &[Key] = &[
    key("model", Ty::Str, "The model to evaluate: a stage's model (`train.model`) or a model folder.").required(),
    key("dataset", Ty::Str, "The dataset holding the split: a stage's dataset or a path.").required(),
    key("split", Ty::Str, "The split scored.").def("\"val\""),
    key("batch_size", Ty::Int, "Images per forward pass.").def("64").min(1.0),
    key("top_k", Ty::IntList, "Classifiers: the top-k accuracies reported.").def("[1, 5]").min(1.0),
    key("postprocess", Ty::PerClass(crate::tasks::detection::postprocess::CLUSTER_KEYS), "Detectors: clustering per class, overriding the model's."),
    key("iou", Ty::NumOrClassMap, "Detectors: IoU for a match, for every class or { car = 0.7, pedestrian = 0.5 } (default 0.5).").range(0.0, 1.0),
    key("min_height", Ty::NumOrClassMap, "Detectors: boxes lower than this (pixels) are left out of the score, per class or for all."),
    key("max_height", Ty::NumOrClassMap, "Detectors: boxes higher than this are left out of the score."),
    key("min_width", Ty::NumOrClassMap, "Detectors: boxes narrower than this are left out of the score."),
    key("max_width", Ty::NumOrClassMap, "Detectors: boxes wider than this are left out of the score."),
    key("ap_mode", Ty::Str, "Detectors: TAO's AP, integrated over recall or sampled at 11 points (default integrate).").one_of(&["sample", "integrate"]),
    key("grid", Ty::Int, "Detectors: images in predictions.png (default 16).").min(0.0),
    key("grid_score", Ty::Float, "Detectors: least confidence of a box drawn in predictions.png (default 0.3)."),
];

/// `key = 0.5` (every class) or `key = { car = 0.7, pedestrian = 0.5 }` as `[class=]value`
/// settings.
fn per_class_numbers(f: &mut Fields<'_>, key: &str) -> Vec<String> {
    let Some(n) = f.get(key) else { return Vec::new() };
    let num = |n: &crate::value::Node| match n.v {
        crate::value::V::Int(i) => Some(i as f64),
        crate::value::V::Float(x) => Some(x),
        _ => None,
    };
    match &n.v {
        crate::value::V::Table(t) => {
            let mut out = Vec::new();
            for (k, v) in &t.entries {
                match num(v) {
                    Some(x) => out.push(format!("{}={x}", k.name)),
                    None => f.diags.push(crate::config::type_error(&format!("`{key}.{}`", k.name), "a number", v)),
                }
            }
            out
        }
        _ => match num(n) {
            Some(x) => vec![x.to_string()],
            None => {
                f.diags.push(crate::config::type_error(&format!("`{key}`"), "a number, or a table of numbers by class", n));
                Vec::new()
            }
        },
    }
}

impl StageKind for Evaluate {
    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn version(&self) -> u32 {
        // 2: metrics.json reports the forward pass's throughput (`inference`); 3: and its
        // engine (onnxruntime on the CPU where it loads).
        3
    }
    fn summary(&self) -> &'static str {
        "score a model on a split (top-k, F1, confusion; COCO and TAO mAP for detectors)"
    }
    fn spec(&self) -> Vec<Key> {
        SPEC.to_vec()
    }

    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef> {
        let before = f.diags.0.len();
        let model = f.required_str("model", "model = \"train.model\"");
        let dataset = f.required_str("dataset", "dataset = \"convert\"");
        let split = f.str("split").map(|(s, _)| s).unwrap_or_else(|| "val".into());
        let batch_size = f.positive_uint("batch_size", 64) as usize;
        let mut top_k = vec![1, 5];
        if let Some(n) = f.get("top_k") {
            match &n.v {
                crate::value::V::Array(a) if !a.is_empty() => {
                    top_k = a.iter().filter_map(|x| if let crate::value::V::Int(i) = x.v { (i > 0).then_some(i as usize) } else { None }).collect();
                    if top_k.len() != a.len() {
                        f.diags.push(Diag::error("`top_k` must be positive integers, e.g. [1, 5]").at(&n.span, "invalid"));
                    }
                }
                _ => f.diags.push(crate::config::type_error("`top_k`", "an array of positive integers", n)),
            }
        }
        let mut eval = EvalOptions {
            iou: per_class_numbers(f, "iou"),
            min_height: per_class_numbers(f, "min_height"),
            max_height: per_class_numbers(f, "max_height"),
            min_width: per_class_numbers(f, "min_width"),
            max_width: per_class_numbers(f, "max_width"),
            ..Default::default()
        };
        for v in &eval.iou {
            let x: f64 = v.rsplit('=').next().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
            if !(0.0..=1.0).contains(&x) {
                let n = f.table.get("iou").expect("read above");
                f.diags.push(Diag::error(format!("`iou` {v} is outside [0, 1]")).at(&n.span, "an IoU threshold is in [0, 1]"));
            }
        }
        eval.ap_mode = f.get("ap_mode").map(|_| f.choice("ap_mode", &["sample", "integrate"], "integrate"));
        let grid = f.uint("grid").map(|(v, _)| v as usize);
        let grid_score = f.float("grid_score").map(|(v, _)| v);
        let detection = DetectionEval { postprocess: settings::parse::<ClusterConfig>(f, "postprocess", stage, &|c| c.validate()), eval, grid, grid_score };
        if f.diags.0.len() > before {
            return None;
        }
        let (model, mnode) = model?;
        let (dataset, dnode) = dataset?;
        let mut params = BTreeMap::new();
        params.insert("split".into(), PVal::Str(split.clone()));
        params.insert("batch_size".into(), PVal::Int(batch_size as i64));
        params.insert("top_k".into(), PVal::Array(top_k.iter().map(|k| PVal::Int(*k as i64)).collect()));
        if detection != DetectionEval::default() {
            params.insert("detection".into(), PVal::from_json(serde_json::to_value(&detection).expect("serialises")));
        }
        Some(StageDef {
            params,
            inputs: vec![InputDecl { label: "model".into(), raw: model, span: mnode.span.clone() }, InputDecl { label: "dataset".into(), raw: dataset, span: dnode.span.clone() }],
            outputs: vec![OutputDecl { name: "evaluation".into(), path: PathBuf::from("outputs").join(stage).join("evaluation"), span: mnode.span.clone(), owned: true }],
            metrics: Some("evaluation".into()),
            gpus: 0,
            description: None,
            typed: Arc::new(Parsed { split, batch_size, top_k, detection }),
        })
    }

    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>> {
        Box::pin(async move {
            let p = ctx.def.typed.downcast_ref::<Parsed>().ok_or_else(|| StageError::Failed("internal: evaluate stage data missing".into()))?;
            let (split, batch, top_k, det) = (p.split.clone(), p.batch_size, p.top_k.clone(), p.detection.clone());
            let model = ctx.inputs["model"].clone();
            let dataset = ctx.inputs["dataset"].clone();
            let out = ctx.outputs["evaluation"].clone();
            let gpu = ctx.gpus.first().copied();
            let kernel_cache = ctx.kernel_cache.clone();
            tokio::task::spawn_blocking(move || {
                let task = crate::model::artifact::read_graph(&model).map_err(StageError::Failed)?.task;
                if task == crate::model::graph::TaskKind::Detection {
                    return evaluate_detector(&model, &dataset, &split, batch, &det, gpu, Some(&kernel_cache), &out);
                }
                if det != DetectionEval::default() {
                    return Err(StageError::Failed("`postprocess`, `iou`, `min_height`, `max_height`, `min_width`, `max_width`, `ap_mode` and `grid` are for detectors; this model is a classifier".into()));
                }
                let (report, ips, engine) = evaluate_on(&model, &dataset, &split, batch, &top_k, gpu, Some(&kernel_cache)).map_err(StageError::Failed)?;
                let device = gpu.map(|g| format!("cuda:{g}")).unwrap_or_else(|| "cpu".into());
                crate::stages::write_dir_atomically(&out, |tmp| {
                    let mut v = serde_json::to_value(&report).expect("report serialises");
                    v["inference"] = serde_json::json!({"images_per_second": ips, "batch_size": batch, "device": device, "engine": engine, "threads": rayon::current_num_threads()});
                    let mut j = serde_json::to_vec_pretty(&v).expect("report serialises");
                    j.push(b'\n');
                    std::fs::write(tmp.join("metrics.json"), j).map_err(|e| StageError::Failed(format!("cannot write metrics.json: {e}")))?;
                    confusion_png(&report, &tmp.join("confusion.png")).map_err(StageError::Failed)?;
                    Ok(())
                })?;
                let tk: Vec<String> = report.top_k.iter().map(|(k, v)| format!("top-{k} {:.4}", v)).collect();
                Ok(vec![format!("{} samples of `{split}`: {}; macro F1 {:.4}; {} img/s forward ({engine})", report.samples, tk.join(", "), report.macro_avg.f1, crate::ui::rate(ips))])
            })
            .await
            .map_err(|e| StageError::Failed(format!("evaluate crashed: {e}")))?
        })
    }
}

/// Run a model artifact over a dataset split on the CPU and report.
pub fn evaluate(model: &Path, dataset: &Path, split: &str, batch: usize, top_k: &[usize]) -> Result<ClassificationReport, String> {
    evaluate_on(model, dataset, split, batch, top_k, None, None).map(|(r, _, _)| r)
}

/// The outputs of a batch (`images` NCHW f32, `n` images), each row-major (a classifier's
/// logits `[n, classes]`; a detector's coverage and boxes).
type Forward = Box<dyn FnMut(Vec<f32>, usize) -> Result<Vec<Vec<f32>>, String>>;

/// The model's forward pass on the CPU (its ONNX export in onnxruntime where that loads,
/// else Burn), or on GPU `gpu` (libtorch, feature `torch`); and the engine's name.
#[cfg_attr(not(feature = "torch"), allow(unused_variables))]
fn forward_fn(model: &Path, gpu: Option<u32>, kernel_cache: Option<&Path>) -> Result<(crate::model::graph::ModelGraph, Forward, String), String> {
    let (graph, weights) = crate::model::artifact::read_raw(model)?;
    let spec = graph.input.clone();
    match gpu {
        None if crate::model::ort_rt::runtime().is_ok() => {
            let proto = crate::model::onnx::export(&graph, &weights, &crate::model::onnx::ExportOptions::default(), None)?;
            let m = crate::model::ort_rt::OrtModel::new(&prost::Message::encode_to_vec(&proto))?;
            let shape = [spec.channels as usize, spec.height as usize, spec.width as usize];
            let f: Forward = Box::new(move |images, n| m.run(&images, &[n, shape[0], shape[1], shape[2]]));
            Ok((graph, f, crate::model::ort_rt::describe()))
        }
        None => {
            type B = NdArray<f32>;
            let device = Default::default();
            let net = crate::model::artifact::build::<B>(&graph, &weights, &device)?;
            let f: Forward = Box::new(move |images, n| {
                let x: Tensor<B, 4> = Tensor::from_data(TensorData::new(images, [n, spec.channels as usize, spec.height as usize, spec.width as usize]), &device);
                net.forward_outputs(x).into_iter().map(|t| t.into_data().to_vec::<f32>().map_err(|e| format!("{e:?}"))).collect()
            });
            Ok((graph, f, "burn-ndarray".into()))
        }
        #[cfg(feature = "torch")]
        Some(g) => {
            use crate::model::torch::{Precision, Runtime, TorchNet};
            let rt = Runtime::cuda(g as usize, Precision::Tf32, kernel_cache)?;
            let net = TorchNet::new(&graph, &weights, &|_| false, &rt)?;
            let f: Forward = Box::new(move |images, n| net.outputs(&images, n));
            Ok((graph, f, "libtorch".into()))
        }
        #[cfg(not(feature = "torch"))]
        Some(_) => Err(crate::stages::NO_GPU_BUILD.into()),
    }
}

/// [`evaluate`] on the CPU (`gpu` None) or on a GPU, with the forward pass's throughput
/// (images per second, data loading excluded) and the engine that ran it. `kernel_cache`:
/// where our CUDA kernels' PTX is cached.
pub fn evaluate_on(model: &Path, dataset: &Path, split: &str, batch: usize, top_k: &[usize], gpu: Option<u32>, kernel_cache: Option<&Path>) -> Result<(ClassificationReport, f64, String), String> {
    let (graph, mut forward, engine) = forward_fn(model, gpu, kernel_cache)?;
    let ds = Dataset::open(dataset).map_err(|e| e.to_string())?;
    if ds.manifest.task != "classification" {
        return Err(format!("`evaluate` handles classification datasets; this one is `{}`", ds.manifest.task));
    }
    if !graph.classes.is_empty() && graph.classes != ds.manifest.classes {
        return Err(format!(
            "the model's classes ({}) differ from the dataset's ({})\n  = hint: evaluate on a dataset converted with the same classes, in the same order",
            graph.classes.join(", "),
            ds.manifest.classes.join(", ")
        ));
    }
    let n_classes = ds.manifest.classes.len();
    let spec = graph.input.clone();
    let mut y = Vec::new();
    let mut scores: Vec<Vec<f32>> = Vec::new();
    let mut forward_secs = 0.0;
    let opts = LoaderOptions { batch_size: batch, shuffle: false, ..Default::default() };
    for b in ds.stream(split, &spec, &opts).map_err(|e| e.to_string())? {
        let b = b.map_err(|e| e.to_string())?;
        let t0 = std::time::Instant::now();
        let logits = forward(b.images, b.len)?.swap_remove(0);
        forward_secs += t0.elapsed().as_secs_f64();
        if logits.len() != b.len * n_classes {
            return Err(format!("the model has {} outputs, the dataset {n_classes} classes", logits.len() / b.len.max(1)));
        }
        scores.extend(logits.chunks(n_classes).map(|c| c.to_vec()));
        y.extend(b.labels);
    }
    let ks: Vec<usize> = top_k.iter().copied().filter(|k| *k <= n_classes).collect();
    let r = classification_report(&y, &scores, &ds.manifest.classes, &ks)?;
    Ok((r, y.len() as f64 / forward_secs.max(1e-9), engine))
}

/// A detector on a split, its report written into `out` (atomically).
#[allow(clippy::too_many_arguments)]
fn evaluate_detector(model: &Path, dataset: &Path, split: &str, batch: usize, det: &DetectionEval, gpu: Option<u32>, kernel_cache: Option<&Path>, out: &Path) -> Result<Vec<String>, StageError> {
    let fail = StageError::Failed;
    let (graph, mut forward, engine) = forward_fn(model, gpu, kernel_cache).map_err(fail)?;
    let ds = Dataset::open(dataset).map_err(|e| fail(e.to_string()))?;
    let head = graph.detection.clone().ok_or_else(|| fail("internal: a detector without detection settings".into()))?;
    // The stage's keys over the model's own post-processing.
    let clustering = det.postprocess.resolve_over(&head.clustering, &graph.classes, "postprocess").map_err(fail)?;
    let device = gpu.map(|g| format!("cuda:{g}")).unwrap_or_else(|| "cpu".into());
    let grid = (det.grid.unwrap_or(16), det.grid_score.unwrap_or(0.3));
    let (report, ips) = crate::stages::write_dir_atomically(out, |tmp| {
        let mut extra = serde_json::Map::new();
        extra.insert("inference".into(), serde_json::json!({"batch_size": batch, "device": device, "engine": engine, "threads": rayon::current_num_threads()}));
        extra.insert("postprocess".into(), serde_json::to_value(&clustering).expect("serialises"));
        crate::tasks::detection::evaluate::evaluate_into(&graph, &mut *forward, &ds, split, batch, &clustering, &det.eval, grid, tmp, extra).map_err(fail)
    })?;
    let ap50 = report.coco.get("AP50").and_then(|v| v.as_f64()).unwrap_or(-1.0);
    let ap = report.coco.get("AP").and_then(|v| v.as_f64()).unwrap_or(-1.0);
    Ok(vec![format!("{} images of `{split}`, {} boxes, {} detections: TAO mAP {:.4}, COCO AP {ap:.4}, AP50 {ap50:.4}; {} img/s forward ({engine})", report.images, report.ground_truth, report.detections, report.tao.map.unwrap_or(0.0), crate::ui::rate(ips))])
}

/// The row-normalised confusion matrix as a heat map (true classes down, predicted across).
fn confusion_png(r: &ClassificationReport, path: &Path) -> Result<(), String> {
    let n = r.confusion.len().max(1) as u32;
    let cell = (512 / n).clamp(4, 48);
    let img = image::RgbImage::from_fn(n * cell, n * cell, |x, y| {
        let (i, j) = ((y / cell) as usize, (x / cell) as usize);
        let row: u64 = r.confusion[i].iter().sum();
        let v = if row == 0 { 0.0 } else { r.confusion[i][j] as f64 / row as f64 };
        let c = (255.0 * (1.0 - v)) as u8;
        if i == j { image::Rgb([c, 255, c]) } else { image::Rgb([255, c, c]) }
    });
    img.save(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
