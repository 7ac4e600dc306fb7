//! A Burn module that interprets a [`ModelGraph`] on any backend: the layers with weights
//! are Burn modules (so optimizers, records and autodiff work as usual), the topology is a
//! plan walked in order.

use std::collections::HashMap;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::graph::{ModelGraph, Op};

#[derive(Debug, Clone)]
enum Kind {
    Conv { idx: usize, stride: [usize; 2], padding: [usize; 4], groups: usize },
    Bn(usize),
    Linear(usize),
    Relu,
    Relu6,
    MaxPool { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2] },
    GlobalAvgPool,
    Dropout(f64),
    Add,
    Sigmoid,
}

#[derive(Debug, Clone)]
struct Step {
    kind: Kind,
    /// Indices into the value table (0 is the model input, step i writes i + 1).
    inputs: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    steps: Vec<Step>,
    /// Value-table indices of the model's outputs.
    outputs: Vec<usize>,
    /// Weight name prefix of each parametrised module, for loading.
    conv_names: Vec<String>,
    bn_names: Vec<String>,
    linear_names: Vec<String>,
    /// Batch norms that use their running statistics even in training (frozen blocks).
    bn_frozen: Vec<bool>,
}

#[derive(Module, Debug)]
pub struct GraphNet<B: Backend> {
    convs: Vec<Conv2d<B>>,
    bns: Vec<BatchNorm<B>>,
    linears: Vec<Linear<B>>,
    #[module(skip)]
    plan: Plan,
}

#[derive(Clone)]
enum Val<B: Backend> {
    T4(Tensor<B, 4>),
    T2(Tensor<B, 2>),
}

/// One batch norm's statistics over a training batch.
#[derive(Debug, Clone)]
pub struct BnStats<B: Backend> {
    pub index: usize,
    pub mean: Tensor<B, 1>,
    /// Biased (population) variance.
    pub var: Tensor<B, 1>,
    /// Values per channel the statistics were taken over.
    pub count: usize,
}

/// A weight read from a file: shape and f32 values (row-major, contiguous).
#[derive(Debug, Clone)]
pub struct WeightData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl<B: Backend> GraphNet<B> {
    /// A network with Burn's default initialisation.
    pub fn new(g: &ModelGraph, device: &B::Device) -> Result<Self, String> {
        g.validate()?;
        let mut index: HashMap<&str, usize> = HashMap::new();
        index.insert("input", 0);
        let (mut convs, mut bns, mut linears) = (Vec::new(), Vec::new(), Vec::new());
        let mut plan = Plan { steps: Vec::new(), outputs: Vec::new(), conv_names: Vec::new(), bn_names: Vec::new(), linear_names: Vec::new(), bn_frozen: Vec::new() };
        for (i, l) in g.layers.iter().enumerate() {
            let inputs = l.inputs.iter().map(|n| index[n.as_str()]).collect();
            let kind = match &l.op {
                Op::Conv2d { in_channels, out_channels, kernel, stride, padding, groups, bias } => {
                    let c = Conv2dConfig::new([*in_channels, *out_channels], *kernel)
                        .with_stride(*stride)
                        .with_padding(PaddingConfig2d::Explicit(padding[0], padding[1], padding[2], padding[3]))
                        .with_groups(*groups)
                        .with_bias(*bias)
                        .init(device);
                    convs.push(c);
                    plan.conv_names.push(l.name.clone());
                    Kind::Conv { idx: convs.len() - 1, stride: *stride, padding: *padding, groups: *groups }
                }
                Op::BatchNorm { channels, eps } => {
                    bns.push(BatchNormConfig::new(*channels).with_epsilon(*eps).init(device));
                    plan.bn_names.push(l.name.clone());
                    plan.bn_frozen.push(false);
                    Kind::Bn(bns.len() - 1)
                }
                Op::Linear { in_features, out_features, bias } => {
                    linears.push(LinearConfig::new(*in_features, *out_features).with_bias(*bias).init(device));
                    plan.linear_names.push(l.name.clone());
                    Kind::Linear(linears.len() - 1)
                }
                Op::Relu => Kind::Relu,
                Op::Relu6 => Kind::Relu6,
                Op::MaxPool { kernel, stride, padding } => Kind::MaxPool { kernel: *kernel, stride: *stride, padding: *padding },
                Op::GlobalAvgPool => Kind::GlobalAvgPool,
                Op::Dropout { p } => Kind::Dropout(*p),
                Op::Add => Kind::Add,
                Op::Sigmoid => Kind::Sigmoid,
            };
            plan.steps.push(Step { kind, inputs });
            index.insert(&l.name, i + 1);
        }
        plan.outputs = g.outputs.iter().map(|o| index[o.as_str()]).collect();
        // Burn initialises parameters lazily, on first use: force it now, in layer order,
        // so the random draws do not depend on which thread touches a layer first.
        for c in &convs {
            let _ = c.weight.val();
            if let Some(b) = &c.bias {
                let _ = b.val();
            }
        }
        for b in &bns {
            let _ = (b.gamma.val(), b.beta.val());
        }
        for l in &linears {
            let _ = l.weight.val();
            if let Some(b) = &l.bias {
                let _ = b.val();
            }
        }
        Ok(GraphNet { convs, bns, linears, plan })
    }

