//! Object detection (TAO's DetectNet_v2 family, issue #20).
//!
//! - [`coco`]: the COCO box metrics exactly as pycocotools' `COCOeval` computes them
//!   (12 summary numbers, per-class AP, precision-recall curves);
//! - [`tao_ap`]: TAO's own metric (per-class IoU threshold, box-size window, 11-point
//!   `sample` or `integrate` AP, mAP over classes);
//! - [`grid`]: a picture of images with ground truth and detections drawn;
//! - [`io`]: ground truth and detections from COCO JSON or KITTI label folders, with errors
//!   that name the file and the line;
//! - [`postprocess`]: gridbox outputs → boxes (coverage threshold, decoding, DBSCAN over
//!   1 − IoU or NMS, per-class settings);
//! - [`loss`]: DetectNet_v2's cost (weighted coverage BCE, coverage-weighted box L1, class
//!   and objective weights), the reference for the engines' loss;
//! - [`targets`]: TAO's bbox rasteriser (coverage ellipses, dead zone, soft coverage by
//!   4×4 supersampling, nearer object wins) that turns labels into training targets.

pub mod coco;
pub mod evaluate;
pub mod export;
pub mod grid;
pub mod io;
pub mod loss;
pub mod postprocess;
pub mod report;
pub mod settings;
pub mod tao_ap;
pub mod targets;
pub mod train;

use serde::{Deserialize, Serialize};

/// A detector's grid and post-processing, kept in the model artifact (`model.json`'s
/// `detection`) so that evaluate, infer and export decode it the way it was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionHead {
    /// Input pixels per grid cell (16).
    pub stride: usize,
    /// `objective_set.bbox.scale`: box distances are predicted in units of this many pixels (35).
    pub bbox_scale: f32,
    /// `objective_set.bbox.offset`: grid-cell centres sit at `x·stride + offset` (0.5).
    pub bbox_offset: f32,
    /// Post-processing per class, in class order.
    pub clustering: Vec<postprocess::ClusterConfig>,
    /// The rasteriser and cost it was trained with, which `retrain` keeps unless its stage
    /// says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<train::TargetSettings>,
}

impl DetectionHead {
    /// TAO's defaults for `classes` classes.
    pub fn detectnet(classes: usize) -> Self {
        DetectionHead { stride: 16, bbox_scale: 35.0, bbox_offset: 0.5, clustering: vec![postprocess::ClusterConfig::default(); classes], targets: None }
    }

    pub fn validate(&self, classes: usize) -> Result<(), String> {
        if self.stride == 0 || !(self.bbox_scale > 0.0 && self.bbox_scale.is_finite()) || !self.bbox_offset.is_finite() {
            return Err(format!("detection settings: stride {} and bbox_scale {} must be positive", self.stride, self.bbox_scale));
        }
        if self.clustering.len() != classes {
            return Err(format!("detection settings: {} clustering entries for {classes} classes", self.clustering.len()));
        }
        for c in &self.clustering {
            c.validate()?;
        }
        Ok(())
    }

    /// The output grid of an input of `in_w` × `in_h` pixels.
    pub fn grid(&self, in_w: usize, in_h: usize) -> postprocess::Grid {
        postprocess::Grid { in_w, in_h, out_w: in_w.div_ceil(self.stride), out_h: in_h.div_ceil(self.stride), scale: self.bbox_scale, offset: self.bbox_offset }
    }
}

/// A ground-truth box in COCO's convention: `[x, y, width, height]` in image pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GtBox {
    /// Index into [`Detections::images`].
    pub image: usize,
    /// Index into [`Detections::classes`].
    pub class: usize,
    pub bbox: [f64; 4],
    /// COCO's `area` field (the segment's area in COCO; `w·h` where the file has none).
    pub area: f64,
    pub iscrowd: bool,
}

/// A detection: `[x, y, width, height]` and a confidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetBox {
    pub image: usize,
    pub class: usize,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// Ground truth and detections over one set of images, as every metric here takes them.
/// `images` and `classes` are in evaluation order (pycocotools sorts image and category
/// ids); `gts` and `dets` keep the order of their files, which decides ties in score.
#[derive(Debug, Clone, Default)]
pub struct Detections {
    pub images: Vec<String>,
    pub classes: Vec<String>,
    pub gts: Vec<GtBox>,
    pub dets: Vec<DetBox>,
}

/// Intersection over union of two `[x, y, w, h]` boxes, as pycocotools' `bbIou` computes it
/// (no +1; against a crowd region the union is the detection's own area).
pub fn iou_xywh(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[0] + d[2]).min(g[0] + g[2]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[1] + d[3]).min(g[1] + g[3]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let u = if crowd { d[2] * d[3] } else { d[2] * d[3] + g[2] * g[3] - i };
    i / u
}
