//! `taoflow infer MODEL IMAGES…`: top-k classes of images under a model artifact (the Burn
//! forward pass) or an ONNX file (tract), preprocessed as the model says (input size,
//! channels, mean/std from `model.json` or the ONNX `taoflow.input` metadata).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::image_io::InputSpec;

#[derive(Debug, Serialize)]
pub struct Scored {
    pub index: usize,
    pub class: String,
    /// Softmax probability.
    pub probability: f32,
}

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<Scored>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

enum Runner {
    Burn(crate::model::net::GraphNet<burn::backend::NdArray<f32>>),
    Onnx(Box<crate::model::onnx_run::OnnxModel>),
}

pub struct Loaded {
    runner: Runner,
    pub input: InputSpec,
    pub classes: Vec<String>,
    pub kind: String,
    pub notes: Vec<String>,
}

/// A model artifact folder, an `.onnx` file, or a folder holding exactly one `.onnx` file
/// (an `export` or `quantize` output).
pub fn load(model: &Path) -> Result<Loaded, String> {
    if model.is_dir() && model.join("model.json").exists() {
        let device = Default::default();
        let (g, net) = crate::model::artifact::load::<burn::backend::NdArray<f32>>(model, &device)?;
        return Ok(Loaded { runner: Runner::Burn(net), input: g.input.clone(), classes: g.classes.clone(), kind: format!("model artifact ({})", g.arch), notes: vec![] });
    }
    let file: PathBuf = if model.is_dir() {
        let onnx: Vec<PathBuf> = std::fs::read_dir(model)
            .map_err(|e| format!("cannot read `{}`: {e}", model.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("onnx"))
            .collect();
        match onnx.as_slice() {
            [one] => one.clone(),
            [] => return Err(format!("`{}` is neither a model artifact (no model.json) nor holds an .onnx file", model.display())),
            many => return Err(format!("`{}` holds several ONNX files ({}); name one", model.display(), many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))),
        }
    } else if model.exists() {
        model.to_path_buf()
    } else {
        return Err(format!("`{}` does not exist\n  = hint: pass a model artifact folder (outputs/…/model) or an .onnx file", model.display()));
    };
    let m = crate::model::onnx_run::OnnxModel::load(&file)?;
    let mut notes = vec![];
    if !m.input_from_metadata {
        notes.push(format!("`{}` has no taoflow.input metadata: images are resized to {}x{} and scaled to [0, 1] without mean/std", file.display(), m.input.width, m.input.height));
    }
    let precision = m.metadata.get("taoflow.precision").cloned().unwrap_or_else(|| "unknown precision".into());
    Ok(Loaded { input: m.input.clone(), classes: m.classes.clone(), kind: format!("ONNX ({precision}, tract)"), runner: Runner::Onnx(Box::new(m)), notes })
}

impl Loaded {
    /// Scores `[n, outputs]` for `n` normalised images.
    pub fn run(&self, x: Vec<f32>, n: usize) -> Result<Vec<f32>, String> {
        match &self.runner {
            Runner::Burn(net) => {
                use burn::tensor::{Tensor, TensorData};
                let s = &self.input;
                let t = Tensor::from_data(TensorData::new(x, [n, s.channels as usize, s.height as usize, s.width as usize]), &Default::default());
                net.forward(t).into_data().to_vec::<f32>().map_err(|e| format!("{e:?}"))
            }
            Runner::Onnx(m) => m.run(&x, n),
        }
    }
}

/// Decode, resize and normalise one image file.
pub fn preprocess(path: &Path, spec: &InputSpec) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let img = crate::data::image_io::decode(&bytes)?;
    let px = crate::data::image_io::resize_u8(&img, spec, &mut fast_image_resize::Resizer::new())?;
    let mut out = vec![0f32; spec.len()];
    crate::data::image_io::normalize_into(&px, spec, &mut out);
    Ok(out)
}

pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Predict `images` in batches; an unreadable image gets an error entry, the rest go on.
pub fn predict(m: &Loaded, images: &[PathBuf], top_k: usize, batch: usize) -> Result<Vec<Prediction>, String> {
    let mut out: Vec<Prediction> = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let mut x = Vec::new();
        let mut ok = Vec::new();
        let base = out.len();
        for (i, p) in chunk.iter().enumerate() {
            match preprocess(p, &m.input) {
                Ok(v) => {
                    x.extend(v);
                    ok.push(i);
                    out.push(Prediction { image: p.display().to_string(), top: None, error: None });
                }
                Err(e) => out.push(Prediction { image: p.display().to_string(), top: None, error: Some(e) }),
            }
        }
        if ok.is_empty() {
            continue;
        }
        let scores = m.run(x, ok.len())?;
        let k = scores.len() / ok.len();
        for (row, i) in scores.chunks(k).zip(&ok) {
            let p = softmax(row);
            let mut idx: Vec<usize> = (0..k).collect();
            idx.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
            let top = idx.into_iter().take(top_k).map(|j| Scored { index: j, class: m.classes.get(j).cloned().unwrap_or_else(|| format!("class {j}")), probability: p[j] }).collect();
            out[base + i].top = Some(top);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, -2.0, 10.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.99 && p[1] > p[0] && p[0] > p[2], "{p:?}");
        // Large logits do not overflow.
        let p = softmax(&[1000.0, 1001.0]);
        assert!((p[1] - 0.7310586).abs() < 1e-5, "{p:?}");
    }
}
