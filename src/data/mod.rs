//! Datasets: source formats in (image folders, IDX, KITTI, segmentation masks, COCO),
//! WebDataset-style tar shards out, and the loader that streams them into batches.

pub mod augment;
pub mod convert;
pub mod formats;
pub mod image_io;
pub mod loader;
pub mod preview;
pub mod rng;
pub mod shards;
pub mod synth;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `dataset.json`: what a dataset artifact holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub version: u32,
    /// `classification`, `detection` or `segmentation`.
    pub task: String,
    /// The source format it was converted from.
    pub source_format: String,
    pub classes: Vec<String>,
    pub splits: BTreeMap<String, SplitInfo>,
    pub image: ImageStats,
    pub skipped: Skipped,
    /// Samples left out by the size filters.
    pub filtered: usize,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub count: usize,
    pub shards: Vec<String>,
    /// Images per class (classification, segmentation: images in which it occurs).
    pub per_class: BTreeMap<String, usize>,
    /// Boxes per class (detection only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub boxes_per_class: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinMaxMean {
    pub min: u32,
    pub max: u32,
    pub mean: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    pub width: MinMaxMean,
    pub height: MinMaxMean,
    /// Number of images by channel count of the source (1 grey, 3 colour, 4 with alpha).
    pub channels: BTreeMap<String, usize>,
    /// Number of images by stored encoding (`png`, `jpg`).
    pub encodings: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub count: usize,
    /// The first few, with what was wrong.
    pub examples: Vec<String>,
}

/// A bounding box in pixels, `[x1, y1, x2, y2]`, of a named class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoxLabel {
    pub class: String,
    pub class_id: u32,
    pub bbox: [f32; 4],
}

/// The `<key>.json` of a detection sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionTarget {
    pub width: u32,
    pub height: u32,
    pub boxes: Vec<BoxLabel>,
}

/// Errors of dataset code; every message names the file (and line) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl DataError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DataError::Io { context: context.into(), source }
    }
}
