//! Post-training INT8 calibration: activation ranges of every ONNX tensor of a model, from
//! a forward pass over calibration batches, turned into thresholds by `minmax`,
//! `percentile` or `entropy` (TensorRT's EntropyCalibration2: the clipping threshold whose
//! 128-level quantized histogram has the least KL divergence from the 2048-bin reference).
//!
//! Two passes: the first finds each tensor's range, the second fills a histogram of |x|
//! over `[0, max |x|]`. The CPU code here is the reference for any GPU histogram kernel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::onnx::{ActType, QParams, QuantSpec};

pub const BINS: usize = 2048;
/// Quantization levels of one sign of int8 (what EntropyCalibration2 merges into).
pub const LEVELS: usize = 128;
/// The largest fraction of a tensor's values the entropy method may clip.
pub const MAX_CLIPPED: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    MinMax,
    Percentile { percentile: f64 },
    Entropy,
}

/// Range and |x| histogram of one tensor.
#[derive(Debug, Clone)]
pub struct TensorStats {
    pub min: f32,
    pub max: f32,
    pub hist: Vec<u64>,
    pub count: u64,
}

impl TensorStats {
    pub fn new() -> Self {
        TensorStats { min: f32::INFINITY, max: f32::NEG_INFINITY, hist: vec![0; BINS], count: 0 }
    }

    pub fn amax(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    /// Pass 1: the range.
    pub fn observe_range(&mut self, xs: &[f32]) {
        for &x in xs {
            if x.is_finite() {
                self.min = self.min.min(x);
                self.max = self.max.max(x);
            }
        }
    }

    /// Pass 2: the histogram of |x| over `[0, amax]` (values past it land in the last bin).
    pub fn observe_hist(&mut self, xs: &[f32]) {
        let amax = self.amax();
        if !(amax > 0.0) {
            self.count += xs.len() as u64;
            self.hist[0] += xs.len() as u64;
            return;
        }
        let k = BINS as f32 / amax;
        for &x in xs {
            if x.is_finite() {
                let b = ((x.abs() * k) as usize).min(BINS - 1);
                self.hist[b] += 1;
                self.count += 1;
            }
        }
    }

    fn bin_width(&self) -> f64 {
        self.amax() as f64 / BINS as f64
    }

    /// The clipping threshold on |x| that `method` picks.
    pub fn threshold(&self, method: Method) -> f32 {
        let amax = self.amax();
        if !(amax > 0.0) || self.count == 0 {
            return amax.max(0.0);
        }
        match method {
            Method::MinMax => amax,
            Method::Percentile { percentile } => {
                let target = (percentile / 100.0 * self.count as f64).ceil() as u64;
                let mut acc = 0u64;
                for (i, h) in self.hist.iter().enumerate() {
                    acc += h;
                    if acc >= target {
                        return (((i + 1) as f64 * self.bin_width()) as f32).min(amax);
                    }
                }
                amax
            }
            Method::Entropy => {
                let i = entropy_bins(&self.hist);
                ((i as f64 * self.bin_width()) as f32).min(amax)
            }
        }
    }
}

impl Default for TensorStats {
    fn default() -> Self {
        Self::new()
    }
}

/// EntropyCalibration2's choice: the number of histogram bins `i` (128..=2048) to keep,
/// such that the reference distribution (bins `0..i`, with everything beyond folded into
/// bin `i-1`) and its 128-level quantization have the least KL divergence.
///
/// The first bin is set to its neighbour's count first (as NVIDIA's reference does): after a
/// ReLU it holds every exact zero, and that spike would otherwise favour the narrowest range.
pub fn entropy_bins(hist: &[u64]) -> usize {
    let n = hist.len();
    if n <= LEVELS {
        return n;
    }
    let mut owned = hist.to_vec();
    owned[0] = owned[1];
    let hist = &owned[..];
    let total_beyond: Vec<u64> = {
        // suffix sums: beyond[i] = sum(hist[i..])
        let mut v = vec![0u64; n + 1];
        for i in (0..n).rev() {
            v[i] = v[i + 1] + hist[i];
        }
        v
    };
    let mut best = (f64::INFINITY, n);
    let mut p = vec![0f64; n];
    let mut q = vec![0f64; n];
    let total = total_beyond[0] as f64;
    for i in LEVELS..=n {
        // A threshold that clips more than MAX_CLIPPED of the values is a degenerate minimum
        // (with no mass near zero, P collapses into its last bin, which Q copies exactly).
        if total_beyond[i] as f64 > MAX_CLIPPED * total {
            continue;
        }
        // Reference: the first i bins, outliers clipped into the last kept bin.
        for j in 0..i {
            p[j] = hist[j] as f64;
        }
        p[i - 1] += total_beyond[i] as f64;
        // Candidate: the same bins merged into LEVELS groups, each group's mass spread evenly
        // over its non-empty bins.
        let merged = i as f64 / LEVELS as f64;
        for k in 0..LEVELS {
            let start = (k as f64 * merged).floor() as usize;
            let end = if k == LEVELS - 1 { i } else { ((k + 1) as f64 * merged).floor() as usize };
            let (mut mass, mut nonzero) = (0f64, 0usize);
            for j in start..end {
                mass += hist[j] as f64;
                nonzero += (hist[j] != 0) as usize;
            }
            for j in start..end {
                q[j] = if hist[j] != 0 { mass / nonzero as f64 } else { 0.0 };
            }
        }
        let kl = kl_divergence(&p[..i], &q[..i]);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1
}

/// KL(P || Q) of two unnormalised histograms. A bin where P has mass and Q none makes it
/// infinite (as scipy's `entropy`, which TensorRT's reference implementation in
/// pytorch-quantization uses): a threshold that folds outliers into a bin the candidate
/// cannot represent is never chosen.
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp <= 0.0 || sq <= 0.0 {
        return f64::INFINITY;
    }
    let mut kl = 0.0;
    for (pi, qi) in p.iter().zip(q) {
        if *pi <= 0.0 {
            continue;
        }
        if *qi <= 0.0 {
            return f64::INFINITY;
        }
        let (pn, qn) = (pi / sp, qi / sq);
        kl += pn * (pn / qn).ln();
    }
    kl
}

/// Calibrated range of one tensor, as recorded in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TensorRange {
    pub min: f32,
    pub max: f32,
    /// The clipping threshold on |x| chosen by the method.
    pub threshold: f32,
}

