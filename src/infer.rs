//! `taoflow infer MODEL IMAGES…`: top-k classes of images under a model artifact (the Burn
//! forward pass) or an ONNX file (tract), preprocessed as the model says (input size,
//! channels, mean/std from `model.json` or the ONNX `taoflow.input` metadata). A detector
//! (`taoflow.task` = detection) gives boxes in each image's pixels, post-processed with the
//! settings the model carries (`detection` in model.json, `taoflow.detection` in ONNX).

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

/// A detected box, `[x1, y1, x2, y2]` in the image's pixels.
#[derive(Debug, Clone, Serialize)]
pub struct BoxOut {
    pub index: usize,
    pub class: String,
    pub confidence: f32,
    pub bbox: [f32; 4],
}

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<Scored>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boxes: Option<Vec<BoxOut>>,
    /// The image's width and height (detectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<(u32, u32)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

enum Runner {
    Burn(Box<crate::model::net::GraphNet<burn::backend::NdArray<f32>>>),
    Onnx(Box<crate::model::onnx_run::OnnxModel>),
}

pub struct Loaded {
    runner: Runner,
    pub input: InputSpec,
    pub classes: Vec<String>,
    /// A detector's grid and post-processing.
    pub detection: Option<crate::tasks::detection::DetectionHead>,
    pub kind: String,
    pub notes: Vec<String>,
}

/// A model artifact folder, an `.onnx` file, or a folder holding exactly one `.onnx` file
/// (an `export` or `quantize` output).
pub fn load(model: &Path) -> Result<Loaded, String> {
    if model.is_dir() && model.join("model.json").exists() {
        // Its ONNX export in onnxruntime where that loads (the same computation, faster), else Burn.
        if crate::model::ort_rt::runtime().is_ok() {
            let (g, w) = crate::model::artifact::read_raw(model)?;
            let proto = crate::model::onnx::export(&g, &w, &crate::model::onnx::ExportOptions::default(), None)?;
            let m = crate::model::onnx_run::OnnxModel::from_bytes_on(&prost::Message::encode_to_vec(&proto), &model.display().to_string(), crate::model::onnx_run::Engine::Onnxruntime)?;
            let kind = format!("model artifact ({}, {})", g.arch, m.engine());
            return Ok(Loaded { runner: Runner::Onnx(Box::new(m)), input: g.input.clone(), classes: g.classes.clone(), detection: g.detection.clone(), kind, notes: vec![] });
        }
        let device = Default::default();
        let (g, net) = crate::model::artifact::load::<burn::backend::NdArray<f32>>(model, &device)?;
        return Ok(Loaded { runner: Runner::Burn(Box::new(net)), input: g.input.clone(), classes: g.classes.clone(), detection: g.detection.clone(), kind: format!("model artifact ({}, burn-ndarray)", g.arch), notes: vec![] });
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
    let detection = match m.metadata.get("taoflow.detection") {
        Some(j) => Some(serde_json::from_str(j).map_err(|e| format!("`{}`: metadata `taoflow.detection` is invalid: {e}", file.display()))?),
        None => None,
    };
    Ok(Loaded { input: m.input.clone(), classes: m.classes.clone(), detection, kind: format!("ONNX ({precision}, {})", m.engine()), runner: Runner::Onnx(Box::new(m)), notes })
}

impl Loaded {
    /// Every output for `n` normalised images, each flat (a classifier: `[n, classes]`).
    pub fn run(&self, x: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, String> {
        match &self.runner {
            Runner::Burn(net) => {
                use burn::tensor::{Tensor, TensorData};
                let s = &self.input;
                let t = Tensor::from_data(TensorData::new(x, [n, s.channels as usize, s.height as usize, s.width as usize]), &Default::default());
                net.forward_outputs(t).into_iter().map(|t| t.into_data().to_vec::<f32>().map_err(|e| format!("{e:?}"))).collect()
            }
            Runner::Onnx(m) => m.run_all(&x, n),
        }
    }
}

/// Decode, resize and normalise one image file; also its width and height.
pub fn preprocess(path: &Path, spec: &InputSpec) -> Result<(Vec<f32>, (u32, u32)), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let img = crate::data::image_io::decode(&bytes)?;
    let size = (img.width(), img.height());
    let px = crate::data::image_io::resize_u8(&img, spec, &mut fast_image_resize::Resizer::new())?;
    let mut out = vec![0f32; spec.len()];
    crate::data::image_io::normalize_into(&px, spec, &mut out);
    Ok((out, size))
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
                Ok((v, size)) => {
                    x.extend(v);
                    ok.push(i);
                    out.push(Prediction { image: p.display().to_string(), top: None, boxes: None, size: Some(size), error: None });
                }
                Err(e) => out.push(Prediction { image: p.display().to_string(), top: None, boxes: None, size: None, error: Some(e) }),
            }
        }
        if ok.is_empty() {
            continue;
        }
        let outs = m.run(x, ok.len())?;
        if let Some(head) = &m.detection {
            for (j, i) in ok.iter().enumerate() {
                let size = out[base + i].size.expect("read above");
                let dets = crate::tasks::detection::evaluate::decode_image(head, (m.input.width as usize, m.input.height as usize), m.classes.len(), &outs, ok.len(), j, &head.clustering, size)?;
                out[base + i].boxes = Some(dets.into_iter().map(|d| BoxOut { index: d.class, class: m.classes.get(d.class).cloned().unwrap_or_else(|| format!("class {}", d.class)), confidence: d.confidence, bbox: d.bbox }).collect());
            }
            continue;
        }
        for p in out[base..].iter_mut() {
            p.size = None;
        }
        let scores = &outs[0];
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

