//! Training a DetectNet_v2 detector: the stage's settings (rasteriser and cost per class)
//! and the objective the engines minimise — targets rasterised on the CPU from each batch's
//! input-space boxes ([`crate::data::loader::Batch::boxes`], after online augmentation),
//! then TAO's cost ([`super::loss`]) on the network's two outputs as tensor arithmetic, so
//! that autodiff differentiates it.

use crate::schema::{Key, Ty, key};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::loss::{CostClass, batch_targets};
use super::targets::{Raster, RasterClass};
use crate::data::loader::Batch;
use crate::model::graph::ModelGraph;
use crate::tasks::ChunkLoss;

/// One class's training settings (a pipeline's `targets` table): TAO's
/// `bbox_rasterizer_config.target_class_config` and `cost_function_config.target_classes`
/// entries, side by side.
/// The keys of [`ClassTraining`] in a pipeline (`[stages.X.targets]`), for `taoflow schema`.
pub const TARGET_KEYS: &[Key] = &[
    key("cov_center_x", Ty::Float, "Centre of the coverage ellipse across the box (0 left, 1 right).").def("0.5").range(0.0, 1.0),
    key("cov_center_y", Ty::Float, "Centre of the coverage ellipse down the box (0 top, 1 bottom).").def("0.5").range(0.0, 1.0),
    key("cov_radius_x", Ty::Float, "Horizontal radius of the coverage ellipse, a share of the box width.").def("0.4").min(0.0),
    key("cov_radius_y", Ty::Float, "Vertical radius of the coverage ellipse, a share of the box height.").def("0.4").min(0.0),
    key("bbox_min_radius", Ty::Float, "Smallest coverage radius in grid cells.").def("1.0").min(0.0),
    key("class_weight", Ty::Float, "Weight of the class's cost in the total.").def("1.0").min(0.0),
    key("coverage_foreground_weight", Ty::Float, "Weight of foreground cells in the coverage cost (TAO's).").def("0.05").range(0.0, 1.0),
    key("cov_weight", Ty::Float, "Weight of the coverage (BCE) cost.").def("1.0").min(0.0),
    key("bbox_weight", Ty::Float, "Weight of the box (L1) cost.").def("10.0").min(0.0),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassTraining {
    pub cov_center_x: f32,
    pub cov_center_y: f32,
    pub cov_radius_x: f32,
    pub cov_radius_y: f32,
    pub bbox_min_radius: f32,
    pub class_weight: f32,
    pub coverage_foreground_weight: f32,
    pub cov_weight: f32,
    pub bbox_weight: f32,
}

impl Default for ClassTraining {
    fn default() -> Self {
        let (r, c) = (RasterClass::default(), CostClass::default());
        ClassTraining {
            cov_center_x: r.cov_center_x,
            cov_center_y: r.cov_center_y,
            cov_radius_x: r.cov_radius_x,
            cov_radius_y: r.cov_radius_y,
            bbox_min_radius: r.bbox_min_radius,
            class_weight: c.class_weight,
            coverage_foreground_weight: c.coverage_foreground_weight,
            cov_weight: c.cov_weight,
            bbox_weight: c.bbox_weight,
        }
    }
}

impl ClassTraining {
    pub fn raster(&self) -> RasterClass {
        RasterClass { cov_center_x: self.cov_center_x, cov_center_y: self.cov_center_y, cov_radius_x: self.cov_radius_x, cov_radius_y: self.cov_radius_y, bbox_min_radius: self.bbox_min_radius }
    }
    pub fn cost(&self) -> CostClass {
        CostClass { class_weight: self.class_weight, coverage_foreground_weight: self.coverage_foreground_weight, cov_weight: self.cov_weight, bbox_weight: self.bbox_weight }
    }

    /// Ranges TAO's spec checker enforces, and what makes the cost defined.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [("cov_center_x", self.cov_center_x), ("cov_center_y", self.cov_center_y), ("coverage_foreground_weight", self.coverage_foreground_weight)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("`{k}` = {v} is outside [0, 1]"));
            }
        }
        for (k, v) in [("cov_radius_x", self.cov_radius_x), ("cov_radius_y", self.cov_radius_y), ("bbox_min_radius", self.bbox_min_radius), ("class_weight", self.class_weight), ("cov_weight", self.cov_weight), ("bbox_weight", self.bbox_weight)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("`{k}` = {v} must be a non-negative number"));
            }
        }
        Ok(())
    }
}

/// The rasteriser's dead zone and the per-class target and cost settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSettings {
    pub deadzone_radius: f32,
    pub classes: Vec<ClassTraining>,
}

