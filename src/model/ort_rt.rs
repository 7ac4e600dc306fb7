//! onnxruntime on the CPU, loaded at run time: the inference engine behind `evaluate`,
//! `infer`, `quantize` (calibration and the FP32/INT8 checks) and export's parity check when
//! it can be found (issue #29: the Burn forward pass runs the quickstart's MobileNetV2 at
//! ~1/35 of onnxruntime's speed on 2 cores). Nothing is linked at build time: the shared
//! library comes from, in order,
//!
//! 1. `TAOFLOW_ONNXRUNTIME` — a path to `libonnxruntime.so*` or a folder holding it, or
//!    `off` to use tract (and Burn) only;
//! 2. `libonnxruntime.so*` beside the taoflow binary or in its `lib/` folder;
//! 3. the `onnxruntime` PyPI wheel of the machine's `python3` (`pip install onnxruntime`):
//!    `site-packages/onnxruntime/capi/libonnxruntime.so.<version>`.
//!
//! Without it everything still works, on tract (ONNX files) and Burn (model artifacts).
//! Results are the same computation either way (parity tests), so no stage key depends on
//! which path ran; the reports name the runtime.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

/// The loaded library: its version, where it came from, and the process's one environment.
pub struct Loaded {
    pub version: String,
    pub path: PathBuf,
    env: ort::environment::Environment,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("version", &self.version).field("path", &self.path).finish()
    }
}

static RUNTIME: OnceLock<Result<Loaded, String>> = OnceLock::new();

/// The environment variable that points at (or switches off) onnxruntime.
pub const ENV: &str = crate::runtime::ONNXRUNTIME_ENV;

/// onnxruntime, loaded once per process; `Err` says why it is not used.
pub fn runtime() -> Result<&'static Loaded, &'static str> {
    RUNTIME.get_or_init(load).as_ref().map_err(|e| e.as_str())
}

/// A one-line name of the CPU inference runtime in use, for reports.
pub fn describe() -> String {
    match runtime() {
        Ok(l) => format!("onnxruntime {}", l.version),
        Err(_) => "tract".into(),
    }
}

fn load() -> Result<Loaded, String> {
    let path = locate()?;
    let env = ort::init_from(&path).map_err(|e| format!("cannot load `{}`: {e}", path.display()))?;
    let env = env.with_name("taoflow").with_telemetry(false).build().map_err(|e| format!("onnxruntime from `{}` did not start: {e}", path.display()))?;
    let version = crate::runtime::onnxruntime_version(&path)
        .unwrap_or_else(|| ort::info().split(',').find_map(|p| p.trim().strip_prefix("git-branch=rel-").map(str::to_string)).unwrap_or_else(|| "(unknown version)".into()));
    tracing::debug!("onnxruntime {version} from {}", path.display());
    Ok(Loaded { version, path, env })
}

/// Where `libonnxruntime.so*` is (see the module docs), or why none is used.
pub fn locate() -> Result<PathBuf, String> {
    crate::runtime::onnxruntime()
}

/// An output's dimensions and its values (row-major).
pub type Shaped = (Vec<usize>, Vec<f32>);

/// One model in onnxruntime, run from several threads (a session runs one batch at a time).
pub struct OrtModel {
    session: Mutex<Session>,
    pub outputs: Vec<String>,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel").field("outputs", &self.outputs).finish()
    }
}

impl OrtModel {
    /// A session for the ONNX model `bytes` with the process's CPU threads (rayon's pool
    /// size: `RAYON_NUM_THREADS` or the cores), all graph optimisations on.
    pub fn new(bytes: &[u8]) -> Result<OrtModel, String> {
        let rt = runtime().map_err(|e| e.to_string())?;
        let fail = |e: ort::Error<ort::session::builder::SessionBuilder>| format!("onnxruntime: {e}");
        let session = Session::builder(&rt.env)
            .map_err(|e| format!("onnxruntime: {e}"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(fail)?
            .with_intra_threads(rayon::current_num_threads())
            .map_err(fail)?
            .with_inter_threads(1)
            .map_err(fail)?
            .commit_from_memory(bytes)
            .map_err(|e| format!("onnxruntime cannot load this model: {e}"))?;
        let outputs = session.outputs().iter().map(|o| o.name().to_string()).collect();
        Ok(OrtModel { session: Mutex::new(session), outputs })
    }

    /// Every output for one input tensor of `shape`, each flat (row-major), in the graph's
    /// output order.
    pub fn run(&self, input: &[f32], shape: &[usize]) -> Result<Vec<Vec<f32>>, String> {
        Ok(self.run_shaped(input, shape)?.into_iter().map(|(_, d)| d).collect())
    }

    /// [`OrtModel::run`] with each output's dimensions.
    pub fn run_shaped(&self, input: &[f32], shape: &[usize]) -> Result<Vec<Shaped>, String> {
        let x = TensorRef::from_array_view((shape, input)).map_err(|e| format!("onnxruntime input {shape:?}: {e}"))?;
        let mut s = self.session.lock().map_err(|_| "onnxruntime: a run panicked".to_string())?;
        let out = s.run(ort::inputs![x]).map_err(|e| format!("onnxruntime failed to run the model: {e}"))?;
        (0..out.len())
            .map(|i| {
                let (dims, d) = out[i].try_extract_tensor::<f32>().map_err(|e| format!("onnxruntime output {i}: {e}"))?;
                Ok((dims.iter().map(|&v| v.max(0) as usize).collect(), d.to_vec()))
            })
            .collect()
    }
}
