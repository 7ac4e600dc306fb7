//! ONNX export of the layer graph, written with the prost types of `tract-onnx` (Burn
//! cannot export ONNX). One lowering serves the FP32/FP16 export and the INT8 QDQ model, so
//! tensor names agree between them and with the TensorRT calibration cache:
//!
//! - the model input is `input` (`[batch, C, H, W]`, float32, dynamic batch) and the output
//!   `logits` (`[batch, classes]`, float32, also for FP16 models, which cast inside);
//! - every other tensor is named after the layer that produces it (`features.3.conv.1`);
//!   a batch norm folded into the convolution before it names the fused output;
//!   a dropout is the identity at inference and has no tensor of its own;
//! - `metadata_props` carry the classes, the input size and the preprocessing
//!   (`taoflow.classes`, `taoflow.input`), so `taoflow infer` and users need nothing else.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use super::graph::{ModelGraph, Op};
use super::net::WeightData;

/// Numeric precision of an exported model's weights and arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub precision: Precision,
    pub opset: i64,
    /// Fold each batch norm into the convolution it follows (what every runtime does anyway).
    pub fold_batchnorm: bool,
    /// Extra `metadata_props` entries.
    pub metadata: Vec<(String, String)>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { precision: Precision::Fp32, opset: 17, fold_batchnorm: true, metadata: Vec::new() }
    }
}

/// Opsets the exporter writes: 17 is the floor the ops need in the form we write them.
pub const OPSETS: std::ops::RangeInclusive<i64> = 17..=21;

/// The 8-bit type of quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActType {
    /// Asymmetric uint8 (onnxruntime's fast path on CPUs: U8S8).
    Uint8,
    /// Symmetric int8, zero point 0 (what TensorRT accepts).
    Int8,
}

/// Quantization of one activation tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// What turns the export into a QDQ model: per-tensor activation parameters (weights are
/// quantized per output channel, symmetric int8, biases int32).
#[derive(Debug, Clone)]
pub struct QuantSpec {
    pub act_type: ActType,
    pub activations: BTreeMap<String, QParams>,
}

/// How layers map onto ONNX tensors.
#[derive(Debug, Clone)]
pub struct Lowering {
    /// The model input's tensor (`input`, `input_1`).
    pub input: String,
    /// Layer (or `input`) -> the ONNX tensor holding its value (`None`: folded away).
    tensor: HashMap<String, Option<String>>,
    /// Batch norm -> the convolution folded into it (that convolution maps to `None` in
    /// `tensor`: its output is the batch norm's).
    folded: HashMap<String, String>,
}

impl Lowering {
    pub fn new(g: &ModelGraph, fold_batchnorm: bool) -> Self {
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for l in &g.layers {
            for i in &l.inputs {
                *readers.entry(i.as_str()).or_default() += 1;
            }
        }
        let ops: HashMap<&str, &Op> = g.layers.iter().map(|l| (l.name.as_str(), &l.op)).collect();
        let mut tensor: HashMap<String, Option<String>> = HashMap::new();
        let input = g.task.onnx_input().to_string();
        tensor.insert("input".into(), Some(input.clone()));
        let mut folded = HashMap::new();
        for l in &g.layers {
            let name = match &l.op {
                Op::Dropout { .. } => tensor.get(&l.inputs[0]).cloned().flatten(),
                Op::BatchNorm { .. } if fold_batchnorm => {
                    let src = &l.inputs[0];
                    if matches!(ops.get(src.as_str()), Some(Op::Conv2d { .. })) && readers.get(src.as_str()) == Some(&1) && !g.outputs.contains(src) {
                        folded.insert(l.name.clone(), src.clone());
                        tensor.insert(src.clone(), None);
                    }
                    Some(l.name.clone())
                }
                _ => Some(l.name.clone()),
            };
            tensor.insert(l.name.clone(), name);
        }
        // An output layer's own tensor has the output's name (`logits`; unless it is an alias),
        // except a 2-D classifier output of rank 4, flattened into it at the end.
        for (o, name) in g.outputs.iter().zip(g.task.onnx_outputs()) {
            if let Some(l) = g.layers.iter().find(|l| &l.name == o)
                && !matches!(l.op, Op::Dropout { .. })
            {
                tensor.insert(l.name.clone(), Some(name.to_string()));
            }
        }
        Lowering { input, tensor, folded }
    }

    /// The tensor a layer's value lives in.
    pub fn tensor_of(&self, layer: &str) -> Option<&str> {
        self.tensor.get(layer).and_then(|t| t.as_deref())
    }

    pub fn is_absorbed(&self, layer: &str) -> bool {
        matches!(self.tensor.get(layer), Some(None))
    }

