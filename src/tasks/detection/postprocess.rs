//! From DetectNet_v2's two output maps to boxes, as TAO's post-processor does
//! (`postprocessing_config`, `postprocessor/cluster.py`): per class, grid cells whose
//! coverage exceeds `coverage_threshold` are decoded to absolute boxes, then clustered —
//! DBSCAN over the 1 − IoU distance with the coverages as sample weights (scikit-learn's
//! algorithm: `min_samples` is a minimum summed coverage, a cluster's box is the
//! coverage-weighted mean of its members, its confidence their summed coverage) or greedy
//! NMS — and filtered by `minimum_bounding_box_height` and a confidence threshold.
//!
//! Where TAO differs from what its settings say, the settings are taken at face value
//! (README, detection): TAO's training/evaluation path swaps `nms_confidence_threshold`
//! and `dbscan_confidence_threshold`, and its NMS never applies the minimum height.

use crate::schema::{Key, Ty, key};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clustering {
    Dbscan,
    Nms,
}

/// The keys of [`ClusterConfig`] in a pipeline (`[stages.X.postprocess]`), for `taoflow schema`.
pub const CLUSTER_KEYS: &[Key] = &[
    key("algorithm", Ty::Str, "How grid cells become boxes: DBSCAN clustering (TAO's default) or greedy NMS.").def("\"dbscan\"").one_of(&["dbscan", "nms"]),
    key("coverage_threshold", Ty::Float, "Cells whose coverage exceeds this are decoded to boxes.").def("0.005").range(0.0, 1.0),
    key("dbscan_eps", Ty::Float, "DBSCAN's neighbourhood, as 1 - IoU.").def("0.2").range(0.0, 1.0),
    key("dbscan_min_samples", Ty::Float, "DBSCAN: least summed coverage of a core cell's neighbourhood.").def("0.05").min(0.0),
    key("dbscan_confidence_threshold", Ty::Float, "DBSCAN: clusters of less summed coverage are dropped.").def("0.9").range(0.0, 1.0),
    key("nms_iou_threshold", Ty::Float, "NMS: boxes overlapping a kept one by more IoU are dropped.").def("0.2").range(0.0, 1.0),
    key("nms_confidence_threshold", Ty::Float, "NMS: boxes of less coverage are dropped.").def("0.01").range(0.0, 1.0),
    key("minimum_bounding_box_height", Ty::Float, "Boxes this high or lower (pixels) are dropped.").def("4.0").min(0.0),
];

/// One class's `clustering_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub algorithm: Clustering,
    pub coverage_threshold: f32,
    pub dbscan_eps: f32,
    /// Minimum summed coverage of a core cell's neighbourhood (itself included).
    pub dbscan_min_samples: f32,
    pub dbscan_confidence_threshold: f32,
    pub nms_iou_threshold: f32,
    pub nms_confidence_threshold: f32,
    /// Boxes this high or lower (pixels) are dropped.
    pub minimum_bounding_box_height: f32,
}

impl Default for ClusterConfig {
    /// The KITTI sample spec's car settings (tao-reference A3/A5).
    fn default() -> Self {
        ClusterConfig {
            algorithm: Clustering::Dbscan,
            coverage_threshold: 0.005,
            dbscan_eps: 0.2,
            dbscan_min_samples: 0.05,
            dbscan_confidence_threshold: 0.9,
            nms_iou_threshold: 0.2,
            nms_confidence_threshold: 0.01,
            minimum_bounding_box_height: 4.0,
        }
    }
}

impl ClusterConfig {
    /// Every threshold in [0, 1], as TAO's spec checker demands; `Err` names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("coverage_threshold", self.coverage_threshold),
            ("dbscan_eps", self.dbscan_eps),
            ("dbscan_confidence_threshold", self.dbscan_confidence_threshold),
            ("nms_iou_threshold", self.nms_iou_threshold),
            ("nms_confidence_threshold", self.nms_confidence_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("`{k}` = {v} is outside [0, 1]"));
            }
        }
        if !(self.dbscan_min_samples >= 0.0 && self.dbscan_min_samples.is_finite()) {
            return Err(format!("`dbscan_min_samples` = {} must be a non-negative number", self.dbscan_min_samples));
        }
        if !(self.minimum_bounding_box_height >= 0.0 && self.minimum_bounding_box_height.is_finite()) {
            return Err(format!("`minimum_bounding_box_height` = {} must be a non-negative number of pixels", self.minimum_bounding_box_height));
        }
        Ok(())
    }
}

/// A decoded grid cell: `[x1, y1, x2, y2]` in input pixels and its coverage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub bbox: [f32; 4],
    pub cov: f32,
}

