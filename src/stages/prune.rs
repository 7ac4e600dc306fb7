//! `prune`: structured channel pruning of a model artifact (any architecture of the layer
//! graph). TAO's options by name, with their TAO flags in brackets:
//!
//! ```toml
//! [stages.prune]
//! kind = "prune"
//! model = "train.model"
//! norm = "l2"                  # l1 | l2 | max                                   [-n]
//! threshold = 0.1              # keep channels whose normalised norm is >= this [-pth]
//! granularity = 8              # keep a multiple of this many channels          [-pg]
//! min_channels = 16            # never fewer per layer                          [-nf]
//! equalization = "union"       # union | intersection | arithmetic_mean | geometric_mean [-eq]
//! excluded_layers = []         # layer names (or prefixes) never pruned         [-el]
//! # target_params = 0.5        # instead of `threshold`: keep this fraction of the parameters
//! # target_flops = 0.45        # ... or of the multiply-accumulates per image (speed budget)
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use crate::schema::{Key, Ty, key};
use crate::config::Fields;
use crate::diag::Diag;
use crate::model::graph::{ModelGraph, Op};
use crate::model::prune::{Criterion, Equalization, Norm, PruneConfig};
use crate::stages::{InputDecl, OutputDecl, RunCtx, StageDef, StageError, StageKind};
use crate::value::PVal;

#[derive(Debug)]
pub struct Prune;

const SPEC: &[Key] = &[
    key("model", Ty::Str, "The model to prune: a stage's model (`train.model`) or a model folder.").required(),
    key("norm", Ty::Str, "How a channel's importance is measured from its weights.").def("\"l2\"").one_of(&["l1", "l2", "max"]),
    key("threshold", Ty::Float, "Channels whose normalised norm is below this go (TAO's criterion; default 0.1 when no target is given).").range(0.0, 1.0),
    key("target_params", Ty::Float, "Instead of a threshold: the share of parameters to keep.").above(0.0).max(1.0),
    key("target_flops", Ty::Float, "Instead of a threshold: the share of multiply-accumulates per image to keep.").above(0.0).max(1.0),
    key("granularity", Ty::Int, "Kept channel counts are multiples of this.").def("8").min(1.0),
    key("min_channels", Ty::Int, "Fewest channels a layer keeps.").def("16").min(0.0),
    key("equalization", Ty::Str, "How layers whose outputs are added together agree on the channels they keep (TAO's).").def("\"union\"").one_of(&["union", "intersection", "arithmetic_mean", "geometric_mean"]),
    key("excluded_layers", Ty::StrList, "Layers (names in model.json) that keep all their channels."),
];

impl StageKind for Prune {
    fn name(&self) -> &'static str {
        "prune"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "remove the channels that matter least"
    }
    fn spec(&self) -> Vec<Key> {
        SPEC.to_vec()
    }

    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef> {
        let before = f.diags.0.len();
        let model = f.required_str("model", "model = \"train.model\"");
        let norm = match f.str("norm") {
            None => Norm::L2,
            Some((s, n)) => match s.as_str() {
                "l1" => Norm::L1,
                "l2" => Norm::L2,
                "max" => Norm::Max,
                _ => {
                    f.diags.push(Diag::error(format!("unknown norm `{s}`")).at(&n.span, "unknown").hint("choose l1, l2 or max"));
                    Norm::L2
                }
            },
        };
        let equalization = match f.str("equalization") {
            None => Equalization::Union,
            Some((s, n)) => match s.as_str() {
                "union" => Equalization::Union,
                "intersection" => Equalization::Intersection,
                "arithmetic_mean" => Equalization::ArithmeticMean,
                "geometric_mean" => Equalization::GeometricMean,
                _ => {
                    f.diags.push(Diag::error(format!("unknown equalization `{s}`")).at(&n.span, "unknown").hint("choose union, intersection, arithmetic_mean or geometric_mean"));
                    Equalization::Union
                }
            },
        };
        let threshold = f.float("threshold");
        let target = f.float("target_params");
        let target_flops = f.float("target_flops");
        let given: Vec<&str> = [("threshold", threshold.is_some()), ("target_params", target.is_some()), ("target_flops", target_flops.is_some())].iter().filter(|x| x.1).map(|x| x.0).collect();
        if given.len() > 1 {
            let span = [&target_flops, &target, &threshold].iter().find_map(|v| v.as_ref().map(|(_, n)| n.span.clone())).expect("two are set");
            f.diags.push(Diag::error(format!("`{}` exclude each other: a prune stage has one criterion", given.join("` and `"))).at(&span, "remove one"));
        }
        let ratio = |f: &mut Fields<'_>, key: &str, what: &str, v: (f64, &crate::value::Node)| {
            let (t, n) = v;
            if !(t > 0.0 && t <= 1.0) {
                f.diags.push(Diag::error(format!("`{key}` is the fraction of {what} to keep, in (0, 1]")).at(&n.span, "out of range"));
            }
            t
        };
        let criterion = if let Some((t, n)) = threshold {
            if !(0.0..=1.0).contains(&t) {
                f.diags.push(Diag::error("`threshold` is a normalised norm between 0 and 1").at(&n.span, "out of range"));
            }
            Criterion::Threshold(t)
        } else if let Some(v) = target {
            Criterion::ParamRatio(ratio(f, "target_params", "parameters", v))
        } else if let Some(v) = target_flops {
            Criterion::FlopRatio(ratio(f, "target_flops", "multiply-accumulates per image", v))
        } else {
            Criterion::Threshold(0.1)
        };
        let granularity = f.positive_uint("granularity", 8) as usize;
        let min_channels = f.uint("min_channels").map(|(v, _)| v as usize).unwrap_or(16);
        let excluded: Vec<String> = f.str_list("excluded_layers").unwrap_or_default().into_iter().map(|(s, _)| s).collect();
        if f.diags.0.len() > before {
            return None;
        }
        let (model, mnode) = model?;
        let cfg = PruneConfig { norm, criterion, granularity, min_channels, equalization, excluded };
        let mut params = BTreeMap::new();
        params.insert("config".into(), PVal::from_json(serde_json::to_value(&cfg).expect("serialises")));
        Some(StageDef {
            params,
            inputs: vec![InputDecl { label: "model".into(), raw: model, span: mnode.span.clone() }],
            outputs: vec![OutputDecl { name: "model".into(), path: PathBuf::from("outputs").join(stage).join("model"), span: mnode.span.clone(), owned: true }],
            metrics: Some("model".into()),
            gpus: 0,
            description: None,
            typed: Arc::new(cfg),
        })
    }

    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>> {
        Box::pin(async move {
            let cfg: PruneConfig = crate::stages::typed(ctx, "prune")?;
            let (model, out) = (ctx.inputs["model"].clone(), ctx.outputs["model"].clone());
            crate::stages::blocking("prune", move || prune_artifact(&model, &out, &cfg).map_err(|e| e.to_string())).await
        })
    }
}

