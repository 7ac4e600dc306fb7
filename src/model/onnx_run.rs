//! Running ONNX models on the CPU: `taoflow infer` on exported files, `evaluate`'s forward
//! pass, the INT8 accuracy of a QDQ model, calibration, and parity tests of the exporter —
//! in onnxruntime when it can be loaded ([`super::ort_rt`]), else in tract.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::data::image_io::InputSpec;

type Plan = Arc<TypedRunnableModel>;

/// Which engine runs an [`OnnxModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// onnxruntime when it loads and takes the model, else tract.
    Auto,
    Tract,
    Onnxruntime,
}

enum Exec {
    Ort(super::ort_rt::OrtModel),
    Tract { model: Box<InferenceModel>, plans: Mutex<HashMap<usize, Plan>> },
}

pub struct OnnxModel {
    exec: Exec,
    pub input: InputSpec,
    pub classes: Vec<String>,
    /// Where the input spec came from: `taoflow.input` metadata, or guessed from the shape.
    pub input_from_metadata: bool,
    pub metadata: HashMap<String, String>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("engine", &self.engine()).field("input", &self.input).field("classes", &self.classes.len()).finish()
    }
}

/// Read the first input's static `[N, C, H, W]` dims (N may be symbolic).
fn input_dims(g: &pb::GraphProto) -> Option<(u32, u32, u32)> {
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let vi = g.input.iter().find(|i| !inits.contains(i.name.as_str()))?;
    let pb::type_proto::Value::TensorType(t) = vi.r#type.as_ref()?.value.as_ref()?;
    let dims: Vec<Option<i64>> = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
            _ => None,
        })
        .collect();
    match dims.as_slice() {
        [_, Some(c), Some(h), Some(w)] if *c > 0 && *h > 0 && *w > 0 => Some((*c as u32, *h as u32, *w as u32)),
        _ => None,
    }
}

/// The engines this process can run models on: tract, and onnxruntime where it loads. With
/// `TAOFLOW_REQUIRE_PYTHON` set (the test command), a missing onnxruntime is an error.
pub fn available_engines() -> Vec<Engine> {
    match super::ort_rt::runtime() {
        Ok(_) => vec![Engine::Tract, Engine::Onnxruntime],
        Err(e) => {
            assert!(std::env::var_os("TAOFLOW_REQUIRE_PYTHON").is_none(), "onnxruntime is required here (pip install onnxruntime): {e}");
            vec![Engine::Tract]
        }
    }
}

impl OnnxModel {
    pub fn load(path: &Path) -> Result<OnnxModel, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<OnnxModel, String> {
        Self::from_bytes_on(bytes, what, Engine::Auto)
    }

    /// The engine running this model: `onnxruntime <version>` or `tract`.
    pub fn engine(&self) -> String {
        match &self.exec {
            Exec::Ort(_) => super::ort_rt::describe(),
            Exec::Tract { .. } => "tract".into(),
        }
    }

