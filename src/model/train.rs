//! The training loop over a layer graph, generic over Burn's autodiff backends: batches from
//! the loader, cross-entropy with label smoothing, our optimizers and schedules, validation,
//! checkpoints that a later run resumes from, and a per-epoch history.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::conv::ConvBackend;
use super::graph::ModelGraph;
use super::net::{BnStats, GraphNet, WeightData};
use super::optim::{OptimConfig, Optimizer, Schedule};
use crate::data::loader::{Batch, Dataset, LoaderOptions, OnlineAugment};
use crate::tasks::{ChunkLoss, Objective};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: Schedule,
    pub optim: OptimConfig,
    pub label_smoothing: f64,
    pub augment: Option<OnlineAugment>,
    pub train_split: String,
    /// Validation split, evaluated every `val_every` epochs and after the last one.
    pub val_split: Option<String>,
    pub val_every: usize,
    /// Write a checkpoint every N epochs (0: never).
    pub checkpoint_every: usize,
    pub seed: u64,
    /// A detector's rasteriser and cost settings (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection: Option<crate::tasks::detection::train::DetectionTraining>,
}

impl TrainConfig {
    /// One epoch at a constant rate `lr` with `optim`, batch `batch_size`, no augmentation,
    /// validation or checkpoints: what the benchmarks step through on synthetic batches.
    pub fn synthetic(optim: OptimConfig, lr: f64, batch_size: usize) -> Self {
        TrainConfig {
            epochs: 1,
            batch_size,
            lr,
            schedule: Schedule::Constant,
            optim,
            label_smoothing: 0.0,
            augment: None,
            train_split: "train".into(),
            val_split: None,
            val_every: 1,
            checkpoint_every: 0,
            seed: 0,
            detection: None,
        }
    }

