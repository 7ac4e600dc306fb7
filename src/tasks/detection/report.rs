//! A detection evaluation as people read it: COCO's twelve numbers, TAO's mAP, a per-class
//! table, `metrics.json` and precision-recall curves as PNG. `taoflow eval-detections`
//! produces it from files; the detection `evaluate` stage will produce the same.

use std::path::Path;

use serde::Serialize;

use super::coco::{self, CocoReport, STAT_NAMES};
use super::tao_ap::{self, ApMode, ClassEval, TaoReport};
use super::{Detections, io};

/// TAO's per-class evaluation settings given as `value` (every class) or `class=value`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalOptions {
    pub classes: Option<Vec<String>>,
    pub iou: Vec<String>,
    pub min_height: Vec<String>,
    pub max_height: Vec<String>,
    pub min_width: Vec<String>,
    pub max_width: Vec<String>,
    pub ap_mode: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DetectionReport {
    pub images: usize,
    pub ground_truth: usize,
    pub detections: usize,
    /// `AP`, `AP50`, … as pycocotools' `stats` (−1 where it prints −1).
    pub coco: serde_json::Map<String, serde_json::Value>,
    pub coco_per_class: Vec<coco::ClassResult>,
    pub tao: TaoReport,
    pub tao_settings: Vec<(String, ClassEval)>,
    /// Detections whose class the ground truth lacks: not evaluated.
    pub skipped: Vec<(String, usize)>,
    #[serde(skip)]
    pub coco_report: Option<CocoReport>,
    /// What was evaluated (for the picture of it).
    #[serde(skip)]
    pub data: Option<Detections>,
}

/// The picture `write` draws: images from `dir`, `count` of them, detections scored at
/// least `min_score`.
#[derive(Debug, Clone)]
pub struct GridOptions {
    pub images: super::grid::Images,
    pub count: usize,
    pub min_score: f64,
}

/// `[class=]value` settings → one value per class (later entries win).
fn per_class(spec: &[String], classes: &[String], what: &str, unit_range: bool, default: f64) -> Result<Vec<f64>, String> {
    let mut out = vec![default; classes.len()];
    for s in spec {
        let (cls, val) = match s.split_once('=') {
            Some((c, v)) => (Some(c.trim()), v.trim()),
            None => (None, s.trim()),
        };
        let v: f64 = val.parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| format!("`--{what} {s}`: `{val}` is not a number"))?;
        if unit_range && !(0.0..=1.0).contains(&v) {
            return Err(format!("`--{what} {s}`: {v} is outside [0, 1]"));
        }
        if !unit_range && v < 0.0 {
            return Err(format!("`--{what} {s}`: a box size is a non-negative number of pixels"));
        }
        match cls {
            None => out.iter_mut().for_each(|o| *o = v),
            Some(c) => {
                let k = classes.iter().position(|n| n.eq_ignore_ascii_case(c)).ok_or_else(|| format!("`--{what} {s}`: no class `{c}` in the ground truth (classes: {})", classes.join(", ")))?;
                out[k] = v;
            }
        }
    }
    Ok(out)
}

/// Evaluate detections `dets` against ground truth `gt` (files or folders, see [`io`]).
pub fn evaluate_files(gt: &Path, dets: &Path, o: &EvalOptions) -> Result<DetectionReport, String> {
    let mut g = io::load_ground_truth(gt, o.classes.as_deref())?;
    let skipped = io::load_detections(&mut g, dets)?;
    evaluate(g.data, o, skipped.unknown_classes.into_iter().collect())
}