    /// Batch norm with its running statistics (what a frozen block does while training).
    fn bn_inference(&self, b: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let bn = &self.bns[b];
        let c = bn.gamma.dims()[0];
        let var = bn.running_var.value();
        let mean = bn.running_mean.value();
        let scale = bn.gamma.val() / (var + bn.epsilon).sqrt();
        let shift = bn.beta.val() - mean * scale.clone();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }

    /// Names of the layers with weights, in the order `for_each_param` visits them.
    pub fn layer_names(&self) -> impl Iterator<Item = &str> {
        self.plan.conv_names.iter().chain(&self.plan.bn_names).chain(&self.plan.linear_names).map(|s| s.as_str())
    }

    /// Freeze the layers for which `frozen(name)` holds: their weights get no gradient
    /// and their batch norms use running statistics. Returns how many layers were frozen.
    pub fn freeze(mut self, frozen: &dyn Fn(&str) -> bool) -> (Self, usize) {
        let mut n = 0;
        let plan = self.plan.clone();
        for (c, name) in self.convs.iter_mut().zip(&plan.conv_names) {
            if frozen(name) {
                c.weight = c.weight.clone().set_require_grad(false);
                c.bias = c.bias.take().map(|b| b.set_require_grad(false));
                n += 1;
            }
        }
        for (i, (b, name)) in self.bns.iter_mut().zip(&plan.bn_names).enumerate() {
            if frozen(name) {
                b.gamma = b.gamma.clone().set_require_grad(false);
                b.beta = b.beta.clone().set_require_grad(false);
                self.plan.bn_frozen[i] = true;
                n += 1;
            }
        }
        for (l, name) in self.linears.iter_mut().zip(&plan.linear_names) {
            if frozen(name) {
                l.weight = l.weight.clone().set_require_grad(false);
                l.bias = l.bias.take().map(|b| b.set_require_grad(false));
                n += 1;
            }
        }
        (self, n)
    }