    /// `(layer, tensors)`: the ONNX tensors that hold each layer's output in the exported
    /// model (a global average pool has two: the pooled `[N, C, 1, 1]` and the flattened one).
    pub fn observed_tensors(&self, g: &ModelGraph) -> Vec<(Option<usize>, Vec<String>)> {
        let mut out = vec![(None, vec![self.input.clone()])];
        for (i, l) in g.layers.iter().enumerate() {
            if matches!(l.op, Op::Dropout { .. }) || self.is_absorbed(&l.name) {
                continue;
            }
            let Some(t) = self.tensor_of(&l.name) else { continue };
            let mut v = vec![t.to_string()];
            if matches!(l.op, Op::GlobalAvgPool) {
                v.push(format!("{t}.pool"));
            }
            out.push((Some(i), v));
        }
        out
    }

    /// Tensors a QDQ model quantizes: every input of a convolution, linear layer, add or
    /// pooling (so each of them runs on 8-bit data), and the pooled tensor of a global
    /// average pool.
    pub fn quantized_tensors(&self, g: &ModelGraph) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |t: &str| {
            if !out.iter().any(|x| x == t) {
                out.push(t.to_string());
            }
        };
        for l in &g.layers {
            match l.op {
                Op::Conv2d { .. } | Op::Linear { .. } | Op::Add | Op::MaxPool { .. } | Op::GlobalAvgPool => {
                    for i in &l.inputs {
                        if let Some(t) = self.tensor_of(i) {
                            push(t);
                        }
                    }
                    if matches!(l.op, Op::GlobalAvgPool)
                        && let Some(t) = self.tensor_of(&l.name)
                    {
                        push(&format!("{t}.pool"));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

pub const OUTPUT: &str = "logits";

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: pb::attribute_proto::AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: pb::attribute_proto::AttributeType::Int as i32, i: v, ..Default::default() }
}

fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: pb::attribute_proto::AttributeType::Float as i32, f: v, ..Default::default() }
}

fn dt(t: pb::tensor_proto::DataType) -> i32 {
    t as i32
}

struct Builder<'a> {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    fp16: bool,
    quant: Option<&'a QuantSpec>,
    /// Tensors that have a QuantizeLinear -> DequantizeLinear pair: readers take the latter.
    dq: HashMap<String, (String, QParams)>,
    names: HashSet<String>,
}