/// Thresholds of every tensor under `method`.
pub fn ranges(stats: &BTreeMap<String, TensorStats>, method: Method) -> BTreeMap<String, TensorRange> {
    use rayon::prelude::*;
    stats.par_iter().map(|(k, s)| (k.clone(), TensorRange { min: s.min.min(0.0).max(f32::MIN), max: s.max.max(0.0), threshold: s.threshold(method) })).collect()
}

/// The model input's exact range, from the preprocessing (pixels 0..255, mean/std per
/// channel): a known bound needs no statistics, and entropy calibration of raw pixels
/// (clumps of background, no mass near zero) is the textbook case where it misleads.
pub fn input_range(spec: &crate::data::image_io::InputSpec) -> TensorRange {
    let lo = spec.mean.iter().zip(&spec.std).map(|(m, s)| -m / s).fold(f32::INFINITY, f32::min);
    let hi = spec.mean.iter().zip(&spec.std).map(|(m, s)| (1.0 - m) / s).fold(f32::NEG_INFINITY, f32::max);
    TensorRange { min: lo.min(0.0), max: hi.max(0.0), threshold: lo.abs().max(hi.abs()) }
}

/// Quantization parameters of one activation tensor.
pub fn qparams(r: &TensorRange, t: ActType) -> QParams {
    match t {
        ActType::Int8 => QParams { scale: nonzero(r.threshold / 127.0), zero_point: 0 },
        ActType::Uint8 => {
            let lo = r.min.max(-r.threshold).min(0.0);
            let hi = r.max.min(r.threshold).max(0.0);
            let scale = nonzero((hi - lo) / 255.0);
            let zp = (-lo / scale).round().clamp(0.0, 255.0) as i32;
            QParams { scale, zero_point: zp }
        }
    }
}

fn nonzero(s: f32) -> f32 {
    if s > 0.0 && s.is_finite() { s } else { 1.0 }
}

/// The QDQ model's activation parameters: the tensors `quantized` (from the lowering), with
/// a pooled tensor sharing its flattened twin's parameters (Flatten moves no data).
pub fn quant_spec(ranges: &BTreeMap<String, TensorRange>, quantized: &[String], t: ActType) -> Result<QuantSpec, String> {
    let mut activations = BTreeMap::new();
    for name in quantized {
        let r = ranges.get(name).or_else(|| name.strip_suffix(".pool").and_then(|n| ranges.get(n))).ok_or_else(|| format!("internal: no calibration range for tensor `{name}`"))?;
        activations.insert(name.clone(), qparams(r, t));
    }
    // Flatten after a global pool: give both sides the same parameters.
    for name in quantized {
        if let Some(base) = name.strip_suffix(".pool")
            && let Some(p) = activations.get(base).copied()
        {
            activations.insert(name.clone(), p);
        }
    }
    Ok(QuantSpec { act_type: t, activations })
}