    /// Set weights by name (torchvision layout: Linear weights are `[out, in]`).
    /// Returns the names of the graph's weights that were not found.
    pub fn load_weights(mut self, w: &HashMap<String, WeightData>, device: &B::Device) -> Result<(Self, Vec<String>), String> {
        let mut missing = Vec::new();
        let take = |name: String, shape: &[usize], missing: &mut Vec<String>| -> Result<Option<TensorData>, String> {
            match w.get(&name) {
                None => {
                    missing.push(name);
                    Ok(None)
                }
                Some(d) if d.shape.iter().product::<usize>() == shape.iter().product::<usize>() && d.shape.len() == shape.len() => Ok(Some(TensorData::new(d.data.clone(), d.shape.clone()))),
                Some(d) => Err(format!("`{name}` has shape {:?} in the file but {shape:?} in the model", d.shape)),
            }
        };
        fn keep<B: Backend, const D: usize>(old: &Param<Tensor<B, D>>, t: Tensor<B, D>) -> Param<Tensor<B, D>> {
            // A frozen (no-gradient) parameter stays frozen when its values are replaced.
            let p = Param::from_tensor(t);
            if old.is_require_grad() { p } else { p.set_require_grad(false) }
        }
        let plan = self.plan.clone();
        for (c, name) in self.convs.iter_mut().zip(&plan.conv_names) {
            let shape = c.weight.dims();
            if let Some(d) = take(format!("{name}.weight"), &shape, &mut missing)? {
                c.weight = keep(&c.weight, Tensor::from_data(d, device));
            }
            if let Some(b) = &c.bias {
                let shape = b.dims();
                if let Some(d) = take(format!("{name}.bias"), &shape, &mut missing)? {
                    c.bias = Some(keep(b, Tensor::from_data(d, device)));
                }
            }
        }
        for (b, name) in self.bns.iter_mut().zip(&plan.bn_names) {
            let shape = b.gamma.dims();
            if let Some(d) = take(format!("{name}.weight"), &shape, &mut missing)? {
                b.gamma = keep(&b.gamma, Tensor::from_data(d, device));
            }
            if let Some(d) = take(format!("{name}.bias"), &shape, &mut missing)? {
                b.beta = keep(&b.beta, Tensor::from_data(d, device));
            }
            if let Some(d) = take(format!("{name}.running_mean"), &shape, &mut missing)? {
                b.running_mean = RunningState::new(Tensor::from_data(d, device));
            }
            if let Some(d) = take(format!("{name}.running_var"), &shape, &mut missing)? {
                b.running_var = RunningState::new(Tensor::from_data(d, device));
            }
        }
        for (l, name) in self.linears.iter_mut().zip(&plan.linear_names) {
            let [din, dout] = l.weight.dims();
            if let Some(d) = take(format!("{name}.weight"), &[dout, din], &mut missing)? {
                let t: Tensor<B, 2> = Tensor::from_data(d, device);
                l.weight = keep(&l.weight, t.transpose());
            }
            if let Some(b) = &l.bias {
                let shape = b.dims();
                if let Some(d) = take(format!("{name}.bias"), &shape, &mut missing)? {
                    l.bias = Some(keep(b, Tensor::from_data(d, device)));
                }
            }
        }
        Ok((self, missing))
    }

    /// Every trainable weight: torchvision name, whether it is a conv/linear kernel (what
    /// weight decay and L1 act on), and its values as a flat tensor.
    pub fn trainable(&self) -> Vec<(String, bool, Tensor<B, 1>)> {
        fn flat<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
            let n = t.dims().iter().product::<usize>();
            t.reshape([n])
        }
        let mut out = Vec::new();
        for (c, name) in self.convs.iter().zip(&self.plan.conv_names) {
            out.push((format!("{name}.weight"), true, flat(c.weight.val())));
            if let Some(b) = &c.bias {
                out.push((format!("{name}.bias"), false, flat(b.val())));
            }
        }
        for (b, name) in self.bns.iter().zip(&self.plan.bn_names) {
            out.push((format!("{name}.weight"), false, flat(b.gamma.val())));
            out.push((format!("{name}.bias"), false, flat(b.beta.val())));
        }
        for (l, name) in self.linears.iter().zip(&self.plan.linear_names) {
            out.push((format!("{name}.weight"), true, flat(l.weight.val())));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), false, flat(b.val())));
            }
        }
        out
    }

    /// Every weight by torchvision name (Linear back to `[out, in]`), as f32.
    pub fn export_weights(&self) -> Result<Vec<(String, WeightData)>, String> {
        fn data<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<WeightData, String> {
            let shape = t.dims().to_vec();
            let data = t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
            Ok(WeightData { shape, data })
        }
        let mut out = Vec::new();
        for (c, name) in self.convs.iter().zip(&self.plan.conv_names) {
            out.push((format!("{name}.weight"), data(c.weight.val())?));
            if let Some(b) = &c.bias {
                out.push((format!("{name}.bias"), data(b.val())?));
            }
        }
        for (b, name) in self.bns.iter().zip(&self.plan.bn_names) {
            out.push((format!("{name}.weight"), data(b.gamma.val())?));
            out.push((format!("{name}.bias"), data(b.beta.val())?));
            out.push((format!("{name}.running_mean"), data(b.running_mean.value())?));
            out.push((format!("{name}.running_var"), data(b.running_var.value())?));
        }
        for (l, name) in self.linears.iter().zip(&self.plan.linear_names) {
            out.push((format!("{name}.weight"), data(l.weight.val().transpose())?));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), data(b.val())?));
            }
        }
        Ok(out)
    }
}

