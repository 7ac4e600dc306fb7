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
    /// Element-wise logistic function (DetectNet_v2's coverage head).
    Sigmoid,
}

/// What a model predicts; decides its loss, post-processing, metrics and export extras
/// (`crate::tasks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// One output, `[N, classes]` logits.
    #[default]
    Classification,
    /// DetectNet_v2's grid: outputs coverage `[N, C, H/16, W/16]` (after a sigmoid) and
    /// boxes `[N, 4C, H/16, W/16]`; settings in [`ModelGraph::detection`].
    Detection,
}

impl TaskKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Detection => "detection",
        }
    }

    /// The exported model's input tensor: `input`, or TAO's `input_1` for a detector (what
    /// DeepStream configs of TAO models name).
    pub fn onnx_input(&self) -> &'static str {
        match self {
            TaskKind::Classification => "input",
            TaskKind::Detection => "input_1",
        }
    }

    /// The exported model's output tensors, in the order of [`ModelGraph::outputs`]:
    /// `logits`, or TAO's `output_cov/Sigmoid` and `output_bbox/BiasAdd`, which DeepStream's
    /// stock DetectNet_v2 parser looks for.
    pub fn onnx_outputs(&self) -> &'static [&'static str] {
        match self {
            TaskKind::Classification => &["logits"],
            TaskKind::Detection => &["output_cov/Sigmoid", "output_bbox/BiasAdd"],
        }
    }
}

/// `"outputs": ["a", "b"]`, or the single `"output": "a"` of graphs written before a model
/// could have several.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
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
    #[serde(default)]
    pub task: TaskKind,
    pub input: InputSpec,
    pub classes: Vec<String>,
    /// In execution order: every layer comes after its inputs.
    pub layers: Vec<Layer>,
    /// The layers whose values the model returns, in order (classification: the logits;
    /// detection: coverage, then boxes).
    #[serde(alias = "output", deserialize_with = "one_or_many")]
    pub outputs: Vec<String>,
    /// Detection's grid and post-processing settings (`task = "detection"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<crate::tasks::detection::DetectionHead>,
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
    /// A classifier (one output).
    pub fn classifier(arch: String, input: InputSpec, classes: Vec<String>, layers: Vec<Layer>, output: String) -> Self {
        ModelGraph { version: 1, arch, task: TaskKind::Classification, input, classes, layers, outputs: vec![output], detection: None }
    }

    /// The first output (a classifier's logits).
    pub fn output(&self) -> &str {
        &self.outputs[0]
    }

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
        if self.outputs.is_empty() {
            return Err("the model names no output".into());
        }
        for o in &self.outputs {
            if !ch.contains_key(o) {
                return Err(format!("output `{o}` is not a layer"));
            }
        }
        match (self.task, &self.detection) {
            (TaskKind::Detection, None) => return Err("a detection model needs its `detection` settings".into()),
            (TaskKind::Classification, Some(_)) => return Err("a classification model has `detection` settings".into()),
            (TaskKind::Detection, Some(d)) => {
                if self.outputs.len() != 2 {
                    return Err(format!("a detection model has two outputs (coverage, boxes), not {}", self.outputs.len()));
                }
                let (nc, nb) = (ch[&self.outputs[0]], ch[&self.outputs[1]]);
                if nc != self.classes.len() || nb != 4 * self.classes.len() {
                    return Err(format!("a detector of {} classes has {} coverage and {} box channels (expected {} and {})", self.classes.len(), nc, nb, self.classes.len(), 4 * self.classes.len()));
                }
                d.validate(self.classes.len())?;
                if !self.input.width.is_multiple_of(d.stride as u32) || !self.input.height.is_multiple_of(d.stride as u32) {
                    return Err(format!("a detector's input must be a multiple of {} pixels; this one is {}x{} (width x height)", d.stride, self.input.width, self.input.height));
                }
            }
            _ => {}
        }
        Ok(ch)
    }
}
