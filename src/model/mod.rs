//! Models: the layer graph (`model.json`), builders of known architectures, the Burn
//! interpreter, and pretrained-weight import.

pub mod artifact;
pub mod builders;
pub mod calibrate;
pub mod conv;
pub mod graph;
pub mod import;
pub mod net;
pub mod onnx;
pub mod onnx_run;
pub mod ort_rt;
pub mod optim;
pub mod pickle;
pub mod prune;
/// The GPU training engine over libtorch (feature `torch`).
#[cfg(feature = "torch")]
pub mod torch;
pub mod train;
/// Helpers shared by the unit tests and the integration tests (test architectures, random
/// weights with non-trivial batch-norm statistics).
#[doc(hidden)]
pub mod testutil;
