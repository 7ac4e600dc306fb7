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
    Conv(usize),
    Bn(usize),
    Linear(usize),
    Relu,
    Relu6,
    MaxPool { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2] },
    GlobalAvgPool,
    Dropout(f64),
    Add,
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
    output: usize,
    /// Weight name prefix of each parametrised module, for loading.
    conv_names: Vec<String>,
    bn_names: Vec<String>,
    linear_names: Vec<String>,
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
        let mut plan = Plan { steps: Vec::new(), output: 0, conv_names: Vec::new(), bn_names: Vec::new(), linear_names: Vec::new() };
        for (i, l) in g.layers.iter().enumerate() {
            let inputs = l.inputs.iter().map(|n| index[n.as_str()]).collect();
            let kind = match &l.op {
                Op::Conv2d { in_channels, out_channels, kernel, stride, padding, groups, bias } => {
                    let c = Conv2dConfig::new([*in_channels, *out_channels], *kernel)
                        .with_stride(*stride)
                        .with_padding(PaddingConfig2d::Explicit(padding[0], padding[1], padding[0], padding[1]))
                        .with_groups(*groups)
                        .with_bias(*bias)
                        .init(device);
                    convs.push(c);
                    plan.conv_names.push(l.name.clone());
                    Kind::Conv(convs.len() - 1)
                }
                Op::BatchNorm { channels, eps } => {
                    bns.push(BatchNormConfig::new(*channels).with_epsilon(*eps).init(device));
                    plan.bn_names.push(l.name.clone());
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
            };
            plan.steps.push(Step { kind, inputs });
            index.insert(&l.name, i + 1);
        }
        plan.output = index[g.output.as_str()];
        Ok(GraphNet { convs, bns, linears, plan })
    }

    /// Run the graph: `[N, C, H, W]` images in, `[N, classes]` logits out.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut vals: Vec<Option<Val<B>>> = vec![None; self.plan.steps.len() + 1];
        vals[0] = Some(Val::T4(x));
        for (i, s) in self.plan.steps.iter().enumerate() {
            let get = |k: usize| vals[s.inputs[k]].clone().expect("inputs come first");
            let v = match (&s.kind, get(0)) {
                (Kind::Conv(c), Val::T4(t)) => Val::T4(self.convs[*c].forward(t)),
                (Kind::Bn(b), Val::T4(t)) => Val::T4(self.bns[*b].forward(t)),
                (Kind::Bn(b), Val::T2(t)) => Val::T2(self.bns[*b].forward(t)),
                (Kind::Linear(l), Val::T2(t)) => Val::T2(self.linears[*l].forward(t)),
                (Kind::Relu, Val::T4(t)) => Val::T4(burn::tensor::activation::relu(t)),
                (Kind::Relu, Val::T2(t)) => Val::T2(burn::tensor::activation::relu(t)),
                (Kind::Relu6, Val::T4(t)) => Val::T4(t.clamp(0.0, 6.0)),
                (Kind::Relu6, Val::T2(t)) => Val::T2(t.clamp(0.0, 6.0)),
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
            vals[i + 1] = Some(v);
        }
        match vals[self.plan.output].take() {
            Some(Val::T2(t)) => t,
            Some(Val::T4(t)) => {
                let [n, c, h, w] = t.dims();
                t.reshape([n, c * h * w])
            }
            None => unreachable!("the output is computed"),
        }
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
        let plan = self.plan.clone();
        for (c, name) in self.convs.iter_mut().zip(&plan.conv_names) {
            let shape = c.weight.dims();
            if let Some(d) = take(format!("{name}.weight"), &shape, &mut missing)? {
                c.weight = Param::from_tensor(Tensor::from_data(d, device));
            }
            if let Some(b) = &c.bias {
                let shape = b.dims();
                if let Some(d) = take(format!("{name}.bias"), &shape, &mut missing)? {
                    c.bias = Some(Param::from_tensor(Tensor::from_data(d, device)));
                }
            }
        }
        for (b, name) in self.bns.iter_mut().zip(&plan.bn_names) {
            let shape = b.gamma.dims();
            if let Some(d) = take(format!("{name}.weight"), &shape, &mut missing)? {
                b.gamma = Param::from_tensor(Tensor::from_data(d, device));
            }
            if let Some(d) = take(format!("{name}.bias"), &shape, &mut missing)? {
                b.beta = Param::from_tensor(Tensor::from_data(d, device));
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
                l.weight = Param::from_tensor(t.transpose());
            }
            if let Some(b) = &l.bias {
                let shape = b.dims();
                if let Some(d) = take(format!("{name}.bias"), &shape, &mut missing)? {
                    l.bias = Some(Param::from_tensor(Tensor::from_data(d, device)));
                }
            }
        }
        Ok((self, missing))
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