impl<B: super::conv::ConvBackend> GraphNet<B> {
    /// Run the graph: `[N, C, H, W]` images in, the first output flattened to `[N, X]` out
    /// (a classifier's logits).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        flat(self.run(x, None, None).swap_remove(0))
    }

    /// Every output of the graph, in inference mode, as `[N, C, H, W]` (a `[N, C]` output
    /// as `[N, C, 1, 1]`).
    pub fn forward_outputs(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        self.run(x, None, None).into_iter().map(rank4).collect()
    }

    /// Inference forward pass that hands every layer's output (layer index in the graph,
    /// values) to `observe`, e.g. to calibrate INT8 ranges.
    pub fn forward_observe(&self, x: Tensor<B, 4>, observe: &mut dyn FnMut(usize, &[f32])) {
        let _ = self.run(x, None, Some(observe));
    }

    /// Training forward pass over every output (as [`forward_outputs`](Self::forward_outputs)):
    /// batch norms normalise with the batch's statistics (except frozen ones) and push
    /// `(index, mean, biased variance, count)` to `stats`, from which the caller updates the
    /// running statistics once per step.
    pub fn forward_train(&self, x: Tensor<B, 4>, stats: &mut Vec<BnStats<B>>) -> Vec<Tensor<B, 4>> {
        self.run(x, Some(stats), None).into_iter().map(rank4).collect()
    }

    fn bn_train(&self, b: usize, x: Tensor<B, 4>, stats: &mut Vec<BnStats<B>>) -> Tensor<B, 4> {
        let bn = &self.bns[b];
        let [n, c, h, w] = x.dims();
        let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3); // [1, C, 1, 1]
        let centered = x - mean.clone();
        let var = centered.clone().powi_scalar(2).mean_dim(0).mean_dim(2).mean_dim(3);
        stats.push(BnStats { index: b, mean: mean.clone().reshape([c]).detach(), var: var.clone().reshape([c]).detach(), count: n * h * w });
        let inv = (var + bn.epsilon).sqrt().recip();
        centered * inv * bn.gamma.val().reshape([1, c, 1, 1]) + bn.beta.val().reshape([1, c, 1, 1])
    }

    fn run(&self, x: Tensor<B, 4>, mut stats: Option<&mut Vec<BnStats<B>>>, mut observe: Option<&mut dyn FnMut(usize, &[f32])>) -> Vec<Val<B>> {
        let mut vals: Vec<Option<Val<B>>> = vec![None; self.plan.steps.len() + 1];
        vals[0] = Some(Val::T4(x));
        for (i, s) in self.plan.steps.iter().enumerate() {
            let get = |k: usize| vals[s.inputs[k]].clone().expect("inputs come first");
            let v = match (&s.kind, get(0)) {
                (Kind::Conv { idx, stride, padding, groups }, Val::T4(t)) => {
                    let c = &self.convs[*idx];
                    let y = super::conv::conv2d(t, c.weight.val(), *stride, *padding, *groups);
                    Val::T4(match &c.bias {
                        Some(b) => {
                            let n = b.dims()[0];
                            y + b.val().reshape([1, n, 1, 1])
                        }
                        None => y,
                    })
                }
                (Kind::Bn(b), Val::T4(t)) => match stats.as_deref_mut() {
                    Some(st) if !self.plan.bn_frozen[*b] => Val::T4(self.bn_train(*b, t, st)),
                    _ => Val::T4(self.bn_inference(*b, t)),
                },
                (Kind::Bn(b), Val::T2(t)) => {
                    let [n, c] = t.dims();
                    let y = match stats.as_deref_mut() {
                        Some(st) if !self.plan.bn_frozen[*b] => self.bn_train(*b, t.reshape([n, c, 1, 1]), st),
                        _ => self.bn_inference(*b, t.reshape([n, c, 1, 1])),
                    };
                    Val::T2(y.reshape([n, c]))
                }
                (Kind::Linear(l), Val::T2(t)) => Val::T2(self.linears[*l].forward(t)),
                (Kind::Relu, Val::T4(t)) => Val::T4(burn::tensor::activation::relu(t)),
                (Kind::Relu, Val::T2(t)) => Val::T2(burn::tensor::activation::relu(t)),
                (Kind::Relu6, Val::T4(t)) => Val::T4(t.clamp(0.0, 6.0)),
                (Kind::Relu6, Val::T2(t)) => Val::T2(t.clamp(0.0, 6.0)),
                (Kind::Sigmoid, Val::T4(t)) => Val::T4(burn::tensor::activation::sigmoid(t)),
                (Kind::Sigmoid, Val::T2(t)) => Val::T2(burn::tensor::activation::sigmoid(t)),
                (Kind::MaxPool { kernel, stride, padding }, Val::T4(t)) => Val::T4(burn::tensor::module::max_pool2d(t, *kernel, *stride, *padding, [1, 1], false)),
                (Kind::GlobalAvgPool, Val::T4(t)) => {
                    let [n, c, _, _] = t.dims();
                    Val::T2(burn::tensor::module::adaptive_avg_pool2d(t, [1, 1]).reshape([n, c]))
                }
                (Kind::Dropout(p), Val::T2(t)) => Val::T2(DropoutConfig::new(*p).init().forward(t)),
                (Kind::Dropout(p), Val::T4(t)) => Val::T4(DropoutConfig::new(*p).init().forward(t)),
                (Kind::Add, first) => {
                    let mut acc = first;
                    for k in 1..s.inputs.len() {
                        acc = match (acc, get(k)) {
                            (Val::T4(a), Val::T4(b)) => Val::T4(a + b),
                            (Val::T2(a), Val::T2(b)) => Val::T2(a + b),
                            _ => panic!("add of tensors of different ranks (checked by validate)"),
                        };
                    }
                    acc
                }
                (k, _) => panic!("op {k:?} on a tensor of the wrong rank (the graph was not validated)"),
            };
            if let Some(obs) = observe.as_deref_mut() {
                let data = match &v {
                    Val::T4(t) => t.clone().into_data(),
                    Val::T2(t) => t.clone().into_data(),
                };
                if let Ok(d) = data.to_vec::<f32>() {
                    obs(i, &d);
                }
            }
            vals[i + 1] = Some(v);
        }
        self.plan.outputs.iter().map(|o| vals[*o].clone().expect("the outputs are computed")).collect()
    }

}