    pub fn from_bytes_on(bytes: &[u8], what: &str, engine: Engine) -> Result<OnnxModel, String> {
        let not_onnx = |why: String| format!("`{what}` is not an ONNX model: {why}\n  = hint: pass a `.onnx` file written by `taoflow` export/quantize or another ONNX exporter, or a model artifact folder (with model.json)");
        let proto = pb::ModelProto::decode(bytes).map_err(|e| not_onnx(format!("it does not decode as an ONNX protobuf ({e})")))?;
        let Some(graph) = proto.graph.as_ref() else { return Err(not_onnx("it has no graph".into())) };
        if graph.node.is_empty() || graph.output.is_empty() || proto.opset_import.is_empty() {
            return Err(not_onnx("it has no nodes, outputs or opset".into()));
        }
        let metadata: HashMap<String, String> = proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        let (input, from_meta) = match metadata.get("taoflow.input") {
            Some(j) => (parse_input(j).map_err(|e| format!("`{what}`: metadata `taoflow.input` is invalid: {e}"))?, true),
            None => {
                let (c, h, w) = input_dims(graph).ok_or_else(|| format!("`{what}`: its input is not a static [N, C, H, W] image tensor and it has no `taoflow.input` metadata, so its preprocessing is unknown"))?;
                if c != 1 && c != 3 {
                    return Err(format!("`{what}`: its input has {c} channels; `taoflow infer` feeds images (1 or 3 channels)"));
                }
                (InputSpec::plain(w, h, c), false)
            }
        };
        let classes: Vec<String> = match metadata.get("taoflow.classes") {
            Some(j) => serde_json::from_str(j).map_err(|e| format!("`{what}`: metadata `taoflow.classes` is invalid: {e}"))?,
            None => Vec::new(),
        };
        let ort = match engine {
            Engine::Tract => None,
            Engine::Onnxruntime => Some(super::ort_rt::OrtModel::new(bytes).map_err(|e| format!("`{what}`: {e}"))?),
            Engine::Auto => match super::ort_rt::runtime() {
                Ok(_) => match super::ort_rt::OrtModel::new(bytes) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!("`{what}` runs in tract: {e}");
                        None
                    }
                },
                Err(_) => None,
            },
        };
        let exec = match ort {
            Some(m) => Exec::Ort(m),
            None => {
                let model = tract_onnx::onnx().model_for_proto_model(&proto).map_err(|e| format!("`{what}`: tract cannot load this ONNX model: {e:#}"))?;
                Exec::Tract { model: Box::new(model), plans: Mutex::new(HashMap::new()) }
            }
        };
        Ok(OnnxModel { exec, input, classes, input_from_metadata: from_meta, metadata })
    }

    fn plan(model: &InferenceModel, plans: &Mutex<HashMap<usize, Plan>>, shape: [usize; 4]) -> Result<Plan, String> {
        let n = shape[0];
        if let Some(p) = plans.lock().expect("plan cache").get(&n) {
            return Ok(p.clone());
        }
        let p = model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("tract cannot prepare the model for input {shape:?}: {e:#}"))?;
        plans.lock().expect("plan cache").insert(n, p.clone());
        Ok(p)
    }

    /// Run `n` normalised NCHW images; returns the first output (`[n, outputs]` row-major
    /// scores of a classifier).
    pub fn run(&self, images: &[f32], n: usize) -> Result<Vec<f32>, String> {
        Ok(self.run_all(images, n)?.swap_remove(0))
    }

    /// Every output of the model for `n` images, each flat (row-major).
    pub fn run_all(&self, images: &[f32], n: usize) -> Result<Vec<Vec<f32>>, String> {
        let s = &self.input;
        let shape = [n, s.channels as usize, s.height as usize, s.width as usize];
        if images.len() != shape.iter().product::<usize>() {
            return Err(format!("internal: {} values for input {shape:?}", images.len()));
        }
        let (model, plans) = match &self.exec {
            Exec::Ort(m) => return m.run(images, &shape),
            Exec::Tract { model, plans } => (model, plans),
        };
        let plan = Self::plan(model, plans, shape)?;
        let x = Tensor::from_shape(&shape, images).map_err(|e| format!("{e:#}"))?;
        let out = plan.run(tvec!(x.into())).map_err(|e| format!("tract failed to run the model: {e:#}"))?;
        out.iter()
            .map(|o| {
                let t = o.cast_to::<f32>().map_err(|e| format!("{e:#}"))?;
                let v = t.to_plain_array_view::<f32>().map_err(|e| format!("{e:#}"))?;
                Ok(v.iter().copied().collect())
            })
            .collect()
    }
}

fn parse_input(j: &str) -> Result<InputSpec, String> {
    let v: serde_json::Value = serde_json::from_str(j).map_err(|e| e.to_string())?;
    let u = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as u32).ok_or_else(|| format!("`{k}` missing"));
    let fl = |k: &str| -> Result<Vec<f32>, String> {
        v.get(k).and_then(|x| x.as_array()).map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()).ok_or_else(|| format!("`{k}` missing"))
    };
    let spec = InputSpec { width: u("width")?, height: u("height")?, channels: u("channels")?, mean: fl("mean")?, std: fl("std")? };
    spec.validate()?;
    Ok(spec)
}