impl Builder<'_> {
    fn node(&mut self, op: &str, inputs: Vec<String>, outputs: Vec<String>, attribute: Vec<pb::AttributeProto>) {
        let mut name = format!("{}_{op}", outputs[0]);
        let mut k = 1;
        while self.names.contains(&name) {
            k += 1;
            name = format!("{}_{op}_{k}", outputs[0]);
        }
        self.names.insert(name.clone());
        self.nodes.push(pb::NodeProto { input: inputs, output: outputs, name, op_type: op.into(), attribute, ..Default::default() });
    }

    /// A float initializer, stored in the model's precision.
    fn float(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let dims: Vec<i64> = dims.iter().map(|d| *d as i64).collect();
        let t = if self.fp16 {
            let raw = data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
            pb::TensorProto { name: name.into(), dims, data_type: dt(pb::tensor_proto::DataType::Float16), raw_data: raw, ..Default::default() }
        } else {
            Self::f32_tensor(name, dims, data)
        };
        self.inits.push(t);
        name.to_string()
    }

    fn f32_tensor(name: &str, dims: Vec<i64>, data: &[f32]) -> pb::TensorProto {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        pb::TensorProto { name: name.into(), dims, data_type: dt(pb::tensor_proto::DataType::Float), raw_data: raw, ..Default::default() }
    }

    fn raw(&mut self, name: &str, dims: &[usize], t: pb::tensor_proto::DataType, raw: Vec<u8>) -> String {
        let dims = dims.iter().map(|d| *d as i64).collect();
        self.inits.push(pb::TensorProto { name: name.into(), dims, data_type: dt(t), raw_data: raw, ..Default::default() });
        name.to_string()
    }

    /// The name a consumer reads `t` under (its dequantized copy in a QDQ model).
    fn read(&self, t: &str) -> String {
        self.dq.get(t).map(|(d, _)| d.clone()).unwrap_or_else(|| t.to_string())
    }

    fn qparams_of(&self, t: &str) -> Option<QParams> {
        self.dq.get(t).map(|(_, q)| *q)
    }

    /// Called once `t` exists: in a QDQ model, add its QuantizeLinear/DequantizeLinear pair.
    fn produced(&mut self, t: &str) {
        let Some(q) = self.quant else { return };
        let Some(p) = q.activations.get(t).copied() else { return };
        let scale = self.raw(&format!("{t}_scale"), &[], pb::tensor_proto::DataType::Float, p.scale.to_le_bytes().to_vec());
        let zp = match q.act_type {
            ActType::Uint8 => self.raw(&format!("{t}_zero_point"), &[], pb::tensor_proto::DataType::Uint8, vec![p.zero_point.clamp(0, 255) as u8]),
            ActType::Int8 => self.raw(&format!("{t}_zero_point"), &[], pb::tensor_proto::DataType::Int8, vec![(p.zero_point.clamp(-128, 127) as i8) as u8]),
        };
        let (qn, dqn) = (format!("{t}_QuantizeLinear_Output"), format!("{t}_DequantizeLinear_Output"));
        self.node("QuantizeLinear", vec![t.into(), scale.clone(), zp.clone()], vec![qn.clone()], vec![]);
        self.node("DequantizeLinear", vec![qn, scale, zp], vec![dqn.clone()], vec![]);
        self.dq.insert(t.to_string(), (dqn, p));
    }

    /// A weight for a node: as is, or per-output-channel int8 behind a DequantizeLinear.
    fn weight(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        if self.quant.is_none() {
            return self.float(name, shape, data);
        }
        let (q, scales) = quantize_weight(shape[0], data);
        let qn = self.raw(&format!("{name}_quantized"), shape, pb::tensor_proto::DataType::Int8, q.iter().map(|v| *v as u8).collect());
        let sn = self.raw(&format!("{name}_scale"), &[shape[0]], pb::tensor_proto::DataType::Float, scales.iter().flat_map(|v| v.to_le_bytes()).collect());
        let zn = self.raw(&format!("{name}_zero_point"), &[shape[0]], pb::tensor_proto::DataType::Int8, vec![0u8; shape[0]]);
        let out = format!("{name}_DequantizeLinear_Output");
        self.node("DequantizeLinear", vec![qn, sn, zn], vec![out.clone()], vec![attr_int("axis", 0)]);
        out
    }

    /// A bias: as is, or int32 with scale input_scale × weight_scale[c] in a QDQ model.
    fn bias(&mut self, name: &str, data: &[f32], input_scale: Option<f32>, weight: &[f32]) -> String {
        let (Some(_), Some(sx)) = (self.quant, input_scale) else { return self.float(name, &[data.len()], data) };
        let (_, sw) = quantize_weight(data.len(), weight);
        let scales: Vec<f32> = sw.iter().map(|s| s * sx).collect();
        let q: Vec<i32> = data.iter().zip(&scales).map(|(b, s)| (*b as f64 / *s as f64).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32).collect();
        let qn = self.raw(&format!("{name}_quantized"), &[data.len()], pb::tensor_proto::DataType::Int32, q.iter().flat_map(|v| v.to_le_bytes()).collect());
        let sn = self.raw(&format!("{name}_scale"), &[data.len()], pb::tensor_proto::DataType::Float, scales.iter().flat_map(|v| v.to_le_bytes()).collect());
        let zn = self.raw(&format!("{name}_zero_point"), &[data.len()], pb::tensor_proto::DataType::Int32, vec![0u8; 4 * data.len()]);
        let out = format!("{name}_DequantizeLinear_Output");
        self.node("DequantizeLinear", vec![qn, sn, zn], vec![out.clone()], vec![attr_int("axis", 0)]);
        out
    }
}

/// Symmetric int8 per output channel (the first axis): values and scales.
pub fn quantize_weight(out_channels: usize, data: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let per = data.len() / out_channels.max(1);
    let mut q = Vec::with_capacity(data.len());
    let mut scales = Vec::with_capacity(out_channels);
    for c in data.chunks(per.max(1)) {
        let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(c.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
    }
    (q, scales)
}

fn tensor_type(elem: pb::tensor_proto::DataType, dims: &[Result<i64, &str>]) -> Option<pb::TypeProto> {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension { denotation: String::new(), value: Some(match d { Ok(v) => Value::DimValue(*v), Err(p) => Value::DimParam(p.to_string()) }) })
        .collect();
    Some(pb::TypeProto { denotation: String::new(), value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type: dt(elem), shape: Some(pb::TensorShapeProto { dim }) })) })
}