fn flat<B: Backend>(v: Val<B>) -> Tensor<B, 2> {
    match v {
        Val::T2(t) => t,
        Val::T4(t) => {
            let [n, c, h, w] = t.dims();
            t.reshape([n, c * h * w])
        }
    }
}

fn rank4<B: Backend>(v: Val<B>) -> Tensor<B, 4> {
    match v {
        Val::T4(t) => t,
        Val::T2(t) => {
            let [n, c] = t.dims();
            t.reshape([n, c, 1, 1])
        }
    }
}

/// `f(name, is_kernel, weight, gradient) -> new weight`, on flat tensors of the inner backend.
pub type UpdateFn<'a, B> = dyn FnMut(&str, bool, Tensor<B, 1>, Tensor<B, 1>) -> Tensor<B, 1> + 'a;

fn update_param<B: burn::tensor::backend::AutodiffBackend, const D: usize>(
    p: Param<Tensor<B, D>>,
    name: String,
    kernel: bool,
    grads: &HashMap<String, Tensor<B::InnerBackend, 1>>,
    f: &mut UpdateFn<'_, B::InnerBackend>,
) -> Param<Tensor<B, D>> {
    let Some(g) = grads.get(&name) else { return p };
    p.map(|t| {
        let dims = t.dims();
        let n = dims.iter().product::<usize>();
        let w = f(&name, kernel, t.inner().reshape([n]), g.clone());
        Tensor::from_inner(w.reshape(dims)).require_grad()
    })
}

/// The same values as a new autodiff leaf (its own graph), keeping `require_grad`.
fn detach_param<B: burn::tensor::backend::AutodiffBackend, const D: usize>(p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
    p.map(|t| {
        let rg = t.is_require_grad();
        let n = Tensor::from_inner(t.inner());
        if rg { n.require_grad() } else { n }
    })
}

