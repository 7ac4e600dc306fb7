//! A model as a small graph of ops with named weights (`model.json`). Prune, export and
//! quantize work on this graph, so they work for every architecture; a Burn module
//! interprets it (`net.rs`). Layer names follow torchvision's module paths, so that
//! torchvision state dicts map onto the graph by name.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::data::image_io::InputSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `padding` is `[top, left, bottom, right]` (ONNX's `pads` order), so TF-style "same"
    /// padding of stride-2 layers (more at the end) is exact.
    Conv2d { in_channels: usize, out_channels: usize, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 4], groups: usize, bias: bool },
    BatchNorm { channels: usize, eps: f64 },
    Relu,
    Relu6,
    MaxPool { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2] },
    /// Adaptive average pool to 1x1, flattened to `[N, C]`.
    GlobalAvgPool,
    Linear { in_features: usize, out_features: usize, bias: bool },
    Dropout { p: f64 },
    /// Element-wise sum of its inputs (residual connections).
    Add,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    #[serde(flatten)]
    pub op: Op,
    /// Names of the layers it reads; `input` is the model input.
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelGraph {
    pub version: u32,
    pub arch: String,
    pub input: InputSpec,
    pub classes: Vec<String>,
    /// In execution order: every layer comes after its inputs.
    pub layers: Vec<Layer>,
    pub output: String,
}

/// The weights a layer owns: (suffix, shape), in torchvision's naming.
pub fn weight_shapes(op: &Op) -> Vec<(&'static str, Vec<usize>)> {
    match op {
        Op::Conv2d { in_channels, out_channels, kernel, groups, bias, .. } => {
            let mut v = vec![("weight", vec![*out_channels, in_channels / groups, kernel[0], kernel[1]])];
            if *bias {
                v.push(("bias", vec![*out_channels]));
            }
            v
        }
        Op::BatchNorm { channels, .. } => vec![("weight", vec![*channels]), ("bias", vec![*channels]), ("running_mean", vec![*channels]), ("running_var", vec![*channels])],
        Op::Linear { in_features, out_features, bias } => {
            let mut v = vec![("weight", vec![*out_features, *in_features])];
            if *bias {
                v.push(("bias", vec![*out_features]));
            }
            v
        }
        _ => vec![],
    }
}

impl ModelGraph {
    /// Every weight's full name (`features.0.0.weight`) and shape.
    pub fn weights(&self) -> BTreeMap<String, Vec<usize>> {
        let mut out = BTreeMap::new();
        for l in &self.layers {
            for (suffix, shape) in weight_shapes(&l.op) {
                out.insert(format!("{}.{suffix}", l.name), shape);
            }
        }
        out
    }

    /// Trainable parameters (batch-norm running statistics excluded).
    pub fn param_count(&self) -> usize {
        self.weights().iter().filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var")).map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Check names, references and channel counts; returns per-layer output channels.
    pub fn validate(&self) -> Result<HashMap<String, usize>, String> {
        let mut ch: HashMap<String, usize> = HashMap::new();
        ch.insert("input".into(), self.input.channels as usize);
        for l in &self.layers {
            if ch.contains_key(&l.name) {
                return Err(format!("layer `{}` is defined twice", l.name));
            }
            let ins: Vec<usize> = l
                .inputs
                .iter()
                .map(|i| ch.get(i).copied().ok_or_else(|| format!("layer `{}` reads `{i}`, which is not defined before it", l.name)))
                .collect::<Result<_, _>>()?;
            let first = *ins.first().ok_or_else(|| format!("layer `{}` has no input", l.name))?;
            let out = match &l.op {
                Op::Conv2d { in_channels, out_channels, groups, .. } => {
                    if first != *in_channels || in_channels % groups != 0 || out_channels % groups != 0 {
                        return Err(format!("conv `{}`: {first} input channels, expected {in_channels} (groups {groups})", l.name));
                    }
                    *out_channels
                }
                Op::BatchNorm { channels, .. } => {
                    if first != *channels {
                        return Err(format!("batch norm `{}`: {first} channels, expected {channels}", l.name));
                    }
                    first
                }
                Op::Linear { in_features, out_features, .. } => {
                    if first != *in_features {
                        return Err(format!("linear `{}`: {first} inputs, expected {in_features}", l.name));
                    }
                    *out_features
                }
                Op::Add => {
                    if ins.iter().any(|c| *c != first) || ins.len() < 2 {
                        return Err(format!("add `{}`: inputs with channels {ins:?}", l.name));
                    }
                    first
                }
                _ => first,
            };
            ch.insert(l.name.clone(), out);
        }
        if !ch.contains_key(&self.output) {
            return Err(format!("output `{}` is not a layer", self.output));
        }
        Ok(ch)
    }
}