/// `m` with the float tensors `names` added to the graph's outputs (those not already
/// there), so a runtime returns them: what calibration observes.
pub fn expose(mut m: pb::ModelProto, names: &[String]) -> pb::ModelProto {
    if let Some(g) = m.graph.as_mut() {
        for n in names {
            if !g.output.iter().any(|o| &o.name == n) && !g.input.iter().any(|i| &i.name == n) {
                let r#type = Some(pb::TypeProto { denotation: String::new(), value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type: dt(pb::tensor_proto::DataType::Float), shape: None })) });
                g.output.push(pb::ValueInfoProto { name: n.clone(), r#type, ..Default::default() });
            }
        }
    }
    m
}

/// The input spec and classes as `metadata_props`, which `taoflow infer` reads back.
pub fn standard_metadata(g: &ModelGraph) -> Vec<(String, String)> {
    let input = serde_json::json!({
        "layout": "NCHW",
        "width": g.input.width,
        "height": g.input.height,
        "channels": g.input.channels,
        "color": if g.input.channels == 3 { "RGB" } else { "GRAY" },
        "resize": "bilinear",
        "scale": 1.0 / 255.0,
        "mean": g.input.mean,
        "std": g.input.std,
        "formula": "x = (pixel / 255 - mean[c]) / std[c]",
    });
    [
        ("taoflow.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("taoflow.arch".into(), g.arch.clone()),
        ("taoflow.classes".into(), serde_json::to_string(&g.classes).expect("strings serialise")),
        ("taoflow.input".into(), input.to_string()),
        ("taoflow.task".into(), g.task.as_str().into()),
    ]
    .into_iter()
    .chain(g.detection.as_ref().map(|d| ("taoflow.detection".to_string(), serde_json::to_string(d).expect("serialises"))))
    .collect()
}

/// Each graph output's name and shape (symbolic dims as their names), for reports.
pub fn output_shapes(m: &pb::ModelProto) -> serde_json::Value {
    let outs = m.graph.as_ref().map(|g| g.output.as_slice()).unwrap_or(&[]);
    serde_json::Value::Array(
        outs.iter()
            .map(|o| {
                let dims: Vec<serde_json::Value> = match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                    Some(pb::type_proto::Value::TensorType(t)) => t
                        .shape
                        .as_ref()
                        .map(|s| s.dim.iter().map(|d| match &d.value {
                            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => serde_json::json!(v),
                            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => serde_json::json!(p),
                            None => serde_json::Value::Null,
                        }).collect())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                serde_json::json!({"name": o.name, "shape": dims})
            })
            .collect(),
    )
}

/// Lower a model to ONNX. `weights` are by torchvision name, as in `weights.safetensors`.
pub fn export(g: &ModelGraph, weights: &HashMap<String, WeightData>, opts: &ExportOptions, quant: Option<&QuantSpec>) -> Result<pb::ModelProto, String> {
    let channels = g.validate()?;
    if !OPSETS.contains(&opts.opset) {
        return Err(format!("opset {} is not supported: choose {} to {}", opts.opset, OPSETS.start(), OPSETS.end()));
    }
    if quant.is_some() && opts.precision == Precision::Fp16 {
        return Err("a QDQ (INT8) model is exported from FP32, not FP16".into());
    }
    let low = Lowering::new(g, opts.fold_batchnorm || quant.is_some());
    let fp16 = opts.precision == Precision::Fp16;
    let mut b = Builder { nodes: Vec::new(), inits: Vec::new(), fp16, quant, dq: HashMap::new(), names: HashSet::new() };
    let w = |name: &str| weights.get(name).ok_or_else(|| format!("the weights lack `{name}`"));

    // Where each layer's value is read from (input is cast first in an FP16 model).
    let mut src: HashMap<String, String> = HashMap::new();
    let mut rank: HashMap<String, usize> = HashMap::new();
    let input_name = low.input.clone();
    let out_names: Vec<String> = g.task.onnx_outputs().iter().map(|s| s.to_string()).collect();
    if out_names.len() != g.outputs.len() {
        return Err(format!("a {} model has {} outputs, not {}", g.task.as_str(), out_names.len(), g.outputs.len()));
    }
    let input_t = if fp16 {
        let t = format!("{input_name}.fp16");
        b.node("Cast", vec![input_name.clone()], vec![t.clone()], vec![attr_int("to", dt(pb::tensor_proto::DataType::Float16) as i64)]);
        t
    } else {
        input_name.clone()
    };
    b.produced(&input_t);
    src.insert("input".into(), input_t.clone());
    rank.insert("input".into(), 4);
    let out_name = |l: &str| -> String {
        let t = low.tensor_of(l).unwrap_or(l).to_string();
        if fp16 && out_names.contains(&t) { format!("{t}.fp16") } else { t }
    };
    let mut clip_bounds: Option<(String, String)> = None;

    for l in &g.layers {
        let x_layer = &l.inputs[0];
        let x = src.get(x_layer).cloned().ok_or_else(|| format!("layer `{}` reads `{x_layer}` before it exists", l.name))?;
        let xr = rank[x_layer];
        if low.is_absorbed(&l.name) {
            // Emitted together with its batch norm.
            src.insert(l.name.clone(), String::new());
            rank.insert(l.name.clone(), 4);
            continue;
        }
        let out = out_name(&l.name);
        let r = match &l.op {
            Op::Conv2d { .. } => {
                conv(&mut b, g, &l.name, None, &x, &out, weights)?;
                4
            }
            Op::BatchNorm { eps, .. } => {
                if let Some(conv_name) = low.folded.get(&l.name) {
                    let conv_layer = g.layers.iter().find(|c| &c.name == conv_name).expect("folded conv exists");
                    let cx = src.get(&conv_layer.inputs[0]).cloned().expect("conv input exists");
                    conv(&mut b, g, conv_name, Some((&l.name, *eps)), &cx, &out, weights)?;
                } else {
                    let p = &l.name;
                    let (sc, sh, m, v) = (w(&format!("{p}.weight"))?, w(&format!("{p}.bias"))?, w(&format!("{p}.running_mean"))?, w(&format!("{p}.running_var"))?);
                    let ins = vec![
                        b.read(&x),
                        b.float(&format!("{p}.weight"), &sc.shape, &sc.data),
                        b.float(&format!("{p}.bias"), &sh.shape, &sh.data),
                        b.float(&format!("{p}.running_mean"), &m.shape, &m.data),
                        b.float(&format!("{p}.running_var"), &v.shape, &v.data),
                    ];
                    b.node("BatchNormalization", ins, vec![out.clone()], vec![attr_float("epsilon", *eps as f32)]);
                }
                xr
            }
            Op::Relu => {
                let i = b.read(&x);
                b.node("Relu", vec![i], vec![out.clone()], vec![]);
                xr
            }
            Op::Sigmoid => {
                let i = b.read(&x);
                b.node("Sigmoid", vec![i], vec![out.clone()], vec![]);
                xr
            }
            Op::Relu6 => {
                if clip_bounds.is_none() {
                    clip_bounds = Some((b.float("relu6.min", &[], &[0.0]), b.float("relu6.max", &[], &[6.0])));
                }
                let (lo, hi) = clip_bounds.clone().expect("set above");
                let i = b.read(&x);
                b.node("Clip", vec![i, lo, hi], vec![out.clone()], vec![]);
                xr
            }
            Op::MaxPool { kernel, stride, padding } => {
                if xr != 4 {
                    return Err(format!("max pool `{}` reads a {xr}-D tensor; ONNX export needs NCHW", l.name));
                }
                let i = b.read(&x);
                let attrs = vec![
                    attr_ints("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]),
                    attr_ints("strides", &[stride[0] as i64, stride[1] as i64]),
                    attr_ints("pads", &[padding[0] as i64, padding[1] as i64, padding[0] as i64, padding[1] as i64]),
                ];
                b.node("MaxPool", vec![i], vec![out.clone()], attrs);
                4
            }
            Op::GlobalAvgPool => {
                if xr != 4 {
                    return Err(format!("global average pool `{}` reads a {xr}-D tensor; ONNX export needs NCHW", l.name));
                }
                let pooled = format!("{}.pool", low.tensor_of(&l.name).unwrap_or(&l.name));
                let i = b.read(&x);
                b.node("GlobalAveragePool", vec![i], vec![pooled.clone()], vec![]);
                b.produced(&pooled);
                let pi = b.read(&pooled);
                b.node("Flatten", vec![pi], vec![out.clone()], vec![attr_int("axis", 1)]);
                2
            }
            Op::Linear { in_features, out_features, bias } => {
                if xr != 2 {
                    return Err(format!("linear layer `{}` reads a {xr}-D tensor; ONNX export needs a flattened input (add a global average pool)", l.name));
                }
                let p = &l.name;
                let wt = w(&format!("{p}.weight"))?;
                if fp16 {
                    // MatMul + Add: tract mistypes an FP16 Gemm's output.
                    let mut t = vec![0f32; wt.data.len()];
                    for o in 0..*out_features {
                        for i in 0..*in_features {
                            t[i * out_features + o] = wt.data[o * in_features + i];
                        }
                    }
                    let wn = b.float(&format!("{p}.weight_t"), &[*in_features, *out_features], &t);
                    let mm = if *bias { format!("{p}.matmul") } else { out.clone() };
                    let xi = b.read(&x);
                    b.node("MatMul", vec![xi, wn], vec![mm.clone()], vec![]);
                    if *bias {
                        let bt = w(&format!("{p}.bias"))?;
                        let bn = b.float(&format!("{p}.bias"), &[*out_features], &bt.data);
                        b.node("Add", vec![mm, bn], vec![out.clone()], vec![]);
                    }
                    b.produced(&out);
                    src.insert(l.name.clone(), out);
                    rank.insert(l.name.clone(), 2);
                    continue;
                }
                let sx = b.qparams_of(&x).map(|q| q.scale);
                let mut ins = vec![b.read(&x), b.weight(&format!("{p}.weight"), &[*out_features, *in_features], &wt.data)];
                if *bias {
                    let bt = w(&format!("{p}.bias"))?;
                    ins.push(b.bias(&format!("{p}.bias"), &bt.data, sx, &wt.data));
                }
                b.node("Gemm", ins, vec![out.clone()], vec![attr_int("transB", 1)]);
                2
            }
            Op::Dropout { .. } => {
                src.insert(l.name.clone(), x.clone());
                rank.insert(l.name.clone(), xr);
                continue;
            }
            Op::Add => {
                let mut ins = Vec::new();
                for i in &l.inputs {
                    ins.push(b.read(src.get(i).ok_or_else(|| format!("add `{}` reads `{i}` before it exists", l.name))?));
                }
                b.node(if ins.len() == 2 { "Add" } else { "Sum" }, ins, vec![out.clone()], vec![]);
                xr
            }
        };
        b.produced(&out);
        src.insert(l.name.clone(), out);
        rank.insert(l.name.clone(), r);
    }

    // The graph outputs, float32: `logits` [batch, classes] (flattened if the layer is 4-D),
    // or a detector's maps [batch, C, H/16, W/16] and [batch, 4C, H/16, W/16].
    let (c, h, wd) = (g.input.channels as i64, g.input.height as i64, g.input.width as i64);
    let mut outputs = Vec::new();
    for (o, name) in g.outputs.iter().zip(&out_names) {
        let last = src.get(o).cloned().ok_or_else(|| format!("output `{o}` is not a layer"))?;
        let mut last = b.read(&last);
        let ch = channels.get(o).copied().unwrap_or(0) as i64;
        let dims: Vec<Result<i64, &str>> = match g.task {
            super::graph::TaskKind::Classification => {
                if rank[o] == 4 {
                    let flat = format!("{last}.flat");
                    b.node("Flatten", vec![last], vec![flat.clone()], vec![attr_int("axis", 1)]);
                    last = flat;
                }
                vec![Err("batch"), Ok(ch)]
            }
            super::graph::TaskKind::Detection => {
                let stride = g.detection.as_ref().map(|d| d.stride).unwrap_or(16) as i64;
                vec![Err("batch"), Ok(ch), Ok((h + stride - 1) / stride), Ok((wd + stride - 1) / stride)]
            }
        };
        if fp16 {
            b.node("Cast", vec![last], vec![name.clone()], vec![attr_int("to", dt(pb::tensor_proto::DataType::Float) as i64)]);
        } else if &last != name {
            b.node("Identity", vec![last], vec![name.clone()], vec![]);
        }
        outputs.push(pb::ValueInfoProto { name: name.clone(), r#type: tensor_type(pb::tensor_proto::DataType::Float, &dims), ..Default::default() });
    }
    let graph = pb::GraphProto {
        node: b.nodes,
        name: g.arch.clone(),
        initializer: b.inits,
        input: vec![pb::ValueInfoProto { name: input_name, r#type: tensor_type(pb::tensor_proto::DataType::Float, &[Err("batch"), Ok(c), Ok(h), Ok(wd)]), ..Default::default() }],
        output: outputs,
        ..Default::default()
    };
    let mut meta = standard_metadata(g);
    meta.push(("taoflow.precision".into(), if quant.is_some() { "int8".into() } else if fp16 { "fp16".into() } else { "fp32".into() }));
    meta.extend(opts.metadata.iter().cloned());
    Ok(pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: opts.opset }],
        producer_name: "taoflow".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: meta.into_iter().map(|(key, value)| pb::StringStringEntryProto { key, value }).collect(),
        ..Default::default()
    })
}

/// A convolution, with the batch norm `bn` (name, eps) folded into it if given.
fn conv(b: &mut Builder<'_>, g: &ModelGraph, name: &str, bn: Option<(&str, f64)>, x: &str, out: &str, weights: &HashMap<String, WeightData>) -> Result<(), String> {
    let w = |n: &str| weights.get(n).ok_or_else(|| format!("the weights lack `{n}`"));
    let layer = g.layers.iter().find(|l| l.name == name).expect("conv exists");
    let Op::Conv2d { out_channels, kernel, stride, padding, groups, bias, .. } = &layer.op else { unreachable!("a conv") };
    let wt = w(&format!("{name}.weight"))?;
    let mut kernel_w = wt.data.clone();
    let mut bias_v: Option<Vec<f32>> = if *bias { Some(w(&format!("{name}.bias"))?.data.clone()) } else { None };
    if let Some((p, eps)) = bn {
        let (sc, sh, m, v) = (w(&format!("{p}.weight"))?, w(&format!("{p}.bias"))?, w(&format!("{p}.running_mean"))?, w(&format!("{p}.running_var"))?);
        let per = kernel_w.len() / out_channels;
        let mut bv = bias_v.unwrap_or_else(|| vec![0.0; *out_channels]);
        for o in 0..*out_channels {
            let s = (sc.data[o] as f64 / (v.data[o] as f64 + eps).sqrt()) as f32;
            for k in &mut kernel_w[o * per..(o + 1) * per] {
                *k *= s;
            }
            bv[o] = ((bv[o] as f64 - m.data[o] as f64) * s as f64 + sh.data[o] as f64) as f32;
        }
        bias_v = Some(bv);
    }
    let sx = b.qparams_of(x).map(|q| q.scale);
    let mut ins = vec![b.read(x), b.weight(&format!("{name}.weight"), &wt.shape, &kernel_w)];
    if let Some(bv) = &bias_v {
        ins.push(b.bias(&format!("{name}.bias"), bv, sx, &kernel_w));
    }
    let attrs = vec![
        attr_ints("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]),
        attr_ints("strides", &[stride[0] as i64, stride[1] as i64]),
        attr_ints("pads", &padding.iter().map(|p| *p as i64).collect::<Vec<_>>()),
        attr_ints("dilations", &[1, 1]),
        attr_int("group", *groups as i64),
    ];
    b.node("Conv", ins, vec![out.to_string()], attrs);
    Ok(())
}

/// Encode and write a model atomically.
pub fn write(path: &std::path::Path, m: &pb::ModelProto) -> Result<(), String> {
    use prost::Message;
    let bytes = m.encode_to_vec();
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// The ONNX op types a model uses, counted (for the export report).
pub fn op_counts(m: &pb::ModelProto) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for n in m.graph.iter().flat_map(|g| &g.node) {
        *c.entry(n.op_type.clone()).or_default() += 1;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::onnx_run::{Engine, OnnxModel};
    use crate::model::prune::{Criterion, Equalization, Norm, PruneConfig};
    use crate::model::testutil::{forward, graphs, random_weights};
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};
    use prost::Message;

    type B = NdArray<f32>;

    fn input(g: &ModelGraph, n: usize) -> (Vec<f32>, Tensor<B, 4>) {
        let s = &g.input;
        let x = crate::stages::export::probe_images(n, s.len(), 3);
        let t = Tensor::from_data(TensorData::new(x.clone(), [n, s.channels as usize, s.height as usize, s.width as usize]), &Default::default());
        (x, t)
    }

    /// `m` on every engine this process has (tract; onnxruntime, required by the test command).
    fn run_engines(m: &pb::ModelProto, x: &[f32], n: usize) -> Vec<(Engine, Vec<f32>)> {
        let bytes = m.encode_to_vec();
        crate::model::onnx_run::available_engines().into_iter().map(|e| (e, OnnxModel::from_bytes_on(&bytes, "test", e).unwrap().run(x, n).unwrap())).collect()
    }

    fn run_onnx(m: &pb::ModelProto, x: &[f32], n: usize) -> Vec<f32> {
        OnnxModel::from_bytes_on(&m.encode_to_vec(), "test", Engine::Tract).unwrap().run(x, n).unwrap()
    }

    fn rel(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        crate::stages::export::max_rel_diff(a, b)
    }

    fn pruned(g: &ModelGraph, w: &HashMap<String, WeightData>) -> (ModelGraph, HashMap<String, WeightData>) {
        let cfg = PruneConfig { norm: Norm::L2, criterion: Criterion::ParamRatio(0.5), granularity: 4, min_channels: 4, equalization: Equalization::Union, excluded: vec![] };
        let (sps, ls, keep) = crate::model::prune::select(g, w, &cfg).unwrap();
        (crate::model::prune::apply_to_graph(g, &sps, &ls, &keep).unwrap(), crate::model::prune::apply_to_weights(g, &ls, &keep, w).unwrap())
    }

    /// Every architecture, pruned too, runs in tract and onnxruntime as the Burn forward pass does.
    #[test]
    fn fp32_export_matches_burn_for_every_architecture() {
        for (i, g) in graphs().into_iter().enumerate() {
            let w = random_weights(&g, 10 + i as u64);
            let (pg, pw) = pruned(&g, &w);
            assert!(pg.param_count() < g.param_count());
            for (g, w) in [(g, w), (pg, pw)] {
                let (x, t) = input(&g, 3);
                let want = forward(&g, &w, t);
                for fold in [true, false] {
                    let m = export(&g, &w, &ExportOptions { fold_batchnorm: fold, ..Default::default() }, None).unwrap();
                    for (engine, got) in run_engines(&m, &x, 3) {
                        let d = rel(&got, &want);
                        assert!(d < 1e-4, "{} on {engine:?} (fold {fold}, {} params): {d:e}", g.arch, g.param_count());
                    }
                }
            }
        }
    }

    #[test]
    fn fp16_export_is_close_and_keeps_float32_io() {
        let g = &graphs()[2];
        let w = random_weights(g, 5);
        let (x, t) = input(g, 2);
        let want = forward(g, &w, t);
        let m = export(g, &w, &ExportOptions { precision: Precision::Fp16, ..Default::default() }, None).unwrap();
        let gr = m.graph.as_ref().unwrap();
        assert!(gr.initializer.iter().filter(|t| t.dims.len() == 4).all(|t| t.data_type == pb::tensor_proto::DataType::Float16 as i32));
        let d = rel(&run_onnx(&m, &x, 2), &want);
        assert!(d < 2e-2, "{d}");
    }

    #[test]
    fn metadata_names_and_dynamic_batch() {
        let g = &graphs()[0];
        let w = random_weights(g, 1);
        let m = export(g, &w, &ExportOptions::default(), None).unwrap();
        assert_eq!(m.opset_import[0].version, 17);
        let gr = m.graph.as_ref().unwrap();
        assert_eq!(gr.input[0].name, "input");
        assert_eq!(gr.output[0].name, OUTPUT);
        let meta: HashMap<_, _> = m.metadata_props.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        let classes: Vec<String> = serde_json::from_str(meta["taoflow.classes"]).unwrap();
        assert_eq!(classes, g.classes);
        let loaded = OnnxModel::from_bytes(&m.encode_to_vec(), "t").unwrap();
        assert_eq!(loaded.input, g.input);
        // Several batch sizes through one model.
        for n in [1, 4] {
            let (x, _) = input(g, n);
            assert_eq!(loaded.run(&x, n).unwrap().len(), n * g.classes.len());
        }
    }

    #[test]
    fn qdq_model_runs_and_stays_close_to_fp32() {
        use crate::model::calibrate::{collect, quant_spec, ranges, Method};
        for g in [&graphs()[1], &graphs()[2]] {
            let w = random_weights(g, 3);
            let device = Default::default();
            let (net, _) = crate::model::net::GraphNet::<B>::new(g, &device).unwrap().load_weights(&w, &device).unwrap();
            let low = Lowering::new(g, true);
            let batches: Vec<(Vec<f32>, usize)> = (0..2).map(|k| (crate::stages::export::probe_images(8, g.input.len(), 100 + k), 8)).collect();
            let stats = collect(g, &net, &low, &batches, &device).unwrap();
            // The same statistics through the ONNX export in onnxruntime.
            if crate::model::onnx_run::available_engines().contains(&Engine::Onnxruntime) {
                let via_ort = crate::model::calibrate::collect_onnx(g, &w, &low, &batches).unwrap();
                assert_eq!(via_ort.keys().collect::<Vec<_>>(), stats.keys().collect::<Vec<_>>());
                for (k, s) in &stats {
                    let o = &via_ort[k];
                    for m in [Method::MinMax, Method::Percentile { percentile: 99.99 }, Method::Entropy] {
                        let (a, b) = (s.threshold(m), o.threshold(m));
                        assert!((a - b).abs() <= 1e-3 * a.abs().max(1e-3) + s.amax() / 1024.0, "{} `{k}` {m:?}: Burn {a}, onnxruntime {b}", g.arch);
                    }
                }
            }
            let r = ranges(&stats, Method::MinMax);
            let (x, t) = input(g, 4);
            let want = forward(g, &w, t);
            for at in [ActType::Uint8, ActType::Int8] {
                let spec = quant_spec(&r, &low.quantized_tensors(g), at).unwrap();
                let m = export(g, &w, &ExportOptions::default(), Some(&spec)).unwrap();
                let ops = op_counts(&m);
                assert!(ops["QuantizeLinear"] >= spec.activations.len() && ops["DequantizeLinear"] > ops["Conv"], "{ops:?}");
                for (engine, got) in run_engines(&m, &x, 4) {
                    let d = rel(&got, &want);
                    assert!(d < 0.25, "{} {at:?} on {engine:?}: int8 differs from fp32 by {d}", g.arch);
                }
            }
            // The cache names every tensor of the FP32 export, and only those.
            let fp32 = export(g, &w, &ExportOptions::default(), None).unwrap();
            let gr = fp32.graph.as_ref().unwrap();
            let names: HashSet<&str> = gr.node.iter().flat_map(|n| n.output.iter().map(|s| s.as_str())).chain(["input"]).collect();
            for k in r.keys() {
                assert!(names.contains(k.as_str()), "cache tensor `{k}` is not in the exported model");
            }
        }
    }

    #[test]
    fn weights_quantize_per_channel() {
        let (q, s) = quantize_weight(2, &[1.0, -0.5, 0.0, 0.03, -0.04, 0.01]);
        assert_eq!(s.len(), 2);
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-9 && (s[1] - 0.04 / 127.0).abs() < 1e-9);
        assert_eq!(q, vec![127, -64, 0, 95, -127, 32]);
    }

    #[test]
    fn bad_options_are_refused() {
        let g = &graphs()[0];
        let w = random_weights(g, 1);
        assert!(export(g, &w, &ExportOptions { opset: 11, ..Default::default() }, None).unwrap_err().contains("opset 11"));
        let mut w2 = w.clone();
        w2.remove("fc.weight");
        assert!(export(g, &w2, &ExportOptions::default(), None).unwrap_err().contains("fc.weight"));
    }
}