/// Drop boxes scored below `min_score`.
pub fn keep_scored(preds: &mut [Prediction], min_score: f32) {
    for p in preds.iter_mut() {
        if let Some(b) = p.boxes.as_mut() {
            b.retain(|b| b.confidence >= min_score);
        }
    }
}

/// The file stem of an image path (`a/b/000012.png` → `000012`).
fn stem(image: &str) -> String {
    Path::new(image).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| image.to_string())
}

/// One KITTI label file per image with boxes: `class 0 0 0 x1 y1 x2 y2 0 0 0 0 0 0 0 score`.
pub fn write_kitti(preds: &[Prediction], dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for p in preds {
        let Some(boxes) = &p.boxes else { continue };
        let text: String = boxes.iter().map(|b| format!("{} 0.00 0 0.00 {:.2} {:.2} {:.2} {:.2} 0.00 0.00 0.00 0.00 0.00 0.00 0.00 {:.6}\n", b.class.replace(' ', "_"), b.bbox[0], b.bbox[1], b.bbox[2], b.bbox[3], b.confidence)).collect();
        let path = dir.join(format!("{}.txt", stem(&p.image)));
        crate::store::write_atomic(&path, text.as_bytes()).map_err(|e| format!("`{}`: {e}", path.display()))?;
    }
    Ok(())
}

/// Each image with its boxes drawn (one colour per class), as `<stem>.png` in `dir`.
pub fn draw_boxes(preds: &[Prediction], dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for p in preds {
        let Some(boxes) = &p.boxes else { continue };
        let mut img = image::open(&p.image).map_err(|e| format!("`{}`: {e}", p.image))?.to_rgb8();
        for b in boxes {
            let c = crate::plot::PALETTE[b.index % crate::plot::PALETTE.len()].0;
            crate::data::preview::outline(&mut img, b.bbox, c);
        }
        let png = crate::data::image_io::encode_png(&image::DynamicImage::ImageRgb8(img))?;
        let path = dir.join(format!("{}.png", stem(&p.image)));
        crate::store::write_atomic(&path, &png).map_err(|e| format!("`{}`: {e}", path.display()))?;
    }
    Ok(())
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
