//! Structured channel pruning on any layer graph.
//!
//! Channels live in *channel spaces*: the set of tensors whose channel `c` must be removed
//! together. A convolution (not depthwise) and a linear layer start a new space at their
//! output; batch norm, activations, pooling and dropout pass their input's space through;
//! a depthwise convolution ties its output to its input; `Add` merges the spaces of all its
//! inputs (residual blocks). A space is prunable when it is made by convolutions, is not the
//! model input, does not reach the output head, and holds no excluded layer.
//!
//! Scores follow TAO: the norm (`l1`, `l2`, `max`) of each producing kernel's output
//! channel, normalised by the layer's largest, equalised over the producers of a space
//! (`union` = max, `intersection` = min, arithmetic or geometric mean). Channels at or above
//! the threshold stay; the count kept is rounded up to a multiple of the granularity and
//! never below the minimum. Removal is physical: smaller weight tensors, a valid graph.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::graph::{ModelGraph, Op};
use super::net::WeightData;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    L1,
    L2,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Equalization {
    Union,
    Intersection,
    ArithmeticMean,
    GeometricMean,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Criterion {
    /// Keep channels whose normalised score is at least this.
    Threshold(f64),
    /// Keep the best channels of every space so that this fraction of parameters remains.
    ParamRatio(f64),
    /// Keep the best channels of every space so that this fraction of the forward pass's
    /// multiply-accumulates (at the model's input size) remains.
    FlopRatio(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    pub norm: Norm,
    pub criterion: Criterion,
    pub granularity: usize,
    pub min_channels: usize,
    pub equalization: Equalization,
    pub excluded: Vec<String>,
}

/// A set of channels removed together.
#[derive(Debug, Clone, Serialize)]
pub struct Space {
    pub channels: usize,
    /// Convolutions whose output channels are this space (they give the scores).
    pub producers: Vec<String>,
    /// Every layer touched: producers, batch norms, depthwise convs, adds, consumers.
    pub members: Vec<String>,
    pub prunable: bool,
}

/// Per-layer channels of a graph.
fn layer_channels(g: &ModelGraph) -> HashMap<String, usize> {
    g.validate().unwrap_or_default()
}

fn is_depthwise(op: &Op) -> bool {
    matches!(op, Op::Conv2d { in_channels, out_channels, groups, .. } if *groups > 1 && groups == in_channels && in_channels == out_channels)
}

struct Uf(Vec<usize>);
impl Uf {
    fn find(&mut self, x: usize) -> usize {
        let mut r = x;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut c = x;
        while self.0[c] != r {
            let n = self.0[c];
            self.0[c] = r;
            c = n;
        }
        r
    }
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[b] = a;
        }
    }
}