fn grad_of<B: burn::tensor::backend::AutodiffBackend, const D: usize>(p: &Param<Tensor<B, D>>, name: String, grads: &B::Gradients, out: &mut Vec<(String, Tensor<B::InnerBackend, 1>)>) {
    if let Some(g) = p.val().grad(grads) {
        let n = g.dims().iter().product::<usize>();
        out.push((name, g.reshape([n])));
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> GraphNet<B> {
    /// A copy whose parameters are fresh autodiff leaves, so that several threads can each
    /// run a forward and backward pass on their own graph.
    pub fn detached(&self) -> Self {
        let mut c = self.clone();
        for conv in c.convs.iter_mut() {
            conv.weight = detach_param(conv.weight.clone());
            conv.bias = conv.bias.take().map(detach_param);
        }
        for bn in c.bns.iter_mut() {
            bn.gamma = detach_param(bn.gamma.clone());
            bn.beta = detach_param(bn.beta.clone());
        }
        for l in c.linears.iter_mut() {
            l.weight = detach_param(l.weight.clone());
            l.bias = l.bias.take().map(detach_param);
        }
        c
    }

    /// The gradients of this network's parameters, flat, by weight name.
    pub fn gradients(&self, grads: &B::Gradients) -> Vec<(String, Tensor<B::InnerBackend, 1>)> {
        let mut out = Vec::new();
        for (c, name) in self.convs.iter().zip(&self.plan.conv_names) {
            grad_of(&c.weight, format!("{name}.weight"), grads, &mut out);
            if let Some(b) = &c.bias {
                grad_of(b, format!("{name}.bias"), grads, &mut out);
            }
        }
        for (b, name) in self.bns.iter().zip(&self.plan.bn_names) {
            grad_of(&b.gamma, format!("{name}.weight"), grads, &mut out);
            grad_of(&b.beta, format!("{name}.bias"), grads, &mut out);
        }
        for (l, name) in self.linears.iter().zip(&self.plan.linear_names) {
            grad_of(&l.weight, format!("{name}.weight"), grads, &mut out);
            if let Some(b) = &l.bias {
                grad_of(b, format!("{name}.bias"), grads, &mut out);
            }
        }
        out
    }

    /// Replace every parameter that has a gradient in `grads` with `f`'s result.
    pub fn update(mut self, grads: &HashMap<String, Tensor<B::InnerBackend, 1>>, f: &mut UpdateFn<'_, B::InnerBackend>) -> Self {
        let plan = self.plan.clone();
        for (c, name) in self.convs.iter_mut().zip(&plan.conv_names) {
            c.weight = update_param(c.weight.clone(), format!("{name}.weight"), true, grads, f);
            c.bias = c.bias.take().map(|b| update_param(b, format!("{name}.bias"), false, grads, f));
        }
        for (b, name) in self.bns.iter_mut().zip(&plan.bn_names) {
            b.gamma = update_param(b.gamma.clone(), format!("{name}.weight"), false, grads, f);
            b.beta = update_param(b.beta.clone(), format!("{name}.bias"), false, grads, f);
        }
        for (l, name) in self.linears.iter_mut().zip(&plan.linear_names) {
            l.weight = update_param(l.weight.clone(), format!("{name}.weight"), true, grads, f);
            l.bias = l.bias.take().map(|b| update_param(b, format!("{name}.bias"), false, grads, f));
        }
        self
    }

    /// Move running statistics towards a step's batch statistics (PyTorch's rule: momentum
    /// 0.1, unbiased variance), averaging over the chunks that saw the same batch norm.
    pub fn update_running_stats(&mut self, stats: &[BnStats<B::InnerBackend>], momentum: f64) {
        let mut by: HashMap<usize, Vec<&BnStats<B::InnerBackend>>> = HashMap::new();
        for s in stats {
            by.entry(s.index).or_default().push(s);
        }
        for (idx, v) in by {
            let total: usize = v.iter().map(|s| s.count).sum();
            let mean = v.iter().map(|s| s.mean.clone() * (s.count as f64 / total as f64)).reduce(|a, b| a + b).expect("non-empty");
            // Pooled variance: within-chunk plus between-chunk spread.
            let var = v.iter().map(|s| (s.var.clone() + (s.mean.clone() - mean.clone()).powi_scalar(2)) * (s.count as f64 / total as f64)).reduce(|a, b| a + b).expect("non-empty");
            let unbiased = if total > 1 { var * (total as f64 / (total as f64 - 1.0)) } else { var };
            let bn = &mut self.bns[idx];
            let rm = bn.running_mean.value().inner() * (1.0 - momentum) + mean * momentum;
            let rv = bn.running_var.value().inner() * (1.0 - momentum) + unbiased * momentum;
            bn.running_mean = RunningState::new(Tensor::from_inner(rm));
            bn.running_var = RunningState::new(Tensor::from_inner(rv));
        }
    }
}
