//! Optimizers and learning-rate schedules for the layer graph, written over flat tensors so
//! that their state is keyed by weight name: a checkpoint stores it beside the weights and a
//! resumed run continues exactly where the killed one stopped.
//!
//! Semantics follow PyTorch's `torch.optim` (SGD with dampening 0, Adam, AdamW). Weight decay
//! and L1 act on conv and linear kernels only, as TAO's regularisers do; batch-norm
//! parameters and biases are never decayed.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::net::WeightData;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OptimKind {
    Sgd { momentum: f64, nesterov: bool },
    Adam { beta1: f64, beta2: f64, eps: f64 },
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimKind,
    /// L2 penalty (SGD, Adam) or decoupled decay (AdamW), on kernels.
    pub weight_decay: f64,
    /// L1 penalty on kernels: drives unimportant channels towards zero before pruning.
    pub l1: f64,
}

pub struct Optimizer<B: Backend> {
    pub cfg: OptimConfig,
    /// Steps taken (Adam's bias correction).
    pub steps: u64,
    state: HashMap<String, Vec<Tensor<B, 1>>>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(cfg: OptimConfig) -> Self {
        Optimizer { cfg, steps: 0, state: HashMap::new() }
    }

    /// Call once per batch before the parameter updates.
    pub fn begin_step(&mut self) {
        self.steps += 1;
    }

    /// One parameter's update.
    pub fn step(&mut self, name: &str, kernel: bool, w: Tensor<B, 1>, mut g: Tensor<B, 1>, lr: f64) -> Tensor<B, 1> {
        let wd = if kernel { self.cfg.weight_decay } else { 0.0 };
        if kernel && self.cfg.l1 > 0.0 {
            g = g + w.clone().sign() * self.cfg.l1;
        }
        match self.cfg.kind.clone() {
            OptimKind::Sgd { momentum, nesterov } => {
                if wd > 0.0 {
                    g = g + w.clone() * wd;
                }
                if momentum > 0.0 {
                    let buf = match self.state.remove(name) {
                        Some(mut s) => s.remove(0) * momentum + g.clone(),
                        None => g.clone(),
                    };
                    g = if nesterov { g + buf.clone() * momentum } else { buf.clone() };
                    self.state.insert(name.to_string(), vec![buf]);
                }
                w - g * lr
            }
            OptimKind::Adam { beta1, beta2, eps } | OptimKind::AdamW { beta1, beta2, eps } => {
                let decoupled = matches!(self.cfg.kind, OptimKind::AdamW { .. });
                let mut w = w;
                if wd > 0.0 {
                    if decoupled {
                        w = w * (1.0 - lr * wd);
                    } else {
                        g = g + w.clone() * wd;
                    }
                }
                let (m, v) = match self.state.remove(name) {
                    Some(mut s) => {
                        let v = s.pop().expect("two moments");
                        let m = s.pop().expect("two moments");
                        (m * beta1 + g.clone() * (1.0 - beta1), v * beta2 + g.clone().powi_scalar(2) * (1.0 - beta2))
                    }
                    None => (g.clone() * (1.0 - beta1), g.clone().powi_scalar(2) * (1.0 - beta2)),
                };
                let t = self.steps.max(1) as i32;
                let c1 = 1.0 - beta1.powi(t);
                let c2 = 1.0 - beta2.powi(t);
                let denom = (v.clone() / c2).sqrt() + eps;
                let upd = (m.clone() / c1) / denom;
                self.state.insert(name.to_string(), vec![m, v]);
                w - upd * lr
            }
        }
    }

    /// The state as named flat tensors (`name#0`, `name#1`), for a checkpoint.
    pub fn export_state(&self) -> Result<Vec<(String, WeightData)>, String> {
        let mut out = Vec::new();
        let sorted: BTreeMap<_, _> = self.state.iter().collect();
        for (name, ts) in sorted {
            for (i, t) in ts.iter().enumerate() {
                let data = t.clone().into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
                out.push((format!("{name}#{i}"), WeightData { shape: vec![data.len()], data }));
            }
        }
        Ok(out)
    }

    /// Restore what `export_state` wrote.
    pub fn import_state(&mut self, steps: u64, w: &HashMap<String, WeightData>, device: &B::Device) -> Result<(), String> {
        self.steps = steps;
        self.state.clear();
        let mut names: Vec<&String> = w.keys().collect();
        names.sort();
        for k in names {
            let (name, idx) = k.rsplit_once('#').ok_or_else(|| format!("optimizer state `{k}` is not `name#index`"))?;
            let idx: usize = idx.parse().map_err(|_| format!("optimizer state `{k}` is not `name#index`"))?;
            let d = &w[k];
            let t = Tensor::<B, 1>::from_data(TensorData::new(d.data.clone(), [d.data.len()]), device);
            let e = self.state.entry(name.to_string()).or_default();
            if e.len() != idx {
                return Err(format!("optimizer state `{k}` out of order"));
            }
            e.push(t);
        }
        Ok(())
    }
}

/// Learning rate over training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `step_epochs` epochs.
    Step { step_epochs: usize, gamma: f64 },
    /// Cosine from the base rate to `min_lr` after a linear warm-up.
    Cosine { min_lr: f64, warmup_epochs: f64 },
    /// TAO's soft-start annealing: exponential rise from `min_lr` to the base rate over the
    /// first `soft_start` fraction of training, flat until `annealing_start`, then an
    /// exponential fall back to `min_lr` at the end.
    SoftStartAnnealing { min_lr: f64, soft_start: f64, annealing_start: f64 },
}