fn conv_channels(g: &ModelGraph) -> BTreeMap<String, usize> {
    g.layers.iter().filter_map(|l| if let Op::Conv2d { out_channels, .. } = l.op { Some((l.name.clone(), out_channels)) } else { None }).collect()
}

/// Prune the model artifact at `model` into `out` (a new model artifact with a report).
pub fn prune_artifact(model: &Path, out: &Path, cfg: &PruneConfig) -> Result<Vec<String>, StageError> {
    let fail = StageError::Failed;
    let (g, w) = crate::model::artifact::read_raw(model).map_err(fail)?;
    for e in &cfg.excluded {
        if !g.layers.iter().any(|l| &l.name == e || l.name.starts_with(&format!("{e}."))) {
            return Err(fail(format!("`excluded_layers` names `{e}`, which is not a layer of `{}`", g.arch)));
        }
    }
    let (sps, layer_space, keep) = crate::model::prune::select(&g, &w, cfg).map_err(fail)?;
    let pg = crate::model::prune::apply_to_graph(&g, &sps, &layer_space, &keep).map_err(fail)?;
    let pw = crate::model::prune::apply_to_weights(&g, &layer_space, &keep, &w).map_err(fail)?;
    // The result must load as it will be used.
    let device = Default::default();
    let (_, missing) = crate::model::net::GraphNet::<burn::backend::NdArray<f32>>::new(&pg, &device).map_err(fail)?.load_weights(&pw, &device).map_err(fail)?;
    if !missing.is_empty() {
        return Err(fail(format!("internal: pruned weights lack {}", missing.join(", "))));
    }
    let (p0, p1) = (g.param_count(), pg.param_count());
    let (f0, f1) = (crate::model::prune::flops(&g), crate::model::prune::flops(&pg));
    let before = conv_channels(&g);
    let after = conv_channels(&pg);
    let layers: Vec<serde_json::Value> = before.iter().map(|(k, b)| serde_json::json!({"layer": k, "before": b, "after": after[k]})).collect();
    let prunable = sps.iter().filter(|s| s.prunable).count();
    let report = serde_json::json!({
        "arch": pg.arch,
        "param_count_before": p0,
        "param_count": p1,
        "pruning_ratio": p1 as f64 / p0 as f64,
        "flops_before": f0,
        "flops": f1,
        "flops_ratio": f1 as f64 / f0 as f64,
        "channel_groups": sps.len(),
        "prunable_groups": prunable,
        "config": cfg,
        "layers": layers,
    });
    crate::stages::write_dir_atomically(out, |tmp| {
        let mut j = serde_json::to_vec_pretty(&pg).expect("serialises");
        j.push(b'\n');
        std::fs::write(tmp.join("model.json"), j).map_err(|e| fail(format!("cannot write model.json: {e}")))?;
        let mut names: Vec<(String, crate::model::net::WeightData)> = pw.into_iter().filter(|(k, _)| pg.weights().contains_key(k)).collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        crate::model::artifact::write_safetensors(&tmp.join("weights.safetensors"), names, &[("format", "pt"), ("arch", &pg.arch)]).map_err(fail)?;
        let mut j = serde_json::to_vec_pretty(&report).expect("serialises");
        j.push(b'\n');
        std::fs::write(tmp.join("metrics.json"), j).map_err(|e| fail(format!("cannot write metrics.json: {e}")))?;
        Ok(())
    })?;
    Ok(vec![format!(
        "{}: {p0} -> {p1} parameters ({:.1}%), {:.1} -> {:.1} MMAC per image; {prunable} of {} channel groups prunable",
        g.arch,
        100.0 * p1 as f64 / p0 as f64,
        f0 as f64 / 1e6,
        f1 as f64 / 1e6,
        sps.len()
    )])
}
