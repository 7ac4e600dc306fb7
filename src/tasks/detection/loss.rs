//! DetectNet_v2's cost (TAO `cost_function_config`), the reference the engines' loss must
//! equal: per class, a weighted binary cross-entropy on coverage
//! (`−(t·ln(p + 1e-5) + (1 − t)·ln(1 − p + 1e-5))`, weighted by
//! `coverage_foreground_weight` where `t > 0.5` and by its complement elsewhere) and an L1
//! on the four box channels weighted element-wise by the `cov_norm` target, each averaged
//! over the batch and the grid; the total is `Σ_class Σ_objective cost × class_weight /
//! Σ class_weight × objective_weight / Σ objective_weight` (TAO's initial weights;
//! autoweighting is not implemented).

use serde::{Deserialize, Serialize};

use super::targets::{LabelBox, Raster, RasterClass, Targets, rasterize};
use crate::data::BoxLabel;

/// One `target_classes` entry of the cost function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostClass {
    pub class_weight: f32,
    pub coverage_foreground_weight: f32,
    /// `initial_weight` of the `cov` objective.
    pub cov_weight: f32,
    /// `initial_weight` of the `bbox` objective.
    pub bbox_weight: f32,
}

impl Default for CostClass {
    /// The KITTI sample spec's car entry.
    fn default() -> Self {
        CostClass { class_weight: 1.0, coverage_foreground_weight: 0.05, cov_weight: 1.0, bbox_weight: 10.0 }
    }
}