/// A final detection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub class: usize,
    pub bbox: [f32; 4],
    pub confidence: f32,
}

/// The geometry of the output grid: input size, grid size, `bbox_scale` and offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub in_w: usize,
    pub in_h: usize,
    pub out_w: usize,
    pub out_h: usize,
    pub scale: f32,
    pub offset: f32,
}

impl Grid {
    /// DetectNet_v2's: stride 16 (`ceil(in / 16)` cells), `bbox_scale = 35`, offset 0.5.
    pub fn detectnet(in_w: usize, in_h: usize) -> Grid {
        Grid { in_w, in_h, out_w: in_w.div_ceil(16), out_h: in_h.div_ceil(16), scale: 35.0, offset: 0.5 }
    }

    /// Cell centres in input pixels: TAO's `linspace(offset, (out−1)·in/out + offset, out)`.
    fn centre(&self, i: usize, inn: usize, out: usize) -> f32 {
        i as f32 * inn as f32 / out as f32 + self.offset
    }
}

/// Cells of class `class` with coverage above the threshold, decoded to boxes clipped to the
/// image (`x1 = clip(gx − 35·L, 0, W)`, `x2 = clip(gx + 35·R, x1, W)`, likewise y).
/// `cov` is `[C, out_h, out_w]`, `bbox` `[4·C, out_h, out_w]` (channel `4c + {L,T,R,B}`).
pub fn decode(cov: &[f32], bbox: &[f32], g: &Grid, class: usize, threshold: f32) -> Vec<Candidate> {
    let plane = g.out_w * g.out_h;
    let mut out = Vec::new();
    for y in 0..g.out_h {
        for x in 0..g.out_w {
            let c = cov[class * plane + y * g.out_w + x];
            if c <= threshold {
                continue;
            }
            let at = |k: usize| bbox[(class * 4 + k) * plane + y * g.out_w + x];
            let (gx, gy) = (g.centre(x, g.in_w, g.out_w), g.centre(y, g.in_h, g.out_h));
            let (w, h) = (g.in_w as f32, g.in_h as f32);
            let x1 = (gx - g.scale * at(0)).clamp(0.0, w);
            let y1 = (gy - g.scale * at(1)).clamp(0.0, h);
            let x2 = (gx + g.scale * at(2)).clamp(x1, w);
            let y2 = (gy + g.scale * at(3)).clamp(y1, h);
            out.push(Candidate { bbox: [x1, y1, x2, y2], cov: c });
        }
    }
    out
}

/// IoU of `[x1, y1, x2, y2]` boxes, continuous coordinates (DBSCAN's distance).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = a[2].min(b[2]) - a[0].max(b[0]);
    let ih = a[3].min(b[3]) - a[1].max(b[1]);
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let i = iw * ih;
    let u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i;
    if u <= 0.0 { 0.0 } else { i / u }
}

/// IoU with the +1 pixel convention (TAO's NMS).
fn iou_inclusive(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = a[2].min(b[2]) - a[0].max(b[0]) + 1.0;
    let ih = a[3].min(b[3]) - a[1].max(b[1]) + 1.0;
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let i = iw * ih;
    i / ((a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) - i)
}

/// scikit-learn's DBSCAN on a precomputed 1 − IoU distance with sample weights: cluster
/// label per candidate, `None` for noise. Neighbourhoods include distances equal to `eps`;
/// clusters grow from core points in index order, border points join the first cluster
/// that reaches them.
pub fn dbscan_labels(c: &[Candidate], eps: f32, min_samples: f32) -> Vec<Option<usize>> {
    let n = c.len();
    let neighbours: Vec<Vec<usize>> = (0..n).map(|i| (0..n).filter(|&j| 1.0 - iou(&c[i].bbox, &c[j].bbox) <= eps).collect()).collect();
    let core: Vec<bool> = neighbours.iter().map(|nb| nb.iter().map(|&j| c[j].cov as f64).sum::<f64>() >= min_samples as f64).collect();
    let mut labels: Vec<Option<usize>> = vec![None; n];
    let mut next = 0;
    for i in 0..n {
        if labels[i].is_some() || !core[i] {
            continue;
        }
        let mut stack = vec![i];
        while let Some(p) = stack.pop() {
            if labels[p].is_none() {
                labels[p] = Some(next);
                if core[p] {
                    for &q in &neighbours[p] {
                        if labels[q].is_none() {
                            stack.push(q);
                        }
                    }
                }
            }
        }
        next += 1;
    }
    labels
}