/// A detection `train` stage's settings beyond the common ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionTraining {
    /// `bbox_rasterizer_config.deadzone_radius`.
    pub deadzone_radius: f32,
    /// Per class, in class order.
    pub classes: Vec<ClassTraining>,
    /// Online augmentation of training batches (the `augment` stage's spatial and colour
    /// settings), boxes following the image.
    #[serde(default)]
    pub augment: Option<crate::data::augment::AugmentSpec>,
    /// Boxes narrower or lower than this many input pixels after resizing and augmentation
    /// are dropped from the targets.
    pub min_box_size: f64,
}

impl DetectionTraining {
    /// TAO's KITTI sample spec's settings for every class.
    pub fn defaults(classes: usize) -> Self {
        DetectionTraining { deadzone_radius: 0.4, classes: vec![ClassTraining::default(); classes], augment: None, min_box_size: 1.0 }
    }
}

/// The objective: rasteriser geometry, per-class rasteriser and cost settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionCost {
    pub in_w: usize,
    pub in_h: usize,
    pub stride: usize,
    pub scale: f32,
    pub offset: f32,
    pub deadzone_radius: f32,
    pub raster: Vec<RasterClass>,
    pub cost: Vec<CostClass>,
}

impl DetectionCost {
    pub fn new(graph: &ModelGraph, settings: Option<&DetectionTraining>) -> Self {
        let head = graph.detection.clone().unwrap_or_else(|| super::DetectionHead::detectnet(graph.classes.len()));
        let s = settings.cloned().unwrap_or_else(|| DetectionTraining::defaults(graph.classes.len()));
        DetectionCost {
            in_w: graph.input.width as usize,
            in_h: graph.input.height as usize,
            stride: head.stride,
            scale: head.bbox_scale,
            offset: head.bbox_offset,
            deadzone_radius: s.deadzone_radius,
            raster: s.classes.iter().map(|c| c.raster()).collect(),
            cost: s.classes.iter().map(|c| c.cost()).collect(),
        }
    }

    pub fn raster(&self) -> Raster {
        Raster { in_w: self.in_w, in_h: self.in_h, out_w: self.in_w.div_ceil(self.stride), out_h: self.in_h.div_ceil(self.stride), deadzone_radius: self.deadzone_radius, scale: self.scale, offset: self.offset }
    }

    /// The element weights of the coverage BCE and of the box L1 for images `lo..hi`, with
    /// the targets: (cov target, cov weight, bbox target, bbox weight), each flat.
    pub fn weighted_targets(&self, b: &Batch, lo: usize, hi: usize, denom: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let r = self.raster();
        let plane = r.out_w * r.out_h;
        let nc = self.cost.len();
        let targets = batch_targets(&b.boxes[lo..hi], &self.raster, &r);
        let mult = CostClass::multipliers(&self.cost);
        let n = hi - lo;
        let (mut cov_t, mut cov_w) = (Vec::with_capacity(n * nc * plane), Vec::with_capacity(n * nc * plane));
        let (mut box_t, mut box_w) = (Vec::with_capacity(n * 4 * nc * plane), Vec::with_capacity(n * 4 * nc * plane));
        let cell_c = 1.0 / (denom * plane) as f64;
        let cell_b = 1.0 / (denom * 4 * plane) as f64;
        for t in &targets {
            for (k, cc) in self.cost.iter().enumerate() {
                let fg = cc.coverage_foreground_weight as f64;
                for cell in 0..plane {
                    let y = t.cov[k * plane + cell];
                    let w = if y > 0.5 { fg } else { 1.0 - fg };
                    cov_t.push(y);
                    cov_w.push((w * mult[k].0 as f64 * cell_c) as f32);
                }
            }
            for (k, _) in self.cost.iter().enumerate() {
                for q in 0..4 {
                    for cell in 0..plane {
                        box_t.push(t.bbox[(k * 4 + q) * plane + cell]);
                        box_w.push((t.cov_norm[k * plane + cell] as f64 * mult[k].1 as f64 * cell_b) as f32);
                    }
                }
            }
        }
        (cov_t, cov_w, box_t, box_w)
    }

