//! Task families: what differs between classification, detection, segmentation and text
//! (targets and loss, post-processing, metrics, export extras) lives in one folder each, so
//! that stage code calls into a family instead of matching on the task.
//!
//! Classification's metrics are still in [`crate::metrics`]; detection is being built here
//! piece by piece (issue #20): metrics, post-processing and the target rasteriser first.

pub mod detection;