/// TensorRT's calibration cache: `TRT-<version>-EntropyCalibration2`, then one
/// `tensor: <hex of the float32 scale>` line per tensor, scale = threshold / 127.
pub fn trt_cache(ranges: &BTreeMap<String, TensorRange>, trt_version: &str) -> String {
    let mut s = format!("TRT-{trt_version}-EntropyCalibration2\n");
    for (name, r) in ranges {
        let scale = nonzero(r.threshold / 127.0);
        s.push_str(&format!("{name}: {:08x}\n", scale.to_bits()));
    }
    s
}

/// Parse a calibration cache back: (header, tensor -> scale).
pub fn parse_trt_cache(text: &str) -> Result<(String, BTreeMap<String, f32>), String> {
    let mut lines = text.lines();
    let header = lines.next().ok_or("empty calibration cache")?.to_string();
    if !header.starts_with("TRT-") {
        return Err(format!("first line `{header}` is not `TRT-<version>-<calibrator>`"));
    }
    let mut m = BTreeMap::new();
    for (i, l) in lines.enumerate() {
        let (name, hex) = l.rsplit_once(": ").ok_or_else(|| format!("line {}: expected `tensor: hex`", i + 2))?;
        let bits = u32::from_str_radix(hex.trim(), 16).map_err(|e| format!("line {}: `{hex}` is not hex: {e}", i + 2))?;
        m.insert(name.to_string(), f32::from_bits(bits));
    }
    Ok((header, m))
}

/// [`collect`] through the model's ONNX export (`low`'s lowering, batch norms folded) in
/// onnxruntime, with every observed tensor exposed as an output: the same statistics (up to
/// float rounding: the parity test below) at onnxruntime's speed.
pub fn collect_onnx(g: &super::graph::ModelGraph, weights: &std::collections::HashMap<String, super::net::WeightData>, low: &super::onnx::Lowering, batches: &[(Vec<f32>, usize)]) -> Result<BTreeMap<String, TensorStats>, String> {
    if batches.iter().all(|(_, n)| *n == 0) {
        return Err("the calibration set is empty".into());
    }
    let observed = low.observed_tensors(g);
    let mut stats: BTreeMap<String, TensorStats> = BTreeMap::new();
    for n in observed.iter().flat_map(|(_, n)| n) {
        stats.insert(n.clone(), TensorStats::new());
    }
    let inner: Vec<String> = observed.iter().filter(|(l, _)| l.is_some()).flat_map(|(_, n)| n.clone()).collect();
    let proto = super::onnx::expose(super::onnx::export(g, weights, &super::onnx::ExportOptions::default(), None)?, &inner);
    let m = super::ort_rt::OrtModel::new(&prost::Message::encode_to_vec(&proto))?;
    let s = &g.input;
    for pass in 0..2 {
        for (x, n) in batches {
            if *n == 0 {
                continue;
            }
            let mut feed = |name: &str, d: &[f32]| {
                if let Some(st) = stats.get_mut(name) {
                    if pass == 0 { st.observe_range(d) } else { st.observe_hist(d) }
                }
            };
            feed(&low.input, x);
            let outs = m.run(x, &[*n, s.channels as usize, s.height as usize, s.width as usize])?;
            for (name, d) in m.outputs.iter().zip(&outs) {
                feed(name, d);
            }
        }
    }
    Ok(stats)
}