impl Schedule {
    /// The rate at `progress` (0..1 over all iterations) during `epoch` (0-based), with
    /// `epochs` epochs in all.
    pub fn lr(&self, base: f64, progress: f64, epoch: usize, epochs: usize) -> f64 {
        let p = progress.clamp(0.0, 1.0);
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_epochs, gamma } => base * gamma.powi((epoch / (*step_epochs).max(1)) as i32),
            Schedule::Cosine { min_lr, warmup_epochs } => {
                let warm = (warmup_epochs / epochs.max(1) as f64).clamp(0.0, 1.0);
                if p < warm {
                    base * p / warm
                } else {
                    let q = if warm < 1.0 { (p - warm) / (1.0 - warm) } else { 1.0 };
                    min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * q).cos())
                }
            }
            Schedule::SoftStartAnnealing { min_lr, soft_start, annealing_start } => {
                let ratio = (min_lr / base).max(1e-12).ln();
                if p < *soft_start {
                    base * (ratio * (1.0 - p / soft_start)).exp()
                } else if p < *annealing_start {
                    base
                } else {
                    let q = (p - annealing_start) / (1.0 - annealing_start).max(1e-12);
                    base * (ratio * q).exp()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn run(kind: OptimKind, wd: f64, steps: usize) -> Vec<f32> {
        // Minimise 0.5 * |w - 3|^2 from w = 0; gradient w - 3.
        let device = Default::default();
        let mut opt = Optimizer::<B>::new(OptimConfig { kind, weight_decay: wd, l1: 0.0 });
        let mut w = Tensor::<B, 1>::from_floats([0.0, 1.0], &device);
        for _ in 0..steps {
            opt.begin_step();
            let g = w.clone() - 3.0;
            w = opt.step("w", true, w, g, 0.1);
        }
        w.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn sgd_matches_pytorch_by_hand() {
        // torch.optim.SGD([w], lr=0.1, momentum=0.9), w0 = 0, grad = w - 3:
        // step 1: buf = -3, w = 0.3; step 2: g = -2.7, buf = -5.4, w = 0.84.
        let w = run(OptimKind::Sgd { momentum: 0.9, nesterov: false }, 0.0, 2);
        assert!((w[0] - 0.84).abs() < 1e-6, "{w:?}");
        // Nesterov: step 1: buf = -3, g = -3 - 2.7 = -5.7, w = 0.57.
        let w = run(OptimKind::Sgd { momentum: 0.9, nesterov: true }, 0.0, 1);
        assert!((w[0] - 0.57).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        let w = run(OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 0.0, 1);
        assert!((w[0] - 0.1).abs() < 1e-5 && (w[1] - 1.1).abs() < 1e-5, "{w:?}");
        // AdamW decays the weight before the step: 1 * (1 - 0.1 * 0.5) + 0.1.
        let w = run(OptimKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 0.5, 1);
        assert!((w[1] - 1.05).abs() < 1e-5, "{w:?}");
    }

    #[test]
    fn all_converge() {
        for k in [OptimKind::Sgd { momentum: 0.9, nesterov: true }, OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, OptimKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }] {
            let w = run(k.clone(), 0.0, 300);
            assert!(w.iter().all(|v| (v - 3.0).abs() < 0.05), "{k:?}: {w:?}");
        }
    }

    #[test]
    fn state_roundtrips() {
        let device = Default::default();
        let mut a = Optimizer::<B>::new(OptimConfig { kind: OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, weight_decay: 0.0, l1: 0.0 });
        let w = Tensor::<B, 1>::from_floats([0.0, 1.0], &device);
        a.begin_step();
        let w1 = a.step("x", true, w.clone(), w.clone() - 3.0, 0.1);
        let saved: HashMap<_, _> = a.export_state().unwrap().into_iter().collect();
        let mut b = Optimizer::<B>::new(a.cfg.clone());
        b.import_state(a.steps, &saved, &device).unwrap();
        a.begin_step();
        b.begin_step();
        let x = a.step("x", true, w1.clone(), w1.clone() - 3.0, 0.1).into_data().to_vec::<f32>().unwrap();
        let y = b.step("x", true, w1.clone(), w1 - 3.0, 0.1).into_data().to_vec::<f32>().unwrap();
        assert_eq!(x, y);
    }

    #[test]
    fn schedules() {
        let s = Schedule::SoftStartAnnealing { min_lr: 1e-4, soft_start: 0.1, annealing_start: 0.7 };
        assert!((s.lr(0.1, 0.0, 0, 10) - 1e-4).abs() < 1e-12);
        assert!((s.lr(0.1, 0.1, 1, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr(0.1, 0.5, 5, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr(0.1, 1.0, 9, 10) - 1e-4).abs() < 1e-9);
        assert!(s.lr(0.1, 0.05, 0, 10) > 1e-4 && s.lr(0.1, 0.05, 0, 10) < 0.1);
        let c = Schedule::Cosine { min_lr: 0.0, warmup_epochs: 0.0 };
        assert!((c.lr(1.0, 0.5, 5, 10) - 0.5).abs() < 1e-12);
        assert!(c.lr(1.0, 1.0, 9, 10).abs() < 1e-12);
        let st = Schedule::Step { step_epochs: 3, gamma: 0.1 };
        assert!((st.lr(1.0, 0.0, 2, 10) - 1.0).abs() < 1e-12);
        assert!((st.lr(1.0, 0.0, 3, 10) - 0.1).abs() < 1e-12);
    }
}