/// The channel spaces of a graph, and each layer's output space (by index into the list).
pub fn spaces(g: &ModelGraph, excluded: &[String]) -> Result<(Vec<Space>, HashMap<String, usize>), String> {
    let ch = layer_channels(g);
    if ch.is_empty() {
        g.validate()?;
    }
    // One node per layer output plus the input; union where channels are shared.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    ids.insert("input", 0);
    for (i, l) in g.layers.iter().enumerate() {
        ids.insert(l.name.as_str(), i + 1);
    }
    let mut uf = Uf((0..=g.layers.len()).collect());
    for (i, l) in g.layers.iter().enumerate() {
        let me = i + 1;
        let first = ids[l.inputs[0].as_str()];
        match &l.op {
            Op::Conv2d { .. } if is_depthwise(&l.op) => uf.union(first, me),
            Op::Conv2d { .. } | Op::Linear { .. } => {}
            Op::Add => {
                for x in &l.inputs {
                    uf.union(ids[x.as_str()], me);
                }
            }
            _ => uf.union(first, me),
        }
    }
    let mut root_index: BTreeMap<usize, usize> = BTreeMap::new();
    let mut out: Vec<Space> = Vec::new();
    let mut layer_space = HashMap::new();
    let mut space_of = |uf: &mut Uf, node: usize, out: &mut Vec<Space>, channels: usize| -> usize {
        let r = uf.find(node);
        *root_index.entry(r).or_insert_with(|| {
            out.push(Space { channels, producers: Vec::new(), members: Vec::new(), prunable: true });
            out.len() - 1
        })
    };
    let input_space = space_of(&mut uf, 0, &mut out, g.input.channels as usize);
    out[input_space].prunable = false;
    out[input_space].members.push("input".into());
    for (i, l) in g.layers.iter().enumerate() {
        let s = space_of(&mut uf, i + 1, &mut out, ch.get(&l.name).copied().unwrap_or(0));
        layer_space.insert(l.name.clone(), s);
        let sp = &mut out[s];
        sp.members.push(l.name.clone());
        match &l.op {
            Op::Conv2d { .. } if !is_depthwise(&l.op) => sp.producers.push(l.name.clone()),
            Op::Linear { .. } => sp.prunable = false,
            Op::Conv2d { groups, .. } if *groups > 1 && !is_depthwise(&l.op) => sp.prunable = false,
            _ => {}
        }
        if excluded.iter().any(|e| e == &l.name || l.name.starts_with(&format!("{e}."))) {
            out[s].prunable = false;
        }
        // Consumers are members of their input's space too (their input channels shrink).
        if let Some(inp) = l.inputs.first()
            && inp != "input"
            && matches!(l.op, Op::Conv2d { .. } | Op::Linear { .. })
            && !is_depthwise(&l.op)
        {
            let si = layer_space[inp.as_str()];
            out[si].members.push(format!("{}:in", l.name));
            if let Op::Conv2d { groups, .. } = &l.op
                && *groups > 1
            {
                out[si].prunable = false;
            }
        }
    }
    // The output spaces (logits; a detector's coverage and box heads) and anything without
    // a convolution producing it stay.
    for o in &g.outputs {
        if let Some(&s) = layer_space.get(o) {
            out[s].prunable = false;
        }
    }
    for sp in out.iter_mut() {
        if sp.producers.is_empty() {
            sp.prunable = false;
        }
    }
    Ok((out, layer_space))
}

/// Per output channel, the norm of a conv kernel's slice.
fn channel_norms(w: &WeightData, norm: Norm) -> Vec<f64> {
    let n = w.shape[0];
    let per = w.data.len() / n.max(1);
    (0..n)
        .map(|c| {
            let s = &w.data[c * per..(c + 1) * per];
            match norm {
                Norm::L1 => s.iter().map(|v| v.abs() as f64).sum::<f64>() / per as f64,
                Norm::L2 => (s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / per as f64).sqrt(),
                Norm::Max => s.iter().map(|v| v.abs() as f64).fold(0.0, f64::max),
            }
        })
        .collect()
}

/// Normalised, equalised scores of a space's channels.
pub fn scores(sp: &Space, weights: &HashMap<String, WeightData>, cfg: &PruneConfig) -> Result<Vec<f64>, String> {
    let mut per: Vec<Vec<f64>> = Vec::new();
    for p in &sp.producers {
        let w = weights.get(&format!("{p}.weight")).ok_or_else(|| format!("no weights for `{p}`"))?;
        let n = channel_norms(w, cfg.norm);
        let m = n.iter().cloned().fold(0.0, f64::max);
        per.push(n.iter().map(|v| if m > 0.0 { v / m } else { 0.0 }).collect());
    }
    let c = sp.channels;
    Ok((0..c)
        .map(|i| {
            let vals: Vec<f64> = per.iter().map(|v| v[i]).collect();
            match cfg.equalization {
                Equalization::Union => vals.iter().cloned().fold(0.0, f64::max),
                Equalization::Intersection => vals.iter().cloned().fold(f64::INFINITY, f64::min),
                Equalization::ArithmeticMean => vals.iter().sum::<f64>() / vals.len() as f64,
                Equalization::GeometricMean => (vals.iter().map(|v| v.max(1e-30).ln()).sum::<f64>() / vals.len() as f64).exp(),
            }
        })
        .collect())
}

