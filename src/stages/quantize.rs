//! `quantize`: post-training INT8 calibration of a model artifact on a dataset artifact.
//!
//! ```toml
//! [stages.quantize]
//! kind = "quantize"
//! model = "train.model"
//! dataset = "convert"
//! calibration_split = "train"
//! calibration_batches = 8      # batches of `batch_size` images
//! batch_size = 32
//! method = "entropy"           # minmax | percentile | entropy (TensorRT's EntropyCalibration2)
//! percentile = 99.99           # for `percentile`
//! activation_type = "uint8"    # uint8 (asymmetric; onnxruntime's fast CPU path) | int8 (symmetric; TensorRT)
//! eval_split = "val"           # FP32 vs INT8 accuracy on this split ("none": skip)
//! trt_version = "8601"         # the cache's header: TRT-<version>-EntropyCalibration2
//! ```
//!
//! Output `int8` (`quantize.int8`): `model.int8.onnx` (QDQ: per-tensor activations, per-channel int8 weights,
//! int32 biases; BN folded), `calibration.cache` (TensorRT's text format; tensor names are
//! those of the `export` stage's ONNX model with `fold_batchnorm = true`, scale =
//! threshold / 127) and `metrics.json` (FP32 vs INT8 accuracy through tract, ranges).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use crate::schema::{Key, Ty, key};
use crate::config::Fields;
use crate::data::loader::{Dataset, LoaderOptions};
use crate::diag::Diag;
use crate::model::calibrate::Method;
use crate::model::onnx::{ActType, ExportOptions};
use crate::stages::{InputDecl, OutputDecl, RunCtx, StageDef, StageError, StageKind};
use crate::value::PVal;

#[derive(Debug)]
pub struct Quantize;

#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    pub calibration_split: String,
    pub calibration_batches: usize,
    pub batch_size: usize,
    pub method: Method,
    pub act_type: ActType,
    pub eval_split: Option<String>,
    pub trt_version: String,
}

const SPEC: &[Key] = &[
    key("model", Ty::Str, "The model to quantize: a stage's model or a model folder.").required(),
    key("dataset", Ty::Str, "The dataset calibrated and compared on.").required(),
    key("calibration_split", Ty::Str, "The split calibration images come from.").def("\"train\""),
    key("calibration_batches", Ty::Int, "Batches of calibration images.").def("8").min(1.0),
    key("batch_size", Ty::Int, "Images per calibration batch.").def("32").min(1.0),
    key("method", Ty::Str, "How activation ranges are chosen: TensorRT's entropy calibration, min/max, or a percentile.").def("\"entropy\"").one_of(&["minmax", "percentile", "entropy"]),
    key("percentile", Ty::Float, "method = \"percentile\": the percentile of absolute activations kept.").def("99.99").above(0.0).max(100.0),
    key("activation_type", Ty::Str, "8-bit type of quantized activations in the QDQ model.").def("\"uint8\"").one_of(&["uint8", "int8"]),
    key("eval_split", Ty::Str, "The split FP32 and INT8 are compared on (\"none\": no comparison).").def("\"val\""),
    key("trt_version", Ty::Str, "TensorRT version written in the calibration cache, digits only (8601 is 8.6.1).").def("\"8601\""),
];

