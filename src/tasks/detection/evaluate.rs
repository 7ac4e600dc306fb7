//! A detector on a dataset split: forward passes, post-processing to boxes in each stored
//! image's pixels, and the report of [`super::report`] (TAO's metric and COCO's) with its
//! PR curves and a picture of predictions against ground truth.

use std::collections::HashMap;

use image::RgbImage;

use super::postprocess::{ClusterConfig, Detection, postprocess};
use super::report::{DetectionReport, EvalOptions, GridOptions};
use super::{DetBox, Detections, GtBox};
use crate::data::loader::{Dataset, LoaderOptions};
use crate::model::graph::ModelGraph;

/// A model's outputs for `n` images (NCHW f32): coverage `[n, C, h, w]` and boxes
/// `[n, 4C, h, w]`, flat.
pub type Forward<'a> = dyn FnMut(Vec<f32>, usize) -> Result<Vec<Vec<f32>>, String> + 'a;

/// Boxes of one image from a detector's outputs for a batch: image `i` of `n`, decoded and
/// clustered in input pixels, then scaled to an image of `size` (width, height).
pub fn image_detections(graph: &ModelGraph, outs: &[Vec<f32>], n: usize, i: usize, clustering: &[ClusterConfig], size: (u32, u32)) -> Result<Vec<Detection>, String> {
    let head = graph.detection.as_ref().ok_or("not a detector")?;
    decode_image(head, (graph.input.width as usize, graph.input.height as usize), graph.classes.len(), outs, n, i, clustering, size)
}

/// [`image_detections`] from the head's settings, the input size and the class count (what
/// an exported model's metadata carries).
#[allow(clippy::too_many_arguments)]
pub fn decode_image(head: &super::DetectionHead, input: (usize, usize), nc: usize, outs: &[Vec<f32>], n: usize, i: usize, clustering: &[ClusterConfig], size: (u32, u32)) -> Result<Vec<Detection>, String> {
    let (iw, ih) = input;
    let grid = head.grid(iw, ih);
    let plane = grid.out_w * grid.out_h;
    if outs.len() != 2 || outs[0].len() != n * nc * plane || outs[1].len() != n * 4 * nc * plane {
        return Err(format!("the detector's outputs have {:?} values, expected {} and {}", outs.iter().map(|o| o.len()).collect::<Vec<_>>(), n * nc * plane, n * 4 * nc * plane));
    }
    let cov = &outs[0][i * nc * plane..(i + 1) * nc * plane];
    let bbox = &outs[1][i * 4 * nc * plane..(i + 1) * 4 * nc * plane];
    let (fx, fy) = (size.0 as f32 / iw as f32, size.1 as f32 / ih as f32);
    Ok(postprocess(cov, bbox, &grid, clustering).into_iter().map(|d| Detection { bbox: [d.bbox[0] * fx, d.bbox[1] * fy, d.bbox[2] * fx, d.bbox[3] * fy], ..d }).collect())
}

/// What a run over a split gives: the detections against the ground truth (in stored-image
/// pixels), the first images as the model saw them (for the picture), forward seconds.
pub struct Run {
    pub data: Detections,
    pub pictures: HashMap<usize, (RgbImage, [f32; 2])>,
    pub forward_seconds: f64,
}