/// Collect the statistics of every tensor of the exported model (`low`'s names) over
/// `batches` of normalised NCHW images (values, count), with the Burn forward pass.
pub fn collect<B: super::conv::ConvBackend>(g: &super::graph::ModelGraph, net: &super::net::GraphNet<B>, low: &super::onnx::Lowering, batches: &[(Vec<f32>, usize)], device: &B::Device) -> Result<BTreeMap<String, TensorStats>, String> {
    use burn::tensor::{Tensor, TensorData};
    if batches.iter().all(|(_, n)| *n == 0) {
        return Err("the calibration set is empty".into());
    }
    let observed = low.observed_tensors(g);
    let mut by_layer: Vec<Vec<String>> = vec![Vec::new(); g.layers.len()];
    let mut input_names = Vec::new();
    let mut stats: BTreeMap<String, TensorStats> = BTreeMap::new();
    for (layer, names) in observed {
        for n in &names {
            stats.insert(n.clone(), TensorStats::new());
        }
        match layer {
            Some(i) => by_layer[i] = names,
            None => input_names = names,
        }
    }
    let s = &g.input;
    for pass in 0..2 {
        for (x, n) in batches {
            if *n == 0 {
                continue;
            }
            let mut feed = |names: &[String], d: &[f32]| {
                for name in names {
                    let st = stats.get_mut(name).expect("registered above");
                    if pass == 0 { st.observe_range(d) } else { st.observe_hist(d) }
                }
            };
            feed(&input_names, x);
            let t: Tensor<B, 4> = Tensor::from_data(TensorData::new(x.clone(), [*n, s.channels as usize, s.height as usize, s.width as usize]), device);
            net.forward_observe(t, &mut |i, d| feed(&by_layer[i], d));
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(xs: &[f32]) -> TensorStats {
        let mut s = TensorStats::new();
        s.observe_range(xs);
        s.observe_hist(xs);
        s
    }

    /// A deterministic standard normal sample (Box-Muller over a fixed LCG).
    fn normal(n: usize) -> Vec<f32> {
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut u = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n).map(|_| ((-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos()) as f32).collect()
    }

    #[test]
    fn minmax_is_the_largest_magnitude() {
        let s = stats_of(&[-3.0, 1.0, 2.5]);
        assert_eq!(s.threshold(Method::MinMax), 3.0);
    }

    #[test]
    fn percentile_of_a_uniform_ramp() {
        let xs: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        let t = stats_of(&xs).threshold(Method::Percentile { percentile: 90.0 });
        assert!((t - 0.9).abs() < 2e-3, "{t}");
        let t = stats_of(&xs).threshold(Method::Percentile { percentile: 100.0 });
        assert!((t - 1.0).abs() < 1e-3, "{t}");
    }

    #[test]
    fn entropy_clips_outliers_but_keeps_the_bulk() {
        let mut xs = normal(200_000);
        xs.extend([60.0, -55.0, 48.0]); // a few far outliers
        let s = stats_of(&xs);
        let t = s.threshold(Method::Entropy);
        assert!(s.amax() >= 60.0);
        // The bulk of a unit Gaussian sits within ±4; the outliers must not set the range.
        assert!(t > 2.0 && t < 12.0, "entropy threshold {t}");
        // Without outliers the threshold stays near the tail.
        let t2 = stats_of(&normal(200_000)).threshold(Method::Entropy);
        assert!(t2 > 2.0 && t2 <= 5.5, "{t2}");
    }

    #[test]
    fn entropy_never_clips_a_distribution_far_from_zero_to_nothing() {
        // Two clumps (dark and bright pixels): no mass near zero.
        let xs: Vec<f32> = (0..40_000).map(|i| if i % 2 == 0 { -1.7 - (i % 7) as f32 * 0.01 } else { 1.5 + (i % 13) as f32 * 0.05 }).collect();
        let s = stats_of(&xs);
        let t = s.threshold(Method::Entropy);
        let clipped = xs.iter().filter(|x| x.abs() > t).count() as f64 / xs.len() as f64;
        assert!(clipped <= MAX_CLIPPED + 1e-3, "threshold {t} clips {clipped}");
    }

    #[test]
    fn entropy_of_a_uniform_distribution_keeps_everything() {
        let xs: Vec<f32> = (0..50_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        let s = stats_of(&xs);
        let t = s.threshold(Method::Entropy);
        assert!(t > 0.95 * s.amax(), "{t} vs {}", s.amax());
    }

    #[test]
    fn uint8_parameters_cover_relu_outputs_from_zero() {
        let q = qparams(&TensorRange { min: 0.0, max: 6.0, threshold: 6.0 }, ActType::Uint8);
        assert_eq!(q.zero_point, 0);
        assert!((q.scale - 6.0 / 255.0).abs() < 1e-7);
        let q = qparams(&TensorRange { min: -1.0, max: 3.0, threshold: 3.0 }, ActType::Uint8);
        assert_eq!(q.zero_point, 64);
        let q = qparams(&TensorRange { min: -1.0, max: 3.0, threshold: 2.54 }, ActType::Int8);
        assert!((q.scale - 0.02).abs() < 1e-7 && q.zero_point == 0);
    }

    #[test]
    fn calibration_cache_has_trt_format_and_known_scale() {
        let mut r = BTreeMap::new();
        r.insert("input".to_string(), TensorRange { min: -1.27, max: 1.0, threshold: 1.27 });
        r.insert("features.0.1".to_string(), TensorRange { min: 0.0, max: 127.0, threshold: 127.0 });
        let text = trt_cache(&r, "8601");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("TRT-8601-EntropyCalibration2"));
        // 1.27 / 127 = 0.01 = 0x3c23d70a; 127 / 127 = 1.0 = 0x3f800000.
        assert!(text.contains("input: 3c23d70a\n"), "{text}");
        assert!(text.contains("features.0.1: 3f800000\n"), "{text}");
        let (h, m) = parse_trt_cache(&text).unwrap();
        assert_eq!(h, "TRT-8601-EntropyCalibration2");
        assert!((m["input"] - 0.01).abs() < 1e-9);
    }
}