    /// What training `graph` with these settings minimises.
    pub fn objective(&self, graph: &ModelGraph) -> Objective {
        Objective::for_graph(graph, self.label_smoothing, self.detection.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    /// Classification only.
    pub train_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Where a run is, for a progress bar.
pub struct Progress<'a> {
    pub epoch: usize,
    pub epochs: usize,
    /// Batches done over the whole run, and in all.
    pub done: u64,
    pub total: u64,
    pub message: &'a str,
}

#[derive(Debug)]
pub enum TrainError {
    Failed(String),
    Interrupted,
}

impl From<String> for TrainError {
    fn from(s: String) -> Self {
        TrainError::Failed(s)
    }
}

pub struct Outcome {
    /// The trained weights by torchvision name (what `artifact::save_weights` writes).
    pub weights: Vec<(String, WeightData)>,
    pub history: Vec<EpochRecord>,
    /// The epoch a checkpoint let this run start from (0: from the start).
    pub resumed_from: usize,
    pub steps: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    version: u32,
    epochs_done: usize,
    steps: u64,
    history: Vec<EpochRecord>,
}

/// Batches of one epoch: decoded once and kept in memory for small splits, streamed for
/// large ones.
enum Source {
    Memory(crate::data::loader::MemoryLoader),
    Stream,
}

/// Keep a split in memory when its decoded tensors take less than this.
const IN_MEMORY_BYTES: usize = 3 << 30;

fn batches<'a>(ds: &'a Dataset, src: &'a Source, split: &str, graph: &ModelGraph, opts: &LoaderOptions) -> Result<Box<dyn Iterator<Item = Result<Batch, String>> + 'a>, String> {
    match src {
        Source::Memory(m) => Ok(Box::new(m.epoch(opts).map_err(|e| e.to_string())?.into_iter().map(Ok))),
        Source::Stream => Ok(Box::new(ds.stream(split, &graph.input, opts).map_err(|e| e.to_string())?.map(|b| b.map_err(|e| e.to_string())))),
    }
}

fn source(ds: &Dataset, split: &str, graph: &ModelGraph) -> Result<Source, String> {
    if ds.len(split) * graph.input.len() < IN_MEMORY_BYTES {
        Ok(Source::Memory(ds.in_memory(split, &graph.input).map_err(|e| e.to_string())?))
    } else {
        Ok(Source::Stream)
    }
}

fn to_input<B: Backend>(b: &Batch, graph: &ModelGraph, device: &B::Device) -> Tensor<B, 4> {
    let s = &graph.input;
    Tensor::from_data(TensorData::new(b.images.clone(), [b.len, s.channels as usize, s.height as usize, s.width as usize]), device)
}

/// Summed loss (the objective as validation measures it), correct predictions and images
/// of a validation split, on the Burn network in inference mode.
fn validate_burn<B: ConvBackend>(net: &GraphNet<B>, graph: &ModelGraph, objective: &Objective, batches: &mut dyn Iterator<Item = Result<Batch, String>>, device: &B::Device) -> Result<(f64, usize, usize), String> {
    let objective = objective.for_validation();
    let (mut loss, mut hits, mut n) = (0.0f64, 0usize, 0usize);
    for b in batches {
        let b = b?;
        let outs = net.forward_outputs(to_input::<B>(&b, graph, device));
        let l = objective.loss(outs, &b, 0, b.len, 1)?;
        loss += l.loss.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?[0] as f64;
        hits += l.hits.unwrap_or(0);
        n += b.len;
    }
    Ok((loss, hits, n))
}

/// [`validate_burn`] through the network's ONNX export (batch norms folded) in onnxruntime:
/// the same loss and hits up to float rounding, at onnxruntime's speed (issue #29).
fn validate_onnx(m: &super::ort_rt::OrtModel, graph: &ModelGraph, objective: &Objective, batches: &mut dyn Iterator<Item = Result<Batch, String>>) -> Result<(f64, usize, usize), String> {
    type I = burn::backend::NdArray<f32>;
    let objective = objective.for_validation();
    let device = Default::default();
    let s = &graph.input;
    let (mut loss, mut hits, mut n) = (0.0f64, 0usize, 0usize);
    for b in batches {
        let b = b?;
        let outs = m
            .run_shaped(&b.images, &[b.len, s.channels as usize, s.height as usize, s.width as usize])?
            .into_iter()
            .map(|(mut dims, data)| {
                dims.resize(4, 1);
                Tensor::<I, 4>::from_data(TensorData::new(data, [dims[0], dims[1], dims[2], dims[3]]), &device)
            })
            .collect();
        let l = objective.loss(outs, &b, 0, b.len, 1)?;
        loss += l.loss.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?[0] as f64;
        hits += l.hits.unwrap_or(0);
        n += b.len;
    }
    Ok((loss, hits, n))
}

/// A finished training step: mean loss, correct predictions, images.
#[derive(Debug, Clone, Copy)]
pub struct StepDone {
    pub loss: f64,
    pub hits: usize,
    pub images: usize,
}

/// What the training loop drives: the Burn engine (CPU, the reference) or the libtorch
/// engine (GPU, feature `torch`). Both read and write weights and optimizer state under the
/// same names, so a checkpoint of one resumes on the other.
pub trait Engine {
    /// One optimisation step at rate `lr`. Returns the steps that are now complete: an
    /// asynchronous engine reports a step once the device has finished it.
    fn step(&mut self, b: &Batch, lr: f64) -> Result<Vec<StepDone>, String>;
    /// The steps still in flight.
    fn flush(&mut self) -> Result<Vec<StepDone>, String>;
    /// Summed loss (no smoothing), correct predictions and images over `batches`, in
    /// inference mode.
    fn validate(&mut self, batches: &mut dyn Iterator<Item = Result<Batch, String>>) -> Result<(f64, usize, usize), String>;
    /// Seed the engine's random draws (dropout) for an epoch.
    fn seed(&mut self, seed: u64);
    /// Optimizer steps taken.
    fn steps(&self) -> u64;
    fn weights(&self) -> Result<Vec<(String, WeightData)>, String>;
    fn optimizer_state(&self) -> Result<Vec<(String, WeightData)>, String>;
    fn restore(&mut self, weights: &HashMap<String, WeightData>, optimizer: &HashMap<String, WeightData>, steps: u64) -> Result<(), String>;
    /// The optimizer steps the whole run will have taken when it ends (an engine may pick
    /// its kernels by how much work is left).
    fn plan(&mut self, _total_steps: u64) {}
}

/// The CPU engine: Burn's autodiff over NdArray, batches split across threads.
pub struct BurnEngine<B: AutodiffBackend<InnerBackend: ConvBackend> + ConvBackend> {
    net: Option<GraphNet<B>>,
    opt: Optimizer<B::InnerBackend>,
    graph: ModelGraph,
    objective: Objective,
    /// Threads that run the chunks (the cores, at most 8, or TAOFLOW_TRAIN_THREADS).
    threads: usize,
    /// Chunks per batch, each with its own batch-norm statistics; `None`: [`default_chunks`].
    chunks: Option<usize>,
    device: B::Device,
}

/// Images per chunk of a CPU training batch by default. The chunking decides which images
/// share batch-norm statistics, so it depends on the batch alone, never on the machine: the
/// same stage (same cache key) computes the same training on 2 cores and on 64.
pub const CHUNK_IMAGES: usize = 16;

/// Chunks of a batch of `n` by default: one per [`CHUNK_IMAGES`] images, 1 to 8.
pub fn default_chunks(n: usize) -> usize {
    (n / CHUNK_IMAGES).clamp(1, 8)
}

impl<B: AutodiffBackend<InnerBackend: ConvBackend> + ConvBackend> BurnEngine<B> {
    pub fn new(graph: &ModelGraph, net: GraphNet<B>, cfg: &TrainConfig, device: &B::Device) -> Self {
        // Threads: the cores (at most 8), or TAOFLOW_TRAIN_THREADS. They only run the chunks;
        // what is computed does not depend on them.
        let threads = crate::runtime::cpu_engine_threads();
        BurnEngine { net: Some(net), opt: Optimizer::new(cfg.optim.clone()), graph: graph.clone(), objective: cfg.objective(graph), threads, chunks: None, device: device.clone() }
    }

    /// Split each batch into `n` chunks instead of [`default_chunks`] (1: whole-batch
    /// batch-norm statistics, as on a GPU).
    pub fn with_chunks(mut self, n: usize) -> Self {
        self.chunks = Some(n.max(1));
        self
    }

    /// Run the chunks on `n` threads (changes the speed only).
    pub fn with_threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    fn net(&self) -> &GraphNet<B> {
        self.net.as_ref().expect("the network is always put back")
    }
}

impl<B: AutodiffBackend<InnerBackend: ConvBackend> + ConvBackend> Engine for BurnEngine<B> {
    fn step(&mut self, b: &Batch, lr: f64) -> Result<Vec<StepDone>, String> {
        let chunks = self.chunks.unwrap_or_else(|| default_chunks(b.len));
        let (l, h, grads, stats) = step_parallel(self.net(), b, &self.graph, &self.objective, chunks, self.threads, &self.device)?;
        self.opt.begin_step();
        let opt = &mut self.opt;
        let mut net = self.net.take().expect("the network is always put back").update(&grads, &mut |name, kernel, w, g| opt.step(name, kernel, w, g, lr));
        net.update_running_stats(&stats, 0.1);
        self.net = Some(net);
        Ok(vec![StepDone { loss: l, hits: h, images: b.len }])
    }

    fn flush(&mut self) -> Result<Vec<StepDone>, String> {
        Ok(Vec::new())
    }

    fn validate(&mut self, batches: &mut dyn Iterator<Item = Result<Batch, String>>) -> Result<(f64, usize, usize), String> {
        // In onnxruntime where it loads (the weights of this epoch, exported), else on Burn.
        if super::ort_rt::runtime().is_ok() {
            let w: HashMap<String, WeightData> = self.weights()?.into_iter().collect();
            match super::onnx::export(&self.graph, &w, &super::onnx::ExportOptions::default(), None).and_then(|p| super::ort_rt::OrtModel::new(&prost::Message::encode_to_vec(&p))) {
                Ok(m) => return validate_onnx(&m, &self.graph, &self.objective, batches),
                Err(e) => tracing::warn!("validation runs on Burn: {e}"),
            }
        }
        validate_burn(&self.net().valid(), &self.graph, &self.objective, batches, &self.device)
    }

    fn seed(&mut self, seed: u64) {
        B::seed(&self.device, seed);
    }

    fn steps(&self) -> u64 {
        self.opt.steps
    }

    fn weights(&self) -> Result<Vec<(String, WeightData)>, String> {
        self.net().export_weights()
    }

    fn optimizer_state(&self) -> Result<Vec<(String, WeightData)>, String> {
        self.opt.export_state()
    }

    fn restore(&mut self, weights: &HashMap<String, WeightData>, optimizer: &HashMap<String, WeightData>, steps: u64) -> Result<(), String> {
        let (n, missing) = self.net.take().expect("the network is always put back").load_weights(weights, &self.device)?;
        self.net = Some(n);
        if !missing.is_empty() {
            return Err(format!("lacks weights: {}", missing.join(", ")));
        }
        self.opt.import_state(steps, optimizer, &self.device)
    }
}

/// Forward and backward of one batch, split into `chunks` chunks (at most one per image)
/// that `threads` threads share (NdArray runs most ops of small tensors on one core).
/// Returns the batch's mean loss, its correct predictions and the chunks' gradients summed
/// in chunk order (the gradient of the mean loss). Batch norms see per-chunk statistics, as
/// in data-parallel training without synchronised batch norm; the thread count changes
/// only the speed.
#[allow(clippy::too_many_arguments)]
fn step_parallel<B: AutodiffBackend + ConvBackend>(
    net: &GraphNet<B>,
    b: &Batch,
    graph: &ModelGraph,
    objective: &Objective,
    chunks: usize,
    threads: usize,
    device: &B::Device,
) -> Result<StepResult<B>, String> {
    let per = graph.input.len();
    let k = chunks.min(b.len).max(1);
    let chunk = b.len.div_ceil(k);
    let s = &graph.input;
    let run = |local: GraphNet<B>, lo: usize, hi: usize| -> Result<ChunkResult<B>, String> {
        let n = hi - lo;
        let x: Tensor<B, 4> = Tensor::from_data(TensorData::new(b.images[lo * per..hi * per].to_vec(), [n, s.channels as usize, s.height as usize, s.width as usize]), device);
        let mut stats = Vec::new();
        let outs = local.forward_train(x, &mut stats);
        let ChunkLoss { loss, hits } = objective.loss(outs, b, lo, hi, b.len)?;
        let hits = hits.unwrap_or(0);
        let l = loss.clone().into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?[0] as f64;
        let grads = loss.backward();
        let stats = stats.into_iter().map(|st| BnStats { index: st.index, mean: st.mean.inner(), var: st.var.inner(), count: st.count }).collect();
        Ok((l, hits, local.gradients(&grads), stats))
    };
    let ranges: Vec<(usize, usize)> = (0..k).map(|i| (i * chunk, ((i + 1) * chunk).min(b.len))).filter(|(lo, hi)| lo < hi).collect();
    let parts: Vec<Result<ChunkResult<B>, String>> = if ranges.len() == 1 {
        vec![run(net.clone(), 0, b.len)]
    } else {
        // Thread t runs chunks t, t + n, t + 2n, ...; the results go back in chunk order.
        let n = threads.clamp(1, ranges.len());
        let mut slots: Vec<Option<Result<ChunkResult<B>, String>>> = (0..ranges.len()).map(|_| None).collect();
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..n)
                .map(|t| {
                    let work: Vec<(usize, GraphNet<B>, usize, usize)> = ranges.iter().enumerate().skip(t).step_by(n).map(|(i, &(lo, hi))| (i, net.detached(), lo, hi)).collect();
                    sc.spawn(move || work.into_iter().map(|(i, local, lo, hi)| (i, run(local, lo, hi))).collect::<Vec<_>>())
                })
                .collect();
            for h in hs {
                match h.join() {
                    Ok(done) => done.into_iter().for_each(|(i, r)| slots[i] = Some(r)),
                    Err(_) => slots.iter_mut().filter(|s| s.is_none()).for_each(|s| *s = Some(Err("a training thread panicked".into()))),
                }
            }
        });
        slots.into_iter().map(|s| s.unwrap_or_else(|| Err("a training chunk did not run".into()))).collect()
    };
    let (mut loss, mut hits) = (0.0, 0);
    let mut grads: HashMap<String, Tensor<B::InnerBackend, 1>> = HashMap::new();
    let mut all_stats = Vec::new();
    for p in parts {
        let (l, h, g, st) = p?;
        loss += l;
        hits += h;
        for (name, t) in g {
            match grads.remove(&name) {
                Some(acc) => grads.insert(name, acc + t),
                None => grads.insert(name, t),
            };
        }
        all_stats.extend(st);
    }
    Ok((loss, hits, grads, all_stats))
}

