//! `export`: a model artifact (built, imported, trained or pruned) to an open ONNX model.
//!
//! ```toml
//! [stages.export]
//! kind = "export"
//! model = "retrain.model"
//! precision = "fp32"        # fp32 | fp16 (weights and arithmetic; input/output stay float32)
//! opset = 17                # 17..21
//! fold_batchnorm = true     # fold each batch norm into the convolution before it
//! ```
//!
//! Output `onnx` (`export.onnx`): `model.onnx` (dynamic batch; classes, input size and preprocessing in
//! `metadata_props`) and `metrics.json` (ops, sizes, and the check below). Before it is
//! stored, the ONNX model is run with tract on random images and must match the Burn
//! forward pass (1e-4 relative for FP32, 2e-2 for FP16), so a broken export never lands.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use crate::schema::{Key, Ty, key};
use crate::config::Fields;
use crate::model::graph::ModelGraph;
use crate::model::net::WeightData;
use crate::diag::Diag;
use crate::model::onnx::{ExportOptions, Precision};
use crate::stages::{InputDecl, OutputDecl, RunCtx, StageDef, StageError, StageKind};
use crate::value::PVal;

#[derive(Debug)]
pub struct Export;

#[derive(Debug, Clone)]
struct Parsed {
    precision: Precision,
    opset: i64,
    fold_batchnorm: bool,
}

const SPEC: &[Key] = &[
    key("model", Ty::Str, "The model to export: a stage's model or a model folder.").required(),
    key("precision", Ty::Str, "Weights and arithmetic of the ONNX file.").def("\"fp32\"").one_of(&["fp32", "fp16"]),
    key("opset", Ty::Int, "ONNX opset.").def("17").range(17.0, 21.0),
    key("fold_batchnorm", Ty::Bool, "Fold batch norms into the convolutions before them.").def("true"),
];

impl StageKind for Export {
    fn name(&self) -> &'static str {
        "export"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "write ONNX (FP32/FP16) with a DeepStream config"
    }
    fn spec(&self) -> Vec<Key> {
        SPEC.to_vec()
    }

    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef> {
        let before = f.diags.0.len();
        let model = f.required_str("model", "model = \"train.model\"");
        let precision = match f.choice("precision", &["fp32", "fp16"], "fp32").as_str() {
            "fp16" => Precision::Fp16,
            _ => Precision::Fp32,
        };
        let opset = match f.int("opset") {
            Some((v, n)) if !crate::model::onnx::OPSETS.contains(&v) => {
                f.diags.push(Diag::error(format!("opset {v} is not supported")).at(&n.span, "out of range").hint("use 17 to 21"));
                17
            }
            Some((v, _)) => v,
            None => 17,
        };
        let fold_batchnorm = f.bool("fold_batchnorm").map(|(b, _)| b).unwrap_or(true);
        if f.diags.0.len() > before {
            return None;
        }
        let (model, mnode) = model?;
        let mut params = BTreeMap::new();
        params.insert("precision".into(), PVal::Str(format!("{precision:?}").to_lowercase()));
        params.insert("opset".into(), PVal::Int(opset));
        params.insert("fold_batchnorm".into(), PVal::Bool(fold_batchnorm));
        Some(StageDef {
            params,
            inputs: vec![InputDecl { label: "model".into(), raw: model, span: mnode.span.clone() }],
            outputs: vec![OutputDecl { name: "onnx".into(), path: PathBuf::from("outputs").join(stage).join("onnx"), span: mnode.span.clone(), owned: true }],
            metrics: Some("onnx".into()),
            gpus: 0,
            description: None,
            typed: Arc::new(Parsed { precision, opset, fold_batchnorm }),
        })
    }

    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>> {
        Box::pin(async move {
            let p: Parsed = crate::stages::typed(ctx, "export")?;
            let (model, out) = (ctx.inputs["model"].clone(), ctx.outputs["onnx"].clone());
            let opts = ExportOptions { precision: p.precision, opset: p.opset, fold_batchnorm: p.fold_batchnorm, metadata: Vec::new() };
            let progress = ctx.progress.clone();
            crate::stages::blocking("export", move || export_artifact(&model, &out, &opts, &progress)).await
        })
    }
}

/// Largest relative difference `max |a - b| / max |b|` (0 for an empty `b`).
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs())) / scale
}