/// DBSCAN clusters → one detection each (coverage-weighted mean box, summed coverage).
pub fn dbscan(c: &[Candidate], class: usize, cfg: &ClusterConfig) -> Vec<Detection> {
    let labels = dbscan_labels(c, cfg.dbscan_eps, cfg.dbscan_min_samples);
    let k = labels.iter().flatten().max().map_or(0, |m| m + 1);
    let mut sums = vec![([0f64; 4], 0f64); k];
    for (cand, l) in c.iter().zip(&labels) {
        if let Some(l) = l {
            for (s, v) in sums[*l].0.iter_mut().zip(cand.bbox) {
                *s += v as f64 * cand.cov as f64;
            }
            sums[*l].1 += cand.cov as f64;
        }
    }
    let mut out: Vec<Detection> = sums
        .into_iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|(b, w)| Detection { class, bbox: [(b[0] / w) as f32, (b[1] / w) as f32, (b[2] / w) as f32, (b[3] / w) as f32], confidence: w as f32 })
        .filter(|d| d.bbox[3] - d.bbox[1] > cfg.minimum_bounding_box_height && d.confidence >= cfg.dbscan_confidence_threshold)
        .collect();
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    out
}

/// Greedy NMS over the cells in descending coverage: a cell is kept when its coverage
/// exceeds `nms_confidence_threshold` and no kept box overlaps it by more than
/// `nms_iou_threshold`; confidence = its coverage.
pub fn nms(c: &[Candidate], class: usize, cfg: &ClusterConfig) -> Vec<Detection> {
    let mut order: Vec<usize> = (0..c.len()).filter(|&i| c[i].cov > cfg.nms_confidence_threshold).collect();
    order.sort_by(|a, b| c[*b].cov.total_cmp(&c[*a].cov).then(a.cmp(b)));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept.iter().all(|&k| iou_inclusive(&c[k].bbox, &c[i].bbox) <= cfg.nms_iou_threshold) {
            kept.push(i);
        }
    }
    kept.into_iter()
        .map(|i| Detection { class, bbox: c[i].bbox, confidence: c[i].cov })
        .filter(|d| d.bbox[3] - d.bbox[1] > cfg.minimum_bounding_box_height)
        .collect()
}