/// Run `forward` over `split` and post-process with `clustering`.
pub fn run(graph: &ModelGraph, forward: &mut Forward<'_>, ds: &Dataset, split: &str, batch: usize, clustering: &[ClusterConfig], pictures: usize) -> Result<Run, String> {
    if ds.manifest.task != "detection" {
        return Err(format!("a detector is evaluated on a detection dataset; this one is for {}", ds.manifest.task));
    }
    if graph.classes != ds.manifest.classes {
        return Err(format!(
            "the model detects {} and the dataset has {}\n  = hint: evaluate on a dataset converted with the same classes, in the same order",
            graph.classes.join(", "),
            ds.manifest.classes.join(", ")
        ));
    }
    let spec = graph.input.clone();
    let mut d = Detections { images: Vec::new(), classes: graph.classes.clone(), gts: Vec::new(), dets: Vec::new() };
    let mut pics = HashMap::new();
    let mut secs = 0.0;
    let opts = LoaderOptions { batch_size: batch, shuffle: false, min_box_size: 0.0, ..Default::default() };
    for b in ds.stream(split, &spec, &opts).map_err(|e| e.to_string())? {
        let b = b.map_err(|e| e.to_string())?;
        let images = if pics.len() < pictures { Some(b.images.clone()) } else { None };
        let t0 = std::time::Instant::now();
        let outs = forward(b.images, b.len)?;
        secs += t0.elapsed().as_secs_f64();
        for i in 0..b.len {
            let idx = d.images.len();
            d.images.push(b.keys[i].clone());
            let t = b.targets[i].as_ref().ok_or_else(|| format!("sample `{}` has no boxes record", b.keys[i]))?;
            for g in &t.boxes {
                let [x1, y1, x2, y2] = g.bbox.map(|v| v as f64);
                d.gts.push(GtBox { image: idx, class: g.class_id as usize, bbox: [x1, y1, x2 - x1, y2 - y1], area: (x2 - x1) * (y2 - y1), iscrowd: false });
            }
            for det in image_detections(graph, &outs, b.len, i, clustering, (t.width, t.height))? {
                let [x1, y1, x2, y2] = det.bbox.map(|v| v as f64);
                d.dets.push(DetBox { image: idx, class: det.class, bbox: [x1, y1, x2 - x1, y2 - y1], score: det.confidence as f64 });
            }
            if let Some(px) = &images
                && pics.len() < pictures
            {
                let per = spec.len();
                let img = to_rgb(&px[i * per..(i + 1) * per], &spec);
                pics.insert(idx, (img, [spec.width as f32 / t.width.max(1) as f32, spec.height as f32 / t.height.max(1) as f32]));
            }
        }
    }
    Ok(Run { data: d, pictures: pics, forward_seconds: secs })
}

/// A model input (normalised NCHW f32) back to an RGB picture.
fn to_rgb(x: &[f32], spec: &crate::data::image_io::InputSpec) -> RgbImage {
    let (w, h) = (spec.width, spec.height);
    let plane = (w * h) as usize;
    let c = spec.channels as usize;
    RgbImage::from_fn(w, h, |px, py| {
        let i = (py * w + px) as usize;
        let v = |k: usize| {
            let k = k.min(c - 1);
            ((x[k * plane + i] * spec.std[k] + spec.mean[k]) * 255.0).round().clamp(0.0, 255.0) as u8
        };
        image::Rgb([v(0), v(1), v(2)])
    })
}

/// Evaluate and write `metrics.json`, `pr_curves.png` and `predictions.png` into `dir`.
/// `extra`: entries for metrics.json beside the report's; an `inference` object among them
/// gets the measured `images_per_second`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_into(graph: &ModelGraph, forward: &mut Forward<'_>, ds: &Dataset, split: &str, batch: usize, clustering: &[ClusterConfig], eval: &EvalOptions, grid: (usize, f64), dir: &std::path::Path, mut extra: serde_json::Map<String, serde_json::Value>) -> Result<(DetectionReport, f64), String> {
    let r = run(graph, forward, ds, split, batch, clustering, grid.0)?;
    let n = r.data.images.len();
    if n == 0 {
        return Err(format!("the dataset's `{split}` split is empty"));
    }
    let ips = n as f64 / r.forward_seconds.max(1e-9);
    let report = super::report::evaluate(r.data, eval, Vec::new())?;
    let g = (grid.0 > 0 && !r.pictures.is_empty()).then_some(GridOptions { images: super::grid::Images::Memory(r.pictures), count: grid.0, min_score: grid.1 });
    if let Some(serde_json::Value::Object(o)) = extra.get_mut("inference") {
        o.insert("images_per_second".into(), ips.into());
    }
    report.write(dir, g.as_ref(), extra)?;
    Ok((report, ips))
}