impl StageKind for Quantize {
    fn name(&self) -> &'static str {
        "quantize"
    }
    fn version(&self) -> u32 {
        // 2: the report names the engines of calibration and evaluation (onnxruntime where it loads).
        2
    }
    fn summary(&self) -> &'static str {
        "calibrate INT8 (QDQ ONNX, TensorRT calibration cache) and compare it with FP32"
    }
    fn spec(&self) -> Vec<Key> {
        SPEC.to_vec()
    }

    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef> {
        let before = f.diags.0.len();
        let model = f.required_str("model", "model = \"train.model\"");
        let dataset = f.required_str("dataset", "dataset = \"convert\"");
        let calibration_split = f.str("calibration_split").map(|(s, _)| s).unwrap_or_else(|| "train".into());
        let calibration_batches = f.positive_uint("calibration_batches", 8) as usize;
        let batch_size = f.positive_uint("batch_size", 32) as usize;
        let method_s = f.choice("method", &["minmax", "percentile", "entropy"], "entropy");
        let percentile = match f.float("percentile") {
            Some((p, n)) => {
                if !(p > 0.0 && p <= 100.0) {
                    f.diags.push(Diag::error("`percentile` is a percentage in (0, 100]").at(&n.span, "out of range").hint("e.g. percentile = 99.99"));
                }
                if method_s != "percentile" {
                    f.diags.push(Diag::error("`percentile` only applies to method = \"percentile\"").at(&n.span, "unused"));
                }
                p
            }
            None => 99.99,
        };
        let method = match method_s.as_str() {
            "minmax" => Method::MinMax,
            "percentile" => Method::Percentile { percentile },
            _ => Method::Entropy,
        };
        let act_type = if f.choice("activation_type", &["uint8", "int8"], "uint8") == "int8" { ActType::Int8 } else { ActType::Uint8 };
        let eval_split = match f.str("eval_split").map(|(s, _)| s) {
            Some(s) if s == "none" => None,
            Some(s) => Some(s),
            None => Some("val".into()),
        };
        let trt_version = match f.str("trt_version") {
            Some((v, n)) => {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit()) {
                    f.diags.push(Diag::error("`trt_version` is TensorRT's version number as it writes it, digits only").at(&n.span, "not digits").hint("e.g. \"8601\" for 8.6.1, \"100300\" for 10.3"));
                }
                v
            }
            None => "8601".into(),
        };
        if f.diags.0.len() > before {
            return None;
        }
        let (model, mnode) = model?;
        let (dataset, dnode) = dataset?;
        let cfg = QuantizeConfig { calibration_split, calibration_batches, batch_size, method, act_type, eval_split, trt_version };
        let mut params = BTreeMap::new();
        params.insert("calibration_split".into(), PVal::Str(cfg.calibration_split.clone()));
        params.insert("calibration_batches".into(), PVal::Int(calibration_batches as i64));
        params.insert("batch_size".into(), PVal::Int(batch_size as i64));
        params.insert("method".into(), PVal::from_json(serde_json::to_value(method).expect("serialises")));
        params.insert("activation_type".into(), PVal::from_json(serde_json::to_value(act_type).expect("serialises")));
        params.insert("eval_split".into(), PVal::Str(cfg.eval_split.clone().unwrap_or_else(|| "none".into())));
        params.insert("trt_version".into(), PVal::Str(cfg.trt_version.clone()));
        Some(StageDef {
            params,
            inputs: vec![InputDecl { label: "model".into(), raw: model, span: mnode.span.clone() }, InputDecl { label: "dataset".into(), raw: dataset, span: dnode.span.clone() }],
            outputs: vec![OutputDecl { name: "int8".into(), path: PathBuf::from("outputs").join(stage).join("int8"), span: mnode.span.clone(), owned: true }],
            metrics: Some("int8".into()),
            gpus: 0,
            description: None,
            typed: Arc::new(cfg),
        })
    }

    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>> {
        Box::pin(async move {
            let cfg: QuantizeConfig = crate::stages::typed(ctx, "quantize")?;
            let (model, dataset, out) = (ctx.inputs["model"].clone(), ctx.inputs["dataset"].clone(), ctx.outputs["int8"].clone());
            let progress = ctx.progress.clone();
            crate::stages::blocking("quantize", move || quantize_artifact(&model, &dataset, &out, &cfg, &progress)).await
        })
    }
}

