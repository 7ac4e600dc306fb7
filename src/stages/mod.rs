//! Stage kinds. Each kind is one file and one implementation of [`StageKind`]; the
//! registry below is the only place that lists them.
//!
//! A kind turns its TOML table into a [`StageDef`] (canonical parameters that go into the
//! stage key, the inputs it reads, the artifacts it writes) and runs it. The engine does
//! everything else: hashing, the store, the lock file, scheduling and GPU leases.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Fields;
use crate::diag::Span;
use crate::value::PVal;

pub mod augment;
pub mod convert;
pub mod evaluate;
pub mod exec;
pub mod export;
pub mod prune;
pub mod quantize;
pub mod train;

/// One kind of stage (`exec`, and later `convert`, `train`, …).
pub trait StageKind: Send + Sync + fmt::Debug + 'static {
    /// The name used in `kind = "…"`.
    fn name(&self) -> &'static str;
    /// What the stage does, in a line (`taoflow schema`'s descriptions).
    fn summary(&self) -> &'static str;
    /// Implementation version: bump it when the kind's results change, and every stage of
    /// this kind runs again.
    fn version(&self) -> u32;
    /// Keys this kind accepts besides the common ones (`kind`, `gpus`, `description`), with
    /// types, defaults, ranges and descriptions: the parser's hints and `taoflow schema`.
    fn spec(&self) -> Vec<crate::schema::Key>;
    /// The names of [`StageKind::spec`]'s keys.
    fn keys(&self) -> Vec<&'static str> {
        crate::schema::names(&self.spec())
    }
    /// The free-form parameter table that `-S stage.name=value` writes into, if any.
    fn free_params_key(&self) -> Option<&'static str> {
        None
    }
    /// Read the stage's table. Errors go to `f.diags`; return `None` if the stage is unusable.
    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef>;
    /// Run the stage. Outputs must exist at `ctx.outputs[name]` when it returns `Ok`, with
    /// notes for the user (a summary, warnings, counts of skipped samples).
    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>>;
}

/// What a stage reads and writes, as parsed from its table.
#[derive(Debug, Clone)]
pub struct StageDef {
    /// Canonical parameters after defaults were filled in: part of the stage key.
    pub params: BTreeMap<String, PVal>,
    pub inputs: Vec<InputDecl>,
    pub outputs: Vec<OutputDecl>,
    /// Name of the output that holds the stage's metrics (a JSON file), if any.
    pub metrics: Option<String>,
    /// GPUs the stage needs (0: CPU only).
    pub gpus: u32,
    /// The stage's `description`, for `taoflow dag`.
    pub description: Option<String>,
    /// The kind's own parsed form, for `run`.
    pub typed: Arc<dyn Any + Send + Sync>,
}

/// An input as written: a reference (`train.model`, `train`) or a path.
#[derive(Debug, Clone)]
pub struct InputDecl {
    /// Name of the input in the stage key (stable across runs).
    pub label: String,
    pub raw: String,
    pub span: Span,
}

/// A named artifact the stage writes, at a path relative to the pipeline's folder.
#[derive(Debug, Clone)]
pub struct OutputDecl {
    pub name: String,
    pub path: PathBuf,
    pub span: Span,
    /// Written by taoflow itself (not a user's command): stored and restored by hard link
    /// instead of a copy, read-only, at `outputs/PIPELINE/STAGE/NAME`.
    pub owned: bool,
}

/// Everything a running stage gets.
#[derive(Debug)]
pub struct RunCtx {
    pub stage: String,
    pub def: StageDef,
    pub pipeline_dir: PathBuf,
    /// Input label -> absolute path of the file or folder.
    pub inputs: BTreeMap<String, PathBuf>,
    /// Output name -> absolute workspace path the stage must create.
    pub outputs: BTreeMap<String, PathBuf>,
    /// A private empty folder for temporary files (removed afterwards).
    pub scratch: PathBuf,
    /// GPU ordinals leased to this stage.
    pub gpus: Vec<u32>,
    pub seed: i64,
    /// The stage's log file (stdout and stderr of commands go here).
    pub log: PathBuf,
    /// Where compiled GPU kernels (PTX) are cached, in the store.
    pub kernel_cache: PathBuf,
    /// A folder private to this stage key for checkpoints: it survives a killed run, so the
    /// next run of the same key resumes from it. The stage removes it when it succeeds.
    pub checkpoints: PathBuf,
    /// Report progress (`done` of `total`, a status line) to the user.
    pub progress: ProgressFn,
    /// Becomes `true` when the run is cancelled (Ctrl-C).
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// How a running stage reports: `update` (`done` of `total`, a status line that the next
/// one replaces) and `note` (a line worth keeping: an epoch's result, the end of a long step).
#[derive(Clone)]
pub struct ProgressFn {
    update: Arc<dyn Fn(u64, u64, &str) + Send + Sync>,
    note: Arc<dyn Fn(&str) + Send + Sync>,
}

impl fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressFn")
    }
}