/// How many channels to keep: at least the minimum, a multiple of the granularity, at most all.
fn round_keep(want: usize, total: usize, cfg: &PruneConfig) -> usize {
    let g = cfg.granularity.max(1);
    let k = want.max(cfg.min_channels).div_ceil(g) * g;
    k.min(total).max(1)
}

/// The channels to keep per prunable space (sorted indices).
pub fn select(g: &ModelGraph, weights: &HashMap<String, WeightData>, cfg: &PruneConfig) -> Result<(Vec<Space>, HashMap<String, usize>, Vec<Option<Vec<usize>>>), String> {
    let (sps, layer_space) = spaces(g, &cfg.excluded)?;
    let mut all_scores: Vec<Option<Vec<f64>>> = vec![None; sps.len()];
    for (i, sp) in sps.iter().enumerate() {
        if sp.prunable {
            all_scores[i] = Some(scores(sp, weights, cfg)?);
        }
    }
    let choose = |scores: &[f64], n_keep: usize| -> Vec<usize> {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
        let mut k: Vec<usize> = order[..n_keep].to_vec();
        k.sort();
        k
    };
    // Per prunable space, the best channels: those scoring at least `t`, rounded to the
    // granularity and minimum.
    let keep_above = |t: f64| -> Vec<Option<Vec<usize>>> {
        all_scores.iter().map(|s| s.as_ref().map(|s| choose(s, round_keep(s.iter().filter(|v| **v >= t).count(), s.len(), cfg)))).collect()
    };
    let keep = match cfg.criterion {
        Criterion::Threshold(t) => keep_above(t),
        Criterion::ParamRatio(target) | Criterion::FlopRatio(target) => {
            // Bisect one global threshold on the normalised scores until the budget is met:
            // the cheapest channels everywhere go first, as with a fixed threshold.
            let by_flops = matches!(cfg.criterion, Criterion::FlopRatio(_));
            let cost = |m: &ModelGraph| if by_flops { flops(m) as f64 } else { m.param_count() as f64 };
            let total = cost(g);
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            let mut best = None;
            for _ in 0..30 {
                let mid = (lo + hi) / 2.0;
                let k = keep_above(mid);
                let pruned = apply_to_graph(g, &sps, &layer_space, &k)?;
                let ratio = cost(&pruned) / total;
                if ratio > target {
                    lo = mid;
                } else {
                    hi = mid;
                    best = Some(k);
                }
            }
            match best {
                Some(k) => k,
                None => {
                    // Even the smallest model that granularity and min_channels allow is
                    // above the budget: say so instead of silently keeping everything.
                    let floor = cost(&apply_to_graph(g, &sps, &layer_space, &keep_above(f64::INFINITY))?) / total;
                    let what = if by_flops { "target_flops" } else { "target_params" };
                    return Err(format!(
                        "`{what} = {target}` cannot be met: with min_channels = {} and granularity = {} the smallest prunable model keeps {:.3} of the {}; raise `{what}` or lower min_channels/granularity",
                        cfg.min_channels,
                        cfg.granularity,
                        floor,
                        if by_flops { "multiply-accumulates" } else { "parameters" }
                    ));
                }
            }
        }
    };
    Ok((sps, layer_space, keep))
}