/// Top-1 accuracy of an ONNX model (tract) on a split, and the images it saw.
pub fn onnx_top1(m: &crate::model::onnx_run::OnnxModel, ds: &Dataset, split: &str, batch: usize) -> Result<(f64, usize), String> {
    let opts = LoaderOptions { batch_size: batch, shuffle: false, ..Default::default() };
    let (mut right, mut n) = (0usize, 0usize);
    for b in ds.stream(split, &m.input, &opts).map_err(|e| e.to_string())? {
        let b = b.map_err(|e| e.to_string())?;
        let scores = m.run(&b.images, b.len)?;
        let k = scores.len() / b.len.max(1);
        for (row, y) in scores.chunks(k).zip(&b.labels) {
            let arg = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (i, v)| if *v > a.1 { (i, *v) } else { a }).0;
            right += (arg == *y as usize) as usize;
            n += 1;
        }
    }
    Ok((if n == 0 { 0.0 } else { right as f64 / n as f64 }, n))
}

/// Calibrate, quantize, check INT8 against FP32 and write the artifact; the end of each long
/// step (calibration, the check) is a `progress` note.
pub fn quantize_artifact(model: &Path, dataset: &Path, out: &Path, cfg: &QuantizeConfig, progress: &crate::stages::ProgressFn) -> Result<Vec<String>, String> {
    use burn::backend::NdArray;
    use prost::Message;
    type B = NdArray<f32>;
    let device = Default::default();
    let (g, w) = crate::model::artifact::read_raw(model)?;
    let ds = Dataset::open(dataset).map_err(|e| e.to_string())?;
    if !g.classes.is_empty() && ds.manifest.task == "classification" && g.classes != ds.manifest.classes {
        return Err(format!("the model's classes ({}) differ from the dataset's ({})", g.classes.join(", "), ds.manifest.classes.join(", ")));
    }
    let available = ds.len(&cfg.calibration_split);
    if available == 0 {
        return Err(format!(
            "the calibration set is empty: split `{}` of `{}` has no samples\n  = hint: set `calibration_split` to a split with images (e.g. \"train\")",
            cfg.calibration_split,
            dataset.display()
        ));
    }
    // Calibration batches: an evenly spread sample of the split (shuffled with a fixed seed).
    let opts = LoaderOptions { batch_size: cfg.batch_size, shuffle: true, seed: 17, ..Default::default() };
    let mut batches = Vec::new();
    for b in ds.stream(&cfg.calibration_split, &g.input, &opts).map_err(|e| e.to_string())?.take(cfg.calibration_batches) {
        let b = b.map_err(|e| e.to_string())?;
        batches.push((b.images, b.len));
    }
    let images: usize = batches.iter().map(|(_, n)| n).sum();
    let t0 = std::time::Instant::now();
    let low = crate::model::onnx::Lowering::new(&g, true);
    // The observed tensors through onnxruntime where it loads, else the Burn forward pass.
    let (stats, calib_engine) = if crate::model::ort_rt::runtime().is_ok() {
        (crate::model::calibrate::collect_onnx(&g, &w, &low, &batches)?, crate::model::ort_rt::describe())
    } else {
        let net = crate::model::artifact::build::<B>(&g, &w, &device)?;
        (crate::model::calibrate::collect(&g, &net, &low, &batches, &device)?, "burn-ndarray".to_string())
    };
    let mut ranges = crate::model::calibrate::ranges(&stats, cfg.method);
    ranges.insert(low.input.clone(), crate::model::calibrate::input_range(&g.input));
    let spec = crate::model::calibrate::quant_spec(&ranges, &low.quantized_tensors(&g), cfg.act_type)?;
    let calib_secs = t0.elapsed().as_secs_f64();
    progress.note(&format!("calibration: {images} images in {} batches, {calib_secs:.1}s ({calib_engine})", batches.len()));
    let meta = vec![
        ("taoflow.quantization".to_string(), serde_json::json!({"method": cfg.method, "activation_type": cfg.act_type, "weights": "int8 symmetric per output channel", "calibration_images": images}).to_string()),
    ];
    let opts = ExportOptions { metadata: meta, ..Default::default() };
    let qdq = crate::model::onnx::export(&g, &w, &opts, Some(&spec)).map_err(|e| format!("cannot export `{}`: {e}", g.arch))?.encode_to_vec();
    let cache = crate::model::calibrate::trt_cache(&ranges, &cfg.trt_version);

    // FP32 vs INT8, both in onnxruntime (or both in tract), on the evaluation split.
    let int8 = crate::model::onnx_run::OnnxModel::from_bytes(&qdq, "the QDQ model")?;
    let mut eval = serde_json::Value::Null;
    let mut summary = String::new();
    let mut drop_points = None;
    if let Some(split) = &cfg.eval_split {
        if ds.len(split) == 0 {
            return Err(format!("`eval_split` `{split}` of `{}` has no samples\n  = hint: name a split with images, or eval_split = \"none\"", dataset.display()));
        }
        let fp32_bytes = crate::model::onnx::export(&g, &w, &ExportOptions::default(), None)?.encode_to_vec();
        let fp32 = crate::model::onnx_run::OnnxModel::from_bytes(&fp32_bytes, "the FP32 model")?;
        let (metric, a32, n) = crate::tasks::onnx_quality(&g, &fp32, &ds, split, 64)?;
        let (_, a8, _) = crate::tasks::onnx_quality(&g, &int8, &ds, split, 64)?;
        let drop = 100.0 * (a32 - a8);
        progress.note(&format!("check: {metric} on {n} images of `{split}`, FP32 {a32:.4}, INT8 {a8:.4}"));
        eval = serde_json::json!({"split": split, "samples": n, "runtime": if fp32.engine() == int8.engine() { fp32.engine() } else { format!("FP32 {}, INT8 {}", fp32.engine(), int8.engine()) }, "metric": metric, format!("fp32_{metric}"): a32, format!("int8_{metric}"): a8, format!("{metric}_drop_points"): drop});
        summary = format!("; {metric} on `{split}` FP32 {a32:.4} -> INT8 {a8:.4} ({:+.2} points)", -drop);
        drop_points = Some((metric, drop));
    }
    let report = serde_json::json!({
        "arch": g.arch,
        "method": cfg.method,
        "activation_type": cfg.act_type,
        "calibration": {"split": cfg.calibration_split, "images": images, "batches": batches.len(), "seconds": calib_secs, "engine": calib_engine},
        "evaluation": eval,
        "quantized_tensors": spec.activations.len(),
        "cache_tensors": ranges.len(),
        "trt_cache_header": cache.lines().next(),
        "ranges": ranges,
    });
    let extras = crate::tasks::export_extras(&g, "model.int8.onnx", Some("calibration.cache"));
    crate::stages::write_dir_atomically(out, |tmp| {
        let fail = |e: std::io::Error| crate::stages::StageError::Failed(format!("cannot write into `{}`: {e}", tmp.display()));
        std::fs::write(tmp.join("model.int8.onnx"), &qdq).map_err(fail)?;
        for (name, text) in &extras {
            std::fs::write(tmp.join(name), text).map_err(fail)?;
        }
        std::fs::write(tmp.join("calibration.cache"), &cache).map_err(fail)?;
        let mut j = serde_json::to_vec_pretty(&report).expect("serialises");
        j.push(b'\n');
        std::fs::write(tmp.join("metrics.json"), j).map_err(fail)
    })
    .map_err(|e| e.to_string())?;
    let mut lines = vec![format!(
        "{}: {:?} calibration on {images} images of `{}` ({calib_secs:.1}s); {} tensors quantized, {} in the TensorRT cache{summary}",
        g.arch,
        cfg.method,
        cfg.calibration_split,
        spec.activations.len(),
        ranges.len()
    )];
    if let Some((metric, drop)) = drop_points.filter(|d| d.1 > 1.0) {
        lines.push(format!(
            "warning: the INT8 model loses {drop:.1} points of {metric}; try another `method` (minmax, percentile), more `calibration_batches`, or deploy the FP32 export"
        ));
    }
    Ok(lines)
}