impl CostClass {
    /// (coverage, box) multipliers of the class's two mean costs in the total.
    pub fn multipliers(classes: &[CostClass]) -> Vec<(f32, f32)> {
        let total: f32 = classes.iter().map(|c| c.class_weight).sum();
        classes
            .iter()
            .map(|c| {
                let cw = if total > 0.0 { c.class_weight / total } else { 0.0 };
                let ow = c.cov_weight + c.bbox_weight;
                if ow > 0.0 { (cw * c.cov_weight / ow, cw * c.bbox_weight / ow) } else { (0.0, 0.0) }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LossParts {
    pub total: f64,
    /// Per class: mean coverage cost, mean box cost.
    pub per_class: Vec<(f64, f64)>,
}

/// Rasterised targets of a batch's input-space boxes (`Batch::boxes`).
pub fn batch_targets(boxes: &[Vec<BoxLabel>], classes: &[RasterClass], r: &Raster) -> Vec<Targets> {
    boxes
        .iter()
        .map(|bs| {
            let lb: Vec<LabelBox> = bs.iter().map(|b| LabelBox { class: b.class_id as usize, bbox: b.bbox }).collect();
            rasterize(&lb, classes, r)
        })
        .collect()
}

/// The cost of predictions `cov` (`[N, C, H, W]`, after the sigmoid) and `bbox`
/// (`[N, 4C, H, W]`) against `targets` (one per image).
pub fn detection_loss(cov: &[f32], bbox: &[f32], targets: &[Targets], classes: &[CostClass], plane: usize) -> LossParts {
    let (n, nc) = (targets.len(), classes.len());
    assert_eq!(cov.len(), n * nc * plane, "coverage predictions are [N, C, H, W]");
    assert_eq!(bbox.len(), n * 4 * nc * plane, "box predictions are [N, 4C, H, W]");
    let mut per_class = Vec::with_capacity(nc);
    for (k, cc) in classes.iter().enumerate() {
        let fg = cc.coverage_foreground_weight as f64;
        let (mut c_sum, mut b_sum) = (0f64, 0f64);
        for (i, t) in targets.iter().enumerate() {
            for cell in 0..plane {
                let p = cov[(i * nc + k) * plane + cell] as f64;
                let y = t.cov[k * plane + cell] as f64;
                let w = if y > 0.5 { fg } else { 1.0 - fg };
                c_sum += -w * (y * (p + 1e-5).ln() + (1.0 - y) * (1.0 - p + 1e-5).ln());
                let norm = t.cov_norm[k * plane + cell] as f64;
                for q in 0..4 {
                    let pb = bbox[(i * 4 * nc + k * 4 + q) * plane + cell] as f64;
                    let tb = t.bbox[(k * 4 + q) * plane + cell] as f64;
                    b_sum += norm * (pb - tb).abs();
                }
            }
        }
        per_class.push((c_sum / (n * plane) as f64, b_sum / (n * 4 * plane) as f64));
    }
    let total = CostClass::multipliers(classes).iter().zip(&per_class).map(|((mc, mb), (c, b))| *mc as f64 * c + *mb as f64 * b).sum();
    LossParts { total, per_class }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One image, two classes, a 2×1 grid, worked by hand.
    #[test]
    fn hand_computed_cost() {
        let plane = 2;
        let t = Targets {
            // class 0: cell 0 covered (1.0), cell 1 empty; class 1: cell 1 at 0.25 (background weight)
            cov: vec![1.0, 0.0, 0.0, 0.25],
            cov_norm: vec![0.5, 0.0, 0.0, 0.1],
            // class 0 cell 0: L,T,R,B = 1, 2, 3, 4; class 1 cell 1: 1 each
            bbox: vec![1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
        };
        let cov = vec![0.9, 0.2, 0.1, 0.5];
        // class 0 predicts 1.5, 2, 3, 3 at cell 0 (|err| 0.5, 0, 0, 1); class 1 all 0 (|err| 1 each at cell 1)
        let mut bbox = vec![0f32; 16];
        for (q, v) in [1.5f32, 2.0, 3.0, 3.0].iter().enumerate() {
            bbox[q * 2] = *v;
        }
        let classes = vec![CostClass { class_weight: 1.0, coverage_foreground_weight: 0.05, cov_weight: 1.0, bbox_weight: 10.0 }, CostClass { class_weight: 3.0, coverage_foreground_weight: 0.2, cov_weight: 1.0, bbox_weight: 1.0 }];
        let l = detection_loss(&cov, &bbox, &[t], &classes, plane);
        let bce = |p: f64, y: f64| -(y * (p + 1e-5).ln() + (1.0 - y) * (1.0 - p + 1e-5).ln());
        let c0 = (0.05 * bce(0.9, 1.0) + 0.95 * bce(0.2, 0.0)) / 2.0;
        let c1 = (0.8 * bce(0.1, 0.0) + 0.8 * bce(0.5, 0.25)) / 2.0;
        // box: class 0 cell 0 weighted 0.5 · (0.5 + 0 + 0 + 1); class 1 cell 1 weighted 0.1 · 4
        let b0 = 0.5 * 1.5 / 8.0;
        let b1 = 0.1 * 4.0 / 8.0;
        assert!((l.per_class[0].0 - c0).abs() < 1e-6 && (l.per_class[1].0 - c1).abs() < 1e-6, "{l:?}");
        assert!((l.per_class[0].1 - b0).abs() < 1e-7 && (l.per_class[1].1 - b1).abs() < 1e-7, "{l:?}");
        // class weights 1/4 and 3/4; objective weights 1/11, 10/11 and 1/2, 1/2
        let total = 0.25 * (c0 / 11.0 + b0 * 10.0 / 11.0) + 0.75 * (c1 / 2.0 + b1 / 2.0);
        assert!((l.total - total).abs() < 1e-6, "{} vs {total}", l.total);
    }

    #[test]
    fn perfect_predictions_cost_only_the_epsilon() {
        let r = Raster::detectnet(64, 64);
        let boxes = vec![vec![BoxLabel { class: "car".into(), class_id: 0, bbox: [16.0, 16.0, 48.0, 48.0] }]];
        let t = batch_targets(&boxes, &[RasterClass::default()], &r);
        // predicting the (soft) targets exactly: the box cost is 0, the coverage cost the
        // entropy of the soft cells only
        let l = detection_loss(&t[0].cov, &t[0].bbox, &t, &[CostClass::default()], 16);
        assert_eq!(l.per_class[0].1, 0.0);
        let zeros = detection_loss(&[0.0; 16], &[0.0; 64], &t, &[CostClass::default()], 16);
        assert!(zeros.total > l.total && zeros.per_class[0].1 > 0.0);
    }
}