type ChunkResult<B> = (f64, usize, Vec<(String, Tensor<<B as AutodiffBackend>::InnerBackend, 1>)>, Vec<BnStats<<B as AutodiffBackend>::InnerBackend>>);
type StepResult<B> = (f64, usize, HashMap<String, Tensor<<B as AutodiffBackend>::InnerBackend, 1>>, Vec<BnStats<<B as AutodiffBackend>::InnerBackend>>);

/// Running sums of an epoch's finished steps.
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    hits: usize,
    seen: usize,
}

impl Tally {
    fn add(&mut self, done: Vec<StepDone>, lr: f64, epoch: usize, batch: usize) -> Result<(), TrainError> {
        for d in done {
            if !d.loss.is_finite() {
                return Err(TrainError::Failed(format!(
                    "the loss became {} in epoch {} by batch {} (learning rate {lr:.3e})\n  = hint: lower `lr`, or use a schedule with a soft start",
                    d.loss,
                    epoch + 1,
                    batch + 1
                )));
            }
            self.hits += d.hits;
            self.loss_sum += d.loss * d.images as f64;
            self.seen += d.images;
        }
        Ok(())
    }
}

/// The newest complete checkpoint in `dir` (`epoch-NNNN` folders with a `state.json`).
fn latest_checkpoint(dir: &Path) -> Option<(usize, PathBuf)> {
    let rd = std::fs::read_dir(dir).ok()?;
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n: usize = name.strip_prefix("epoch-")?.parse().ok()?;
            e.path().join("state.json").is_file().then(|| (n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

fn save_checkpoint(dir: &Path, engine: &dyn Engine, state: &CheckpointState) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let final_dir = dir.join(format!("epoch-{:04}", state.epochs_done));
    let tmp = tempfile::Builder::new().prefix(".ckpt-").tempdir_in(dir).map_err(|e| format!("cannot write a checkpoint in `{}`: {e}", dir.display()))?;
    super::artifact::write_safetensors(&tmp.path().join("weights.safetensors"), engine.weights()?, &[])?;
    super::artifact::write_safetensors(&tmp.path().join("optimizer.safetensors"), engine.optimizer_state()?, &[])?;
    let j = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    std::fs::write(tmp.path().join("state.json"), j).map_err(|e| format!("cannot write a checkpoint: {e}"))?;
    let kept = tmp.keep();
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&kept, &final_dir).map_err(|e| format!("cannot move the checkpoint into place: {e}"))?;
    // Older checkpoints are superseded.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if (name.starts_with("epoch-") && e.path() != final_dir) || name.starts_with(".ckpt-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Train on `ds` with `engine`. `ckpt_dir` holds checkpoints for this exact stage key: when it
/// has one, training continues from it. `cancelled` is polled between batches.
#[allow(clippy::too_many_arguments)]
pub fn train(
    graph: &ModelGraph,
    engine: &mut dyn Engine,
    ds: &Dataset,
    cfg: &TrainConfig,
    ckpt_dir: Option<&Path>,
    progress: &dyn Fn(Progress<'_>),
    cancelled: &dyn Fn() -> bool,
    log: &mut dyn FnMut(&str),
) -> Result<Outcome, TrainError> {
    let classes = graph.classes.len();
    if classes == 0 {
        return Err(TrainError::Failed("the model has no class names".into()));
    }
    let n_train = ds.len(&cfg.train_split);
    if n_train == 0 {
        return Err(TrainError::Failed(format!("the dataset's `{}` split is empty; nothing to train on", cfg.train_split)));
    }
    let train_src = source(ds, &cfg.train_split, graph)?;
    let val_src = match &cfg.val_split {
        Some(s) => Some(source(ds, s, graph)?),
        None => None,
    };
    let drop_last = n_train > cfg.batch_size;
    let per_epoch = if drop_last { n_train / cfg.batch_size } else { 1 } as u64;
    let total = per_epoch * cfg.epochs as u64;

    let mut history = Vec::new();
    let mut start = 0;
    if let Some((done, path)) = ckpt_dir.and_then(latest_checkpoint) {
        let text = std::fs::read_to_string(path.join("state.json")).map_err(|e| format!("cannot read checkpoint: {e}"))?;
        let st: CheckpointState = serde_json::from_str(&text).map_err(|e| format!("checkpoint `{}` is damaged: {e}", path.display()))?;
        let w = super::import::read_weights(&path.join("weights.safetensors"))?;
        let os = super::import::read_weights(&path.join("optimizer.safetensors"))?;
        engine.restore(&w, &os, st.steps).map_err(|e| format!("checkpoint `{}`: {e}", path.display()))?;
        history = st.history;
        start = done.min(cfg.epochs);
        log(&format!("resuming from the checkpoint after epoch {done} ({})", path.display()));
    }

    engine.plan(total);
    let has_accuracy = cfg.objective(graph).has_accuracy();
    let (box_augment, min_box_size) = match &cfg.detection {
        Some(d) => (d.augment.clone(), d.min_box_size),
        None => (None, LoaderOptions::default().min_box_size),
    };
    for epoch in start..cfg.epochs {
        // Dropout draws: seeded by (seed, epoch), so a resumed run starts each epoch from the
        // same generator state (the order of draws across chunk threads may still vary).
        engine.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let t0 = Instant::now();
        let opts = LoaderOptions { batch_size: cfg.batch_size, shuffle: true, seed: cfg.seed, epoch: epoch as u64, drop_last, augment: cfg.augment, box_augment: box_augment.clone(), min_box_size, ..Default::default() };
        let mut tally = Tally::default();
        let mut lr = cfg.lr;
        let mut batches_run = 0;
        for (bi, b) in batches(ds, &train_src, &cfg.train_split, graph, &opts)?.enumerate() {
            if cancelled() {
                return Err(TrainError::Interrupted);
            }
            let b = b?;
            let done = epoch as u64 * per_epoch + bi as u64;
            lr = cfg.schedule.lr(cfg.lr, done as f64 / total.max(1) as f64, epoch, cfg.epochs);
            let finished = engine.step(&b, lr)?;
            tally.add(finished, lr, epoch, bi)?;
            batches_run = bi + 1;
            let (loss_sum, hits, seen) = (tally.loss_sum, tally.hits, tally.seen);
            let rate = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            progress(Progress {
                epoch: epoch + 1,
                epochs: cfg.epochs,
                done: done + 1,
                total,
                message: &if has_accuracy {
                    format!("epoch {}/{} loss {:.4} acc {:.3} {} img/s", epoch + 1, cfg.epochs, loss_sum / seen.max(1) as f64, hits as f64 / seen.max(1) as f64, crate::ui::rate(rate))
                } else {
                    format!("epoch {}/{} loss {:.5} {} img/s", epoch + 1, cfg.epochs, loss_sum / seen.max(1) as f64, crate::ui::rate(rate))
                },
            });
        }
        let finished = engine.flush()?;
        tally.add(finished, lr, epoch, batches_run.saturating_sub(1))?;
        let Tally { loss_sum, hits, seen } = tally;
        if seen == 0 {
            return Err(TrainError::Failed("an epoch produced no batches".into()));
        }
        let secs = t0.elapsed().as_secs_f64();
        let last = epoch + 1 == cfg.epochs;
        let (val_loss, val_accuracy) = match (&cfg.val_split, &val_src) {
            (Some(split), Some(src)) if last || (epoch + 1) % cfg.val_every.max(1) == 0 => {
                let opts = LoaderOptions { batch_size: cfg.batch_size.max(64), shuffle: false, min_box_size, ..Default::default() };
                let (l, h, n) = engine.validate(&mut batches(ds, src, split, graph, &opts)?)?;
                if n == 0 {
                    return Err(TrainError::Failed(format!("the `{split}` split is empty")));
                }
                (Some(l / n as f64), has_accuracy.then(|| h as f64 / n as f64))
            }
            _ => (None, None),
        };
        let rec = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen as f64,
            train_accuracy: has_accuracy.then(|| hits as f64 / seen as f64),
            val_loss,
            val_accuracy,
            seconds: secs,
            images_per_second: seen as f64 / secs.max(1e-9),
        };
        log(&format!(
            "epoch {}/{}: lr {:.3e}, train loss {:.5}{}{}, {:.1}s ({} img/s)",
            rec.epoch,
            cfg.epochs,
            rec.lr,
            rec.train_loss,
            rec.train_accuracy.map(|a| format!(", train acc {a:.4}")).unwrap_or_default(),
            match (rec.val_loss, rec.val_accuracy) {
                (Some(l), Some(a)) => format!(", val loss {l:.4}, val acc {a:.4}"),
                (Some(l), None) => format!(", val loss {l:.5}"),
                _ => String::new(),
            },
            rec.seconds,
            crate::ui::rate(rec.images_per_second)
        ));
        history.push(rec);
        if let Some(dir) = ckpt_dir
            && cfg.checkpoint_every > 0
            && ((epoch + 1) % cfg.checkpoint_every == 0)
            && !last
        {
            let st = CheckpointState { version: 1, epochs_done: epoch + 1, steps: engine.steps(), history: history.clone() };
            save_checkpoint(dir, &*engine, &st)?;
        }
    }
    Ok(Outcome { weights: engine.weights()?, history, resumed_from: start, steps: engine.steps() })
}

/// Drop the weights of `graph`'s layers whose shapes differ from the file's: the new head
/// when the number of classes changes. Only the layers in `replaceable` may be dropped.
pub fn drop_mismatched(graph: &ModelGraph, w: &mut HashMap<String, WeightData>, replaceable: &[String]) -> Result<Vec<String>, String> {
    let shapes = graph.weights();
    let mut dropped = Vec::new();
    for (name, shape) in &shapes {
        let Some(d) = w.get(name) else { continue };
        if &d.shape != shape {
            let layer = name.rsplit_once('.').map(|(l, _)| l).unwrap_or(name);
            if replaceable.iter().any(|r| r == layer) {
                w.remove(name);
                if !dropped.contains(&layer.to_string()) {
                    dropped.push(layer.to_string());
                }
            } else {
                return Err(format!("pretrained weight `{name}` has shape {:?}, the model needs {shape:?}\n  = hint: check `arch` and `width` against the weights file", d.shape));
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunking (which images share batch-norm statistics) follows the batch, not the
    /// machine: one training step's loss, batch-norm statistics and gradients are the same
    /// (to f32 rounding) on 1, 2 and 3 threads, while another chunking gives others. (Whole
    /// runs are not compared: Burn's own reductions are not bitwise reproducible, and a few
    /// steps amplify that past any fixed tolerance.)
    #[test]
    fn cpu_training_does_not_depend_on_the_thread_count() {
        type A = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
        let mut g = crate::model::testutil::graphs().remove(2); // MobileNetV2 x0.5, 32x32, 7 classes
        // Dropout's draws come from NdArray's one generator, which concurrent chunks reach in
        // whatever order their threads run: off here (see README, "On the CPU").
        for l in g.layers.iter_mut() {
            if let crate::model::graph::Op::Dropout { p } = &mut l.op {
                *p = 0.0;
            }
        }
        let w = crate::model::testutil::random_weights(&g, 3);
        let device = Default::default();
        let (net, _) = GraphNet::<A>::new(&g, &device).unwrap().load_weights(&w, &device).unwrap();
        let mut rng = crate::data::rng::Rng::new(9);
        let n = 48;
        let images: Vec<f32> = (0..n * g.input.len()).map(|_| rng.f64() as f32 - 0.5).collect();
        let labels: Vec<u32> = (0..n).map(|i| (i % 7) as u32).collect();
        let b = Batch { len: n, images, labels, keys: vec![String::new(); n], targets: vec![None; n], boxes: vec![Vec::new(); n], masks: vec![None; n] };
        assert_eq!(default_chunks(n), 3);
        assert_eq!((default_chunks(8), default_chunks(32), default_chunks(1000)), (1, 2, 8));
        let step = |chunks: usize, threads: usize| {
            let (loss, _, grads, stats) = step_parallel(&net, &b, &g, &crate::tasks::Objective::for_graph(&g, 0.0, None), chunks, threads, &device).unwrap();
            let flat = |t: &Tensor<burn::backend::NdArray<f32>, 1>| t.clone().into_data().to_vec::<f32>().unwrap();
            let mut gs: Vec<(String, Vec<f32>)> = grads.iter().map(|(k, t)| (k.clone(), flat(t))).collect();
            gs.sort_by(|a, b| a.0.cmp(&b.0));
            let st: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = stats.iter().map(|s| (s.index, s.count, flat(&s.mean), flat(&s.var))).collect();
            (loss, gs, st)
        };
        let rel = |a: &[f32], b: &[f32]| {
            let m = a.iter().map(|x| x.abs()).fold(1e-6f32, f32::max);
            a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / m
        };
        let (l1, g1, s1) = step(3, 1);
        for threads in [2, 3] {
            let (l, g, s) = step(3, threads);
            assert!((l - l1).abs() < 1e-5, "{threads} threads: loss {l} vs {l1}");
            assert_eq!(s.len(), s1.len());
            for (a, b) in s1.iter().zip(&s) {
                assert_eq!((a.0, a.1), (b.0, b.1), "{threads} threads: batch norms over other images");
                assert!(rel(&a.2, &b.2) < 1e-4 && rel(&a.3, &b.3) < 1e-4, "{threads} threads: batch-norm statistics differ");
            }
            // All gradients as one vector (some are rounding noise around an exact zero, such as
            // the projection batch norms' biases, and have no relative accuracy of their own).
            let all = |g: &[(String, Vec<f32>)]| g.iter().flat_map(|(_, v)| v.iter().copied()).collect::<Vec<f32>>();
            assert_eq!(g1.iter().map(|(k, _)| k).collect::<Vec<_>>(), g.iter().map(|(k, _)| k).collect::<Vec<_>>());
            let r = rel(&all(&g1), &all(&g));
            assert!(r < 1e-4, "{threads} threads: gradients differ by {r} of the largest");
        }
        // Whole-batch statistics are another computation, which the checks above tell apart.
        let (l, _, s) = step(1, 2);
        assert!(s.len() * 3 == s1.len() && (l - l1).abs() > 1e-4, "one chunk: loss {l} vs {l1}");
    }
}