/// The smaller graph: channel counts of every touched layer.
pub fn apply_to_graph(g: &ModelGraph, sps: &[Space], layer_space: &HashMap<String, usize>, keep: &[Option<Vec<usize>>]) -> Result<ModelGraph, String> {
    let mut out = g.clone();
    let n_of = |s: usize| keep[s].as_ref().map(|k| k.len());
    for l in out.layers.iter_mut() {
        let own = layer_space[&l.name];
        let inp = l.inputs.first().filter(|i| i.as_str() != "input").map(|i| layer_space[i.as_str()]);
        match &mut l.op {
            Op::Conv2d { in_channels, out_channels, groups, .. } => {
                let dw = *groups > 1 && *groups == *in_channels && *in_channels == *out_channels;
                if let Some(n) = n_of(own) {
                    *out_channels = n;
                    if dw {
                        *in_channels = n;
                        *groups = n;
                    }
                }
                if !dw && let Some(n) = inp.and_then(n_of) {
                    *in_channels = n;
                }
            }
            Op::BatchNorm { channels, .. } => {
                if let Some(n) = n_of(own) {
                    *channels = n;
                }
            }
            Op::Linear { in_features, .. } => {
                if let Some(n) = inp.and_then(n_of) {
                    *in_features = n;
                }
            }
            _ => {}
        }
    }
    out.validate().map_err(|e| format!("internal: the pruned graph is invalid: {e}"))?;
    let _ = sps;
    Ok(out)
}

/// Keep `idx` along axis `axis` of a row-major tensor.
fn take_axis(w: &WeightData, axis: usize, idx: &[usize]) -> WeightData {
    let shape = &w.shape;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis];
    let mut data = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &i in idx {
            let start = (o * n + i) * inner;
            data.extend_from_slice(&w.data[start..start + inner]);
        }
    }
    let mut s = shape.clone();
    s[axis] = idx.len();
    WeightData { shape: s, data }
}