/// Random normalised images for checks (deterministic).
pub fn probe_images(n: usize, len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n * len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Run the Burn reference and an ONNX model on the same random images: the largest relative
/// difference over the outputs (each output relative to its own scale).
pub fn check_against_burn(g: &ModelGraph, w: &HashMap<String, WeightData>, onnx: &[u8]) -> Result<(f64, String), String> {
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};
    type B = NdArray<f32>;
    let device = Default::default();
    let net = crate::model::artifact::build::<B>(g, w, &device)?;
    let n = 2;
    let s = &g.input;
    let x = probe_images(n, s.len(), 7);
    let want: Vec<Vec<f32>> = net
        .forward_outputs(Tensor::<B, 4>::from_data(TensorData::new(x.clone(), [n, s.channels as usize, s.height as usize, s.width as usize]), &device))
        .into_iter()
        .map(|t| t.into_data().to_vec::<f32>().map_err(|e| format!("{e:?}")))
        .collect::<Result<_, _>>()?;
    let m = crate::model::onnx_run::OnnxModel::from_bytes(onnx, "exported model")?;
    let got = m.run_all(&x, n)?;
    if got.len() != want.len() || got.iter().zip(&want).any(|(a, b)| a.len() != b.len()) {
        return Err(format!("the ONNX model's outputs have {:?} values, the model's {:?}", got.iter().map(|v| v.len()).collect::<Vec<_>>(), want.iter().map(|v| v.len()).collect::<Vec<_>>()));
    }
    Ok((got.iter().zip(&want).map(|(a, b)| max_rel_diff(a, b)).fold(0.0, f64::max), m.engine()))
}

/// Export, check the ONNX file against the model (a `progress` note says how it went), write.
pub fn export_artifact(model: &Path, out: &Path, opts: &ExportOptions, progress: &crate::stages::ProgressFn) -> Result<Vec<String>, String> {
    use prost::Message;
    let (g, w) = crate::model::artifact::read_raw(model)?;
    let proto = crate::model::onnx::export(&g, &w, opts, None).map_err(|e| format!("cannot export `{}`: {e}", g.arch))?;
    let bytes = proto.encode_to_vec();
    let t0 = std::time::Instant::now();
    let (diff, engine) = check_against_burn(&g, &w, &bytes)?;
    let tol = if opts.precision == Precision::Fp16 { 2e-2 } else { 1e-4 };
    progress.note(&format!("check: {engine} vs the model on random input, max relative difference {diff:.1e} (allowed {tol:.0e}), {:.1}s", t0.elapsed().as_secs_f64()));
    if diff > tol {
        return Err(format!("internal: the exported ONNX model differs from the model by {diff:.2e} (relative; allowed {tol:.0e}) on random input — please report this"));
    }
    let ops = crate::model::onnx::op_counts(&proto);
    let report = serde_json::json!({
        "arch": g.arch,
        "precision": opts.precision,
        "opset": opts.opset,
        "fold_batchnorm": opts.fold_batchnorm,
        "param_count": g.param_count(),
        "bytes": bytes.len(),
        "nodes": ops.values().sum::<usize>(),
        "ops": ops,
        "input": {"name": g.task.onnx_input(), "shape": ["batch", g.input.channels, g.input.height, g.input.width]},
        "outputs": crate::model::onnx::output_shapes(&proto),
        "classes": g.classes,
        "check": {"runtime": engine, "max_rel_diff_vs_model": diff, "tolerance": tol},
    });
    let extras = crate::tasks::export_extras(&g, "model.onnx", None);
    crate::stages::write_dir_atomically(out, |tmp| {
        std::fs::write(tmp.join("model.onnx"), &bytes).map_err(|e| StageError::Failed(format!("cannot write model.onnx: {e}")))?;
        for (name, text) in &extras {
            std::fs::write(tmp.join(name), text).map_err(|e| StageError::Failed(format!("cannot write {name}: {e}")))?;
        }
        let mut j = serde_json::to_vec_pretty(&report).expect("serialises");
        j.push(b'\n');
        std::fs::write(tmp.join("metrics.json"), j).map_err(|e| StageError::Failed(format!("cannot write metrics.json: {e}")))
    })
    .map_err(|e| e.to_string())?;
    Ok(vec![format!(
        "{} -> ONNX opset {} {:?}: {} nodes, {:.1} MB; {engine} matches the model to {diff:.1e}",
        g.arch,
        opts.opset,
        opts.precision,
        ops.values().sum::<usize>(),
        bytes.len() as f64 / 1e6
    )])
}