impl ProgressFn {
    pub fn new(update: Arc<dyn Fn(u64, u64, &str) + Send + Sync>, note: Arc<dyn Fn(&str) + Send + Sync>) -> Self {
        ProgressFn { update, note }
    }

    pub fn none() -> Self {
        ProgressFn { update: Arc::new(|_, _, _| {}), note: Arc::new(|_| {}) }
    }

    pub fn update(&self, done: u64, total: u64, msg: &str) {
        (self.update)(done, total, msg)
    }

    pub fn note(&self, msg: &str) {
        (self.note)(msg)
    }
}

#[derive(Debug)]
pub enum StageError {
    Failed(String),
    Interrupted,
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageError::Failed(m) => f.write_str(m),
            StageError::Interrupted => f.write_str("interrupted"),
        }
    }
}

static EXEC: exec::Exec = exec::Exec;
static CONVERT: convert::Convert = convert::Convert;
static AUGMENT: augment::Augment = augment::Augment;
static EVALUATE: evaluate::Evaluate = evaluate::Evaluate;
static TRAIN: train::Train = train::Train { retrain: false };
static RETRAIN: train::Train = train::Train { retrain: true };
static PRUNE: prune::Prune = prune::Prune;
static QUANTIZE: quantize::Quantize = quantize::Quantize;
static EXPORT: export::Export = export::Export;

/// Every kind this build offers.
pub fn registry() -> &'static [&'static dyn StageKind] {
    static KINDS: [&dyn StageKind; 9] = [&EXEC, &CONVERT, &AUGMENT, &TRAIN, &PRUNE, &RETRAIN, &EVALUATE, &QUANTIZE, &EXPORT];
    &KINDS
}

/// What a stage says when it leased a GPU in a build without the `torch` feature.
#[cfg(not(feature = "torch"))]
pub const NO_GPU_BUILD: &str = "this taoflow was built without GPU training or inference\n  = hint: build it with the GPU engine (`--features torch`): `bash scripts/gpu-setup.sh` (README, On a GPU; `taoflow doctor` says what this machine has), or run on the CPU: `gpus = 0` / `taoflow run --device cpu`";

/// The kind's own parsed form (`StageDef::typed`), cloned for a blocking task.
pub fn typed<T: Clone + 'static>(ctx: &RunCtx, kind: &str) -> Result<T, StageError> {
    ctx.def.typed.downcast_ref::<T>().cloned().ok_or_else(|| StageError::Failed(format!("internal: {kind} stage data missing")))
}

/// Run CPU-heavy stage work on tokio's blocking pool; a panic becomes a stage failure.
pub async fn blocking<T: Send + 'static>(kind: &'static str, f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, StageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StageError::Failed(format!("{kind} crashed: {e}")))?.map_err(StageError::Failed)
}

/// Build a folder beside `out` with `fill`, then swap it in: `out` is never half-written.
pub fn write_dir_atomically<T>(out: &std::path::Path, fill: impl FnOnce(&std::path::Path) -> Result<T, StageError>) -> Result<T, StageError> {
    let parent = out.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| StageError::Failed(format!("cannot create `{}`: {e}", parent.display())))?;
    let tmp = tempfile::Builder::new().prefix(".taoflow-").tempdir_in(parent).map_err(|e| StageError::Failed(format!("cannot write in `{}`: {e}", parent.display())))?;
    let r = fill(tmp.path())?;
    exec::remove_path(out).map_err(|e| StageError::Failed(format!("cannot replace `{}`: {e}", out.display())))?;
    let kept = tmp.keep();
    std::fs::rename(&kept, out).map_err(|e| StageError::Failed(format!("cannot move the result to `{}`: {e}", out.display())))?;
    Ok(r)
}

/// Kinds on the roadmap, named in errors so users know they are coming.
pub const PLANNED: &[&str] = &["detectnet_v2", "unet"];

pub fn lookup(name: &str) -> Option<&'static dyn StageKind> {
    registry().iter().copied().find(|k| k.name() == name)
}

pub fn names() -> Vec<&'static str> {
    registry().iter().map(|k| k.name()).collect()
}