/// Evaluate detections already in memory (kept in the report for its picture).
pub fn evaluate(d: Detections, o: &EvalOptions, skipped: Vec<(String, usize)>) -> Result<DetectionReport, String> {
    let mode = match &o.ap_mode {
        None => ApMode::Integrate,
        Some(m) => ApMode::parse(m).ok_or_else(|| format!("`--ap-mode {m}`: use `sample` (VOC 11-point) or `integrate` (area under the curve)"))?,
    };
    let cls = &d.classes;
    let iou = per_class(&o.iou, cls, "iou", true, 0.5)?;
    let min_h = per_class(&o.min_height, cls, "min-height", false, 0.0)?;
    let max_h = per_class(&o.max_height, cls, "max-height", false, 9999.0)?;
    let min_w = per_class(&o.min_width, cls, "min-width", false, 0.0)?;
    let max_w = per_class(&o.max_width, cls, "max-width", false, 9999.0)?;
    let cfg: Vec<ClassEval> = (0..cls.len()).map(|k| ClassEval { iou: iou[k], min_height: min_h[k], max_height: max_h[k], min_width: min_w[k], max_width: max_w[k] }).collect();
    let c = coco::evaluate(&d);
    let tao = tao_ap::evaluate(&d, &cfg, mode);
    let coco_map = STAT_NAMES.iter().zip(c.stats).map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
    Ok(DetectionReport {
        images: d.images.len(),
        ground_truth: d.gts.iter().filter(|g| !g.iscrowd).count(),
        detections: d.dets.len(),
        coco: coco_map,
        coco_per_class: c.per_class.clone(),
        tao,
        tao_settings: cls.iter().cloned().zip(cfg).collect(),
        skipped,
        coco_report: Some(c),
        data: Some(d),
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

fn fmt_coco(v: f64) -> String {
    if v < 0.0 { "-".into() } else { format!("{v:.4}") }
}

impl DetectionReport {
    /// The text `eval-detections` prints.
    pub fn render(&self) -> String {
        let mut s = format!("{} image(s), {} ground-truth box(es), {} detection(s)\n\nCOCO (pycocotools semantics):\n", self.images, self.ground_truth, self.detections);
        if let Some(c) = &self.coco_report {
            s.push_str(&c.summary());
        }
        let mode = match self.tao.mode {
            ApMode::Sample => "11-point sample",
            ApMode::Integrate => "integrate",
        };
        s.push_str(&format!("\nTAO mAP ({mode}): {}\n\n", fmt_opt(self.tao.map)));
        let w = self.coco_per_class.iter().map(|c| c.class.len()).max().unwrap_or(5).max(5);
        s.push_str(&format!("{:<w$}  {:>6}  {:>6}  {:>7}  {:>7}  {:>7}  {:>7}  {:>5}  {:>7}\n", "class", "gt", "dets", "AP", "AP50", "AP75", "AR100", "IoU", "TAO AP"));
        for (c, t) in self.coco_per_class.iter().zip(&self.tao.per_class) {
            let iou = self.tao_settings.iter().find(|(n, _)| *n == c.class).map_or(0.5, |(_, e)| e.iou);
            s.push_str(&format!(
                "{:<w$}  {:>6}  {:>6}  {:>7}  {:>7}  {:>7}  {:>7}  {:>5.2}  {:>7}\n",
                c.class,
                c.ground_truth,
                c.detections,
                fmt_coco(c.ap),
                fmt_coco(c.ap50),
                fmt_coco(c.ap75),
                fmt_coco(c.ar100),
                iou,
                fmt_opt(t.ap)
            ));
        }
        for (k, n) in &self.skipped {
            s.push_str(&format!("warning: {n} detection(s) of {k}, which the ground truth does not have, were not evaluated\n"));
        }
        s
    }

    /// `metrics.json`, `pr_curves.png` (IoU 0.50, one curve per class) and, with `grid`,
    /// `predictions.png` (ground truth green, detections red) into `dir`, each written to a
    /// temporary file and renamed, so a failure leaves no half file.
    /// `metrics.json` (the report, with `extra`'s entries beside its own), `pr_curves.png` and
    /// with `grid` a picture of predictions, into `dir`.
    pub fn write(&self, dir: &Path, grid: Option<&GridOptions>, extra: serde_json::Map<String, serde_json::Value>) -> Result<Vec<std::path::PathBuf>, String> {
        // the picture first: a wrong image folder fails before anything is written
        let picture = match grid {
            Some(g) => Some(super::grid::draw(self.data.as_ref().expect("evaluated"), &g.images, g.count, g.min_score, 320)?),
            None => None,
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Some(o) = v.as_object_mut() {
            o.extend(extra);
        }
        let json = serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?;
        let mj = dir.join("metrics.json");
        crate::store::write_atomic(&mj, &json).map_err(|e| format!("cannot write `{}`: {e}", mj.display()))?;
        let png = dir.join("pr_curves.png");
        let c = self.coco_report.as_ref().expect("evaluated");
        let curves: Vec<(String, f64, Vec<f64>)> = c.per_class.iter().filter(|k| !k.pr50.is_empty()).map(|k| (format!("{} AP50", k.class), k.ap50, k.pr50.clone())).collect();
        crate::plot::pr_curves("PRECISION AT IOU 0.5", &c.recall_points, &curves, &png)?;
        let mut files = vec![mj, png];
        if let Some(p) = picture {
            let path = dir.join("predictions.png");
            let png = crate::data::image_io::encode_png(&image::DynamicImage::ImageRgb8(p))?;
            crate::store::write_atomic(&path, &png).map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            files.push(path);
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_settings() {
        let cls = vec!["car".to_string(), "pedestrian".to_string()];
        assert_eq!(per_class(&["0.7".into(), "Pedestrian=0.5".into()], &cls, "iou", true, 0.5).unwrap(), vec![0.7, 0.5]);
        let e = per_class(&["1.5".into()], &cls, "iou", true, 0.5).unwrap_err();
        assert!(e.contains("outside [0, 1]"), "{e}");
        let e = per_class(&["bus=0.5".into()], &cls, "iou", true, 0.5).unwrap_err();
        assert!(e.contains("no class `bus`") && e.contains("car, pedestrian"), "{e}");
        let e = per_class(&["-3".into()], &cls, "min-height", false, 0.0).unwrap_err();
        assert!(e.contains("non-negative"), "{e}");
    }
}