/// Every class of one image: decode with the class's settings, cluster, and return all
/// detections in descending confidence.
pub fn postprocess(cov: &[f32], bbox: &[f32], g: &Grid, cfgs: &[ClusterConfig]) -> Vec<Detection> {
    let mut out = Vec::new();
    for (class, cfg) in cfgs.iter().enumerate() {
        let cands = decode(cov, bbox, g, class, cfg.coverage_threshold);
        out.extend(match cfg.algorithm {
            Clustering::Dbscan => dbscan(&cands, class, cfg),
            Clustering::Nms => nms(&cands, class, cfg),
        });
    }
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(x1: f32, y1: f32, x2: f32, y2: f32, cov: f32) -> Candidate {
        Candidate { bbox: [x1, y1, x2, y2], cov }
    }

    #[test]
    fn decode_inverts_the_target_encoding() {
        // 64×32 input → 4×2 grid, one class; cell (x=1, y=0) has centre (16.5, 0.5).
        let g = Grid::detectnet(64, 32);
        assert_eq!((g.out_w, g.out_h), (4, 2));
        let mut cov = vec![0f32; 8];
        let mut bbox = vec![0f32; 32];
        cov[1] = 0.8;
        // box 10..40 × 0..20 around centre (16.5, 0.5): L = 6.5/35, T = 0.5/35, R = 23.5/35, B = 19.5/35
        for (k, v) in [6.5f32, 0.5, 23.5, 19.5].iter().enumerate() {
            bbox[k * 8 + 1] = v / 35.0;
        }
        let c = decode(&cov, &bbox, &g, 0, 0.5);
        assert_eq!(c.len(), 1);
        for (a, b) in c[0].bbox.iter().zip([10.0, 0.0, 40.0, 20.0]) {
            assert!((a - b).abs() < 1e-4, "{:?}", c[0].bbox);
        }
        // clipped to the image, x2 never left of x1
        bbox[2 * 8 + 1] = 100.0;
        bbox[8 + 1] = 10.0;
        let c = decode(&cov, &bbox, &g, 0, 0.5);
        assert_eq!(c[0].bbox, [10.0, 0.0, 64.0, c[0].bbox[3]]);
        assert_eq!(decode(&cov, &bbox, &g, 0, 0.8).len(), 0, "coverage must exceed the threshold");
    }

    #[test]
    fn dbscan_on_hand_made_cells() {
        // two groups of overlapping cells and one isolated weak cell
        let c = vec![
            cand(0.0, 0.0, 10.0, 10.0, 0.5),
            cand(100.0, 100.0, 140.0, 160.0, 0.9),
            cand(1.0, 0.0, 11.0, 10.0, 0.3), // IoU with #0 = 90/110 = 0.818
            cand(102.0, 100.0, 142.0, 160.0, 0.6),
            cand(300.0, 300.0, 310.0, 310.0, 0.05),
        ];
        assert_eq!(dbscan_labels(&c, 0.2, 0.1), vec![Some(0), Some(1), Some(0), Some(1), None]);
        // eps below the groups' distance: every strong cell is its own cluster
        assert_eq!(dbscan_labels(&c, 0.05, 0.1), vec![Some(0), Some(1), Some(2), Some(3), None]);
        let cfg = ClusterConfig { dbscan_eps: 0.2, dbscan_min_samples: 0.1, dbscan_confidence_threshold: 0.5, minimum_bounding_box_height: 4.0, ..Default::default() };
        let d = dbscan(&c, 2, &cfg);
        assert_eq!(d.len(), 2);
        // the larger cluster first: confidence 1.5, box = (0.9·b1 + 0.6·b3) / 1.5
        assert!((d[0].confidence - 1.5).abs() < 1e-6);
        assert!((d[0].bbox[0] - (0.9 * 100.0 + 0.6 * 102.0) / 1.5).abs() < 1e-4);
        assert!((d[1].confidence - 0.8).abs() < 1e-6);
        assert!((d[1].bbox[2] - (0.5 * 10.0 + 0.3 * 11.0) / 0.8).abs() < 1e-4);
        assert_eq!(d[1].class, 2);
        // minimum height 10 drops the 10-pixel-high cluster; confidence 1.0 drops it too
        assert_eq!(dbscan(&c, 0, &ClusterConfig { minimum_bounding_box_height: 10.0, ..cfg.clone() }).len(), 1);
        assert_eq!(dbscan(&c, 0, &ClusterConfig { dbscan_confidence_threshold: 1.0, ..cfg }).len(), 1);
    }

    #[test]
    fn dbscan_border_points_join_the_first_cluster() {
        // a chain: 0 core, 1 border (weak, reachable from 0 and 2), 2 core
        let c = vec![cand(0.0, 0.0, 10.0, 10.0, 1.0), cand(1.0, 0.0, 11.0, 10.0, 0.01), cand(2.0, 0.0, 12.0, 10.0, 1.0)];
        // IoU(0,1) = IoU(1,2) = 90/110 (distance 0.18), IoU(0,2) = 80/120 (distance 0.33)
        let l = dbscan_labels(&c, 0.2, 1.5);
        // 0's neighbourhood sums 1.01 < 1.5: not core; 1's sums 2.01: core; so one cluster
        assert_eq!(l, vec![Some(0), Some(0), Some(0)]);
        let l = dbscan_labels(&c, 0.2, 2.5);
        assert_eq!(l, vec![None, None, None]);
    }

    #[test]
    fn nms_on_hand_made_cells() {
        let c = vec![
            cand(0.0, 0.0, 9.0, 9.0, 0.6),
            cand(1.0, 0.0, 10.0, 9.0, 0.9), // +1 IoU with #0: 90/110
            cand(50.0, 50.0, 59.0, 69.0, 0.4),
            cand(80.0, 80.0, 89.0, 99.0, 0.005),
        ];
        let cfg = ClusterConfig { algorithm: Clustering::Nms, nms_iou_threshold: 0.5, nms_confidence_threshold: 0.01, minimum_bounding_box_height: 4.0, ..Default::default() };
        let d = nms(&c, 0, &cfg);
        assert_eq!(d.iter().map(|d| d.confidence).collect::<Vec<_>>(), vec![0.9, 0.4]);
        // a looser IoU threshold keeps both overlapping cells
        let d = nms(&c, 0, &ClusterConfig { nms_iou_threshold: 0.9, ..cfg.clone() });
        assert_eq!(d.len(), 3);
        // minimum height 10 drops the two 9-pixel-high boxes
        let d = nms(&c, 0, &ClusterConfig { minimum_bounding_box_height: 10.0, ..cfg });
        assert_eq!(d.iter().map(|d| d.confidence).collect::<Vec<_>>(), vec![0.4]);
    }

    #[test]
    fn thresholds_are_checked() {
        assert!(ClusterConfig::default().validate().is_ok());
        let e = ClusterConfig { dbscan_eps: 1.5, ..Default::default() }.validate().unwrap_err();
        assert!(e.contains("dbscan_eps"), "{e}");
        assert!(ClusterConfig { coverage_threshold: -0.1, ..Default::default() }.validate().is_err());
    }
}
