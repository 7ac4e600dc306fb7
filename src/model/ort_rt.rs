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

use std::path::{Path, PathBuf};
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
pub const ENV: &str = "TAOFLOW_ONNXRUNTIME";

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
    let version = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once(".so.").map(|(_, v)| v.to_string()))
        .unwrap_or_else(|| ort::info().split(',').find_map(|p| p.trim().strip_prefix("git-branch=rel-").map(str::to_string)).unwrap_or_else(|| "(unknown version)".into()));
    tracing::debug!("onnxruntime {version} from {}", path.display());
    Ok(Loaded { version, path, env })
}

/// Where `libonnxruntime.so*` is (see the module docs), or why none is used.
pub fn locate() -> Result<PathBuf, String> {
    if let Ok(v) = std::env::var(ENV) {
        let v = v.trim();
        if matches!(v.to_ascii_lowercase().as_str(), "off" | "0" | "no" | "false" | "none" | "tract") {
            return Err(format!("switched off by {ENV}={v}"));
        }
        if !v.is_empty() {
            let p = PathBuf::from(v);
            if p.is_file() {
                return Ok(p);
            }
            return library_in(&p).or_else(|| library_in(&p.join("capi"))).ok_or_else(|| format!("{ENV}={v}: no libonnxruntime.so* there\n  = hint: point it at the library file, the folder holding it, or the `onnxruntime` package folder of a pip install"));
        }
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf))
        && let Some(p) = library_in(&dir).or_else(|| library_in(&dir.join("lib")))
    {
        return Ok(p);
    }
    for py in ["python3", "python"] {
        let out = std::process::Command::new(py)
            .args(["-c", "import importlib.util as u; s = u.find_spec('onnxruntime'); print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')"])
            .stderr(std::process::Stdio::null())
            .output();
        if let Ok(o) = out
            && o.status.success()
        {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !dir.is_empty()
                && let Some(p) = library_in(&Path::new(&dir).join("capi"))
            {
                return Ok(p);
            }
        }
    }
    Err(format!("no onnxruntime found (pip install onnxruntime, or set {ENV})"))
}

/// The newest `libonnxruntime.so.<version>` (or plain `libonnxruntime.so`) in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let rest = name.strip_prefix("libonnxruntime.so")?;
            let version: Option<Vec<u32>> = if rest.is_empty() { Some(Vec::new()) } else { rest.strip_prefix('.')?.split('.').map(|p| p.parse().ok()).collect() };
            Some((version?, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
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