/// The pruned weights (torchvision layout: linear `[out, in]`).
pub fn apply_to_weights(g: &ModelGraph, layer_space: &HashMap<String, usize>, keep: &[Option<Vec<usize>>], w: &HashMap<String, WeightData>) -> Result<HashMap<String, WeightData>, String> {
    let mut out = w.clone();
    let get = |name: &str| w.get(name).ok_or_else(|| format!("no weight `{name}`"));
    for l in &g.layers {
        let own = keep[layer_space[&l.name]].as_ref();
        let inp = l.inputs.first().filter(|i| i.as_str() != "input").and_then(|i| keep[layer_space[i.as_str()]].as_ref());
        match &l.op {
            Op::Conv2d { bias, .. } => {
                let name = format!("{}.weight", l.name);
                let mut t = get(&name)?.clone();
                if let Some(k) = own {
                    t = take_axis(&t, 0, k);
                    if *bias {
                        let b = format!("{}.bias", l.name);
                        out.insert(b.clone(), take_axis(get(&b)?, 0, k));
                    }
                }
                if !is_depthwise(&l.op)
                    && let Some(k) = inp
                {
                    t = take_axis(&t, 1, k);
                }
                out.insert(name, t);
            }
            Op::BatchNorm { .. } => {
                if let Some(k) = own {
                    for s in ["weight", "bias", "running_mean", "running_var"] {
                        let n = format!("{}.{s}", l.name);
                        out.insert(n.clone(), take_axis(get(&n)?, 0, k));
                    }
                }
            }
            Op::Linear { .. } => {
                if let Some(k) = inp {
                    let n = format!("{}.weight", l.name);
                    out.insert(n.clone(), take_axis(get(&n)?, 1, k));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The unpruned weights with the removed channels zeroed (kernels, biases and batch-norm
/// scale and shift): the outputs of the model must not change when they are then removed.
pub fn zero_removed(g: &ModelGraph, layer_space: &HashMap<String, usize>, keep: &[Option<Vec<usize>>], w: &HashMap<String, WeightData>) -> HashMap<String, WeightData> {
    let mut out = w.clone();
    for l in &g.layers {
        let Some(k) = keep[layer_space[&l.name]].as_ref() else { continue };
        let names: Vec<String> = match &l.op {
            Op::Conv2d { bias, .. } => {
                let mut v = vec![format!("{}.weight", l.name)];
                if *bias {
                    v.push(format!("{}.bias", l.name));
                }
                v
            }
            Op::BatchNorm { .. } => vec![format!("{}.weight", l.name), format!("{}.bias", l.name)],
            _ => vec![],
        };
        for n in names {
            if let Some(t) = out.get_mut(&n) {
                let c = t.shape[0];
                let per = t.data.len() / c.max(1);
                for ch in 0..c {
                    if !k.contains(&ch) {
                        t.data[ch * per..(ch + 1) * per].iter_mut().for_each(|v| *v = 0.0);
                    }
                }
            }
        }
    }
    out
}

/// Multiply-accumulates of one image's forward pass.
pub fn flops(g: &ModelGraph) -> u64 {
    let ch = layer_channels(g);
    let mut hw: HashMap<&str, (usize, usize)> = HashMap::new();
    hw.insert("input", (g.input.height as usize, g.input.width as usize));
    let mut total = 0u64;
    for l in &g.layers {
        let (h, w) = hw[l.inputs[0].as_str()];
        let out = match &l.op {
            Op::Conv2d { in_channels, out_channels, kernel, stride, padding, groups, .. } => {
                let ho = (h + padding[0] + padding[2] - kernel[0]) / stride[0] + 1;
                let wo = (w + padding[1] + padding[3] - kernel[1]) / stride[1] + 1;
                total += (ho * wo * out_channels * (in_channels / groups) * kernel[0] * kernel[1]) as u64;
                (ho, wo)
            }
            Op::MaxPool { kernel, stride, padding } => ((h + 2 * padding[0] - kernel[0]) / stride[0] + 1, (w + 2 * padding[1] - kernel[1]) / stride[1] + 1),
            Op::Linear { in_features, out_features, .. } => {
                total += (in_features * out_features) as u64;
                (1, 1)
            }
            Op::GlobalAvgPool => (1, 1),
            _ => (h, w),
        };
        let _ = ch.get(&l.name);
        hw.insert(l.name.as_str(), out);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tensor};

    use crate::model::testutil::{forward, graphs, random_weights};

    type B = NdArray<f32>;

    /// Zeroing the channels chosen for removal (kernels, biases, batch-norm scale and shift)
    /// and removing them give the same outputs.
    #[test]
    fn removing_zeroed_channels_changes_nothing() {
        let device = Default::default();
        for g in graphs() {
            let w = random_weights(&g, 7);
            let cfg = PruneConfig { norm: Norm::L2, criterion: Criterion::Threshold(0.75), granularity: 2, min_channels: 2, equalization: Equalization::Union, excluded: vec![] };
            let (sps, ls, keep) = select(&g, &w, &cfg).unwrap();
            let pg = apply_to_graph(&g, &sps, &ls, &keep).unwrap();
            assert!(pg.param_count() < g.param_count() * 9 / 10, "{}: {} -> {}", g.arch, g.param_count(), pg.param_count());
            let pw = apply_to_weights(&g, &ls, &keep, &w).unwrap();
            let zw = zero_removed(&g, &ls, &keep, &w);
            let x: Tensor<B, 4> = Tensor::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
            let a = forward(&g, &zw, x.clone());
            let b = forward(&pg, &pw, x.clone());
            let full = forward(&g, &w, x);
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let err = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / scale;
            assert!(err <= 1e-5, "{}: relative difference {err}", g.arch);
            assert!(a != full, "{}: zeroing must matter (the test would prove nothing)", g.arch);
            // Residual adds tie their inputs: one decision per space.
            for sp in sps.iter().filter(|s| s.members.iter().any(|m| m.ends_with("add"))) {
                assert!(sp.producers.len() >= 2 || !sp.prunable, "{}: {sp:?}", g.arch);
            }
        }
    }

    /// A DetectNet_v2 detector: zeroing the removed channels and removing them give the same
    /// coverage and boxes; the heads keep their C and 4C channels, and their input channels
    /// follow the pruned backbone.
    #[test]
    fn a_detector_prunes_exactly_and_keeps_its_heads() {
        let device = Default::default();
        for backbone in ["resnet18", "mobilenet_v2"] {
            let g = crate::model::builders::detectnet_v2(backbone, 0.5, crate::data::image_io::InputSpec::plain(64, 48, 3), vec!["a".into(), "b".into(), "c".into()]).unwrap();
            let w = random_weights(&g, 11);
            let cfg = PruneConfig { norm: Norm::L2, criterion: Criterion::Threshold(0.75), granularity: 2, min_channels: 2, equalization: Equalization::Union, excluded: vec![] };
            let (sps, ls, keep) = select(&g, &w, &cfg).unwrap();
            let pg = apply_to_graph(&g, &sps, &ls, &keep).unwrap();
            pg.validate().unwrap();
            assert!(pg.param_count() < g.param_count() * 9 / 10, "{backbone}: {} -> {}", g.param_count(), pg.param_count());
            let pw = apply_to_weights(&g, &ls, &keep, &w).unwrap();
            let zw = zero_removed(&g, &ls, &keep, &w);
            let head_in = |g: &ModelGraph, name: &str| match g.layers.iter().find(|l| l.name == name).unwrap().op {
                Op::Conv2d { in_channels, out_channels, .. } => (in_channels, out_channels),
                _ => unreachable!(),
            };
            let (ci, co) = head_in(&pg, "output_cov");
            let (bi, bo) = head_in(&pg, "output_bbox");
            assert_eq!((co, bo), (3, 12), "{backbone}: heads are never pruned");
            assert!(ci == bi && ci < head_in(&g, "output_cov").0, "{backbone}: the heads' inputs follow the backbone ({ci} of {})", head_in(&g, "output_cov").0);
            let x: Tensor<B, 4> = Tensor::random([2, 3, 48, 64], Distribution::Normal(0.0, 1.0), &device);
            let run = |g: &ModelGraph, w: &HashMap<String, WeightData>| crate::model::artifact::build::<B>(g, w, &device).unwrap().forward_outputs(x.clone()).into_iter().map(|t| t.into_data().to_vec::<f32>().unwrap()).collect::<Vec<_>>();
            let (a, b, full) = (run(&g, &zw), run(&pg, &pw), run(&g, &w));
            for k in 0..2 {
                let scale = a[k].iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let err = a[k].iter().zip(&b[k]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / scale;
                assert!(err <= 1e-5, "{backbone} output {k}: relative difference {err}");
                assert!(a[k] != full[k], "{backbone}: zeroing must matter");
            }
        }
    }

    #[test]
    fn heads_inputs_and_excluded_layers_are_never_pruned() {
        let g = &graphs()[0];
        let w = random_weights(g, 3);
        let cfg = PruneConfig { norm: Norm::L1, criterion: Criterion::Threshold(1.0), granularity: 1, min_channels: 1, equalization: Equalization::ArithmeticMean, excluded: vec!["layer1".into()] };
        let (sps, ls, keep) = select(g, &w, &cfg).unwrap();
        let pg = apply_to_graph(g, &sps, &ls, &keep).unwrap();
        let fc = pg.layers.iter().find(|l| l.name == "fc").unwrap();
        assert!(matches!(fc.op, Op::Linear { out_features: 7, .. }));
        let conv1 = pg.layers.iter().find(|l| l.name == "conv1").unwrap();
        assert!(matches!(conv1.op, Op::Conv2d { in_channels: 3, .. }));
        // layer1's residual space includes conv1's output (the stem feeds the first add).
        let l1 = pg.layers.iter().find(|l| l.name == "layer1.0.conv2").unwrap();
        assert!(matches!(l1.op, Op::Conv2d { out_channels: 16, .. }), "{:?}", l1.op);
        // The rest is pruned to the minimum.
        let l4 = pg.layers.iter().find(|l| l.name == "layer4.0.conv1").unwrap();
        assert!(matches!(l4.op, Op::Conv2d { out_channels: 1, .. }), "{:?}", l4.op);
    }

    #[test]
    fn a_parameter_budget_is_met() {
        let g = &graphs()[2];
        let w = random_weights(g, 5);
        let cfg = PruneConfig { norm: Norm::L2, criterion: Criterion::ParamRatio(0.5), granularity: 8, min_channels: 8, equalization: Equalization::GeometricMean, excluded: vec![] };
        let (sps, ls, keep) = select(g, &w, &cfg).unwrap();
        let pg = apply_to_graph(g, &sps, &ls, &keep).unwrap();
        let r = pg.param_count() as f64 / g.param_count() as f64;
        assert!(r <= 0.5 && r > 0.3, "{r}");
        assert!(flops(&pg) < flops(g));
    }

    #[test]
    fn a_flop_budget_is_met_and_an_impossible_one_is_refused() {
        for g in &graphs()[..3] {
            let w = random_weights(g, 6);
            let mut cfg = PruneConfig { norm: Norm::L1, criterion: Criterion::FlopRatio(0.45), granularity: 8, min_channels: 8, equalization: Equalization::Union, excluded: vec![] };
            let (sps, ls, keep) = select(g, &w, &cfg).unwrap();
            let pg = apply_to_graph(g, &sps, &ls, &keep).unwrap();
            let r = flops(&pg) as f64 / flops(g) as f64;
            assert!(r <= 0.45 && r > 0.25, "{}: {r}", g.arch);
            cfg.criterion = Criterion::FlopRatio(0.001);
            let e = select(g, &w, &cfg).unwrap_err();
            assert!(e.contains("target_flops = 0.001") && e.contains("min_channels = 8"), "{e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]
        /// Any threshold, granularity and minimum: a valid graph whose weights load and run.
        #[test]
        fn any_threshold_gives_a_valid_model(t in 0.0f64..1.0, gran in 1usize..9, minc in 1usize..20, which in 0usize..4, eq in 0usize..4) {
            let g = &graphs()[which];
            let w = random_weights(g, 11);
            let equalization = [Equalization::Union, Equalization::Intersection, Equalization::ArithmeticMean, Equalization::GeometricMean][eq];
            let cfg = PruneConfig { norm: Norm::Max, criterion: Criterion::Threshold(t), granularity: gran, min_channels: minc, equalization, excluded: vec![] };
            let (sps, ls, keep) = select(g, &w, &cfg).unwrap();
            let pg = apply_to_graph(g, &sps, &ls, &keep).unwrap();
            let pw = apply_to_weights(g, &ls, &keep, &w).unwrap();
            for (k, s) in pg.weights() {
                proptest::prop_assert_eq!(&pw[&k].shape, &s, "{}", k);
            }
            let x: Tensor<B, 4> = Tensor::ones([1, 3, 32, 32], &Default::default());
            let y = forward(&pg, &pw, x);
            proptest::prop_assert_eq!(y.len(), 7);
            proptest::prop_assert!(y.iter().all(|v| v.is_finite()));
            // ... and exports: tract runs the ONNX model and agrees with the forward pass.
            let m = crate::model::onnx::export(&pg, &pw, &Default::default(), None).unwrap();
            let got = crate::model::onnx_run::OnnxModel::from_bytes(&prost::Message::encode_to_vec(&m), "pruned").unwrap().run(&vec![1.0; 3 * 32 * 32], 1).unwrap();
            let d = crate::stages::export::max_rel_diff(&got, &y);
            proptest::prop_assert!(d < 1e-4, "export differs by {}", d);
        }
    }
}
