//! Task families: what differs between classification, detection, segmentation and text
//! (targets and loss, post-processing, metrics, export extras) lives in one folder each, so
//! that stage code calls into a family instead of matching on the task.
//!
//! [`Objective`] is what a training step minimises; the engines call it with the network's
//! outputs and the batch, whatever the family.

pub mod classification;
pub mod detection;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::loader::Batch;
use crate::model::graph::{ModelGraph, TaskKind};

/// Files a family exports beside `onnx_file` (in the same folder): a detector's
/// `labels.txt` and DeepStream `nvinfer` config; `int8_cache` names the TensorRT calibration
/// cache of an INT8 model.
pub fn export_extras(graph: &ModelGraph, onnx_file: &str, int8_cache: Option<&str>) -> Vec<(String, String)> {
    match graph.task {
        TaskKind::Classification => Vec::new(),
        TaskKind::Detection => detection::export::deepstream(graph, onnx_file, int8_cache),
    }
}

/// A model's headline quality on a split through an exported ONNX model (tract): a
/// classifier's top-1 accuracy, a detector's COCO AP50 (with its own post-processing).
/// Returns (metric name, value in [0, 1], images).
pub fn onnx_quality(graph: &ModelGraph, m: &crate::model::onnx_run::OnnxModel, ds: &crate::data::loader::Dataset, split: &str, batch: usize) -> Result<(&'static str, f64, usize), String> {
    match graph.task {
        TaskKind::Classification => {
            let (a, n) = crate::stages::quantize::onnx_top1(m, ds, split, batch)?;
            Ok(("top1", a, n))
        }
        TaskKind::Detection => {
            let clustering = graph.detection.as_ref().map(|d| d.clustering.clone()).unwrap_or_default();
            let mut f = |x: Vec<f32>, n: usize| m.run_all(&x, n);
            let r = detection::evaluate::run(graph, &mut f, ds, split, batch, &clustering, 0)?;
            let n = r.data.images.len();
            let c = detection::coco::evaluate(&r.data);
            Ok(("ap50", c.stats[1].max(0.0), n))
        }
    }
}

/// The loss of a part of a batch, scaled so that the parts of a batch add up to the batch's
/// loss (a mean over `denom` images), and how many of its images were predicted right
/// (classification; `None` where the family has no per-image accuracy).
pub struct ChunkLoss<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub hits: Option<usize>,
}

/// What a training run of a family minimises, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Objective {
    Classification(classification::CrossEntropy),
    Detection(detection::train::DetectionCost),
}

impl Objective {
    /// The objective that trains `graph`: the family's own settings from the stage
    /// (`detection`), label smoothing for classifiers.
    pub fn for_graph(graph: &ModelGraph, label_smoothing: f64, detection: Option<&detection::train::DetectionTraining>) -> Objective {
        match graph.task {
            TaskKind::Classification => Objective::Classification(classification::CrossEntropy { classes: graph.classes.len(), smoothing: label_smoothing }),
            TaskKind::Detection => Objective::Detection(detection::train::DetectionCost::new(graph, detection)),
        }
    }

    /// The same objective as validation measures it (no label smoothing).
    pub fn for_validation(&self) -> Objective {
        match self {
            Objective::Classification(c) => Objective::Classification(classification::CrossEntropy { smoothing: 0.0, ..c.clone() }),
            other => other.clone(),
        }
    }

    /// The loss of images `lo..hi` of `b` given the network's outputs for them, divided by
    /// `denom` (the images of the whole batch for a training step; 1 for a sum).
    pub fn loss<B: Backend>(&self, outputs: Vec<Tensor<B, 4>>, b: &Batch, lo: usize, hi: usize, denom: usize) -> Result<ChunkLoss<B>, String> {
        match self {
            Objective::Classification(c) => c.loss(outputs, b, lo, hi, denom),
            Objective::Detection(d) => d.loss(outputs, b, lo, hi, denom),
        }
    }

    /// Whether [`ChunkLoss::hits`] means something (the history then shows an accuracy).
    pub fn has_accuracy(&self) -> bool {
        matches!(self, Objective::Classification(_))
    }
}