    /// TAO's cost of `outputs` = [coverage after the sigmoid, boxes] for images `lo..hi`,
    /// divided by `denom`: what [`super::loss::detection_loss`] computes, as tensors.
    pub fn loss<B: Backend>(&self, outputs: Vec<Tensor<B, 4>>, b: &Batch, lo: usize, hi: usize, denom: usize) -> Result<ChunkLoss<B>, String> {
        let mut it = outputs.into_iter();
        let (Some(cov), Some(bbox)) = (it.next(), it.next()) else { return Err("a detector has two outputs (coverage, boxes)".into()) };
        let device = cov.device();
        let [n, c, h, w] = cov.dims();
        if n != hi - lo || c != self.cost.len() || [h, w] != [self.in_h.div_ceil(self.stride), self.in_w.div_ceil(self.stride)] {
            return Err(format!("the coverage output is {:?}, the objective expects [{}, {}, {}, {}]", cov.dims(), hi - lo, self.cost.len(), self.in_h.div_ceil(self.stride), self.in_w.div_ceil(self.stride)));
        }
        let (ct, cw, bt, bw) = self.weighted_targets(b, lo, hi, denom);
        let t4 = |v: Vec<f32>, ch: usize| Tensor::<B, 4>::from_data(TensorData::new(v, [n, ch, h, w]), &device);
        let (ct, cw, bt, bw) = (t4(ct, c), t4(cw, c), t4(bt, 4 * c), t4(bw, 4 * c));
        let pos = (cov.clone() + 1e-5).log() * ct.clone();
        let neg = (cov.neg() + (1.0 + 1e-5)).log() * (ct.neg() + 1.0);
        let bce = (pos + neg).neg() * cw;
        let l1 = (bbox - bt).abs() * bw;
        let loss = bce.sum() + l1.sum();
        Ok(ChunkLoss { loss, hits: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::BoxLabel;
    use burn::backend::NdArray;

    /// The tensor objective equals the CPU reference ([`super::super::loss::detection_loss`])
    /// on random predictions, split into two chunks or taken whole.
    #[test]
    fn tensor_cost_equals_the_reference() {
        type B = NdArray<f32>;
        let g = crate::model::builders::detectnet_v2("resnet18", 0.125, crate::data::image_io::InputSpec::plain(64, 48, 3), vec!["a".into(), "b".into()]).unwrap();
        let mut s = DetectionTraining::defaults(2);
        s.classes[1] = ClassTraining { class_weight: 3.0, coverage_foreground_weight: 0.2, cov_weight: 1.0, bbox_weight: 4.0, cov_radius_x: 1.0, ..Default::default() };
        let obj = DetectionCost::new(&g, Some(&s));
        let boxes = vec![
            vec![BoxLabel { class: "a".into(), class_id: 0, bbox: [4.0, 6.0, 40.0, 30.0] }, BoxLabel { class: "b".into(), class_id: 1, bbox: [30.0, 10.0, 60.0, 44.0] }],
            vec![],
            vec![BoxLabel { class: "b".into(), class_id: 1, bbox: [0.0, 0.0, 20.0, 20.0] }],
        ];
        let n = boxes.len();
        let b = Batch { len: n, images: vec![], labels: vec![0; n], keys: vec![String::new(); n], targets: vec![None; n], boxes: boxes.clone(), masks: vec![None; n] };
        let (gh, gw) = (3, 4);
        let mut rng = crate::data::rng::Rng::new(5);
        let cov: Vec<f32> = (0..n * 2 * gh * gw).map(|_| rng.f64() as f32 * 0.98 + 0.01).collect();
        let bbox: Vec<f32> = (0..n * 8 * gh * gw).map(|_| rng.f64() as f32 * 2.0 - 0.5).collect();
        let reference = super::super::loss::detection_loss(&cov, &bbox, &batch_targets(&boxes, &obj.raster, &obj.raster()), &obj.cost, gh * gw);
        let device = Default::default();
        let part = |lo: usize, hi: usize| {
            let m = hi - lo;
            let c = Tensor::<B, 4>::from_data(TensorData::new(cov[lo * 2 * gh * gw..hi * 2 * gh * gw].to_vec(), [m, 2, gh, gw]), &device);
            let x = Tensor::<B, 4>::from_data(TensorData::new(bbox[lo * 8 * gh * gw..hi * 8 * gh * gw].to_vec(), [m, 8, gh, gw]), &device);
            obj.loss(vec![c, x], &b, lo, hi, n).unwrap().loss.into_scalar() as f64
        };
        let whole = part(0, n);
        let split = part(0, 1) + part(1, n);
        assert!(reference.total > 0.01);
        assert!((whole - reference.total).abs() < 1e-5 * reference.total, "{whole} vs {}", reference.total);
        assert!((split - reference.total).abs() < 1e-5 * reference.total, "{split} vs {}", reference.total);
    }
}
