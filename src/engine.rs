//! The executor: walks the DAG with tokio, runs independent stages at once, serves cache
//! hits from the store, and records results in the store and the lock file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::config::Pipeline;
use crate::fingerprint::{Fingerprint, SCHEMA};
use crate::gpu::GpuPool;
use crate::graph::{Graph, InputSource};
use crate::hash::{digest_path, Digest, StatCache};
use crate::lockfile::{LockFile, LockStage};
use crate::stages::{RunCtx, StageError};
use crate::store::{Manifest, OutputRecord, Provenance, Store};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    pub force_all: bool,
    pub force: Vec<String>,
    pub only: Vec<String>,
    pub downstream: bool,
    pub jobs: usize,
    pub keep_going: bool,
    /// `taoflow run --device`: where `train`/`retrain`/`evaluate` stages run, over their own `gpus`.
    pub device: DeviceChoice,
}

/// `--device auto|cpu|cuda`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// What each stage's `gpus` says.
    #[default]
    Auto,
    /// Every model stage (train, retrain, evaluate) on the CPU (`gpus = 0`).
    Cpu,
    /// Every model stage on a GPU (at least `gpus = 1`); `cuda:N` uses GPU N only.
    Cuda(Option<u32>),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(None)),
            _ => match s.strip_prefix("cuda:").map(|n| n.parse::<u32>()) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(Some(n))),
                _ => Err(format!("`{s}` is not a device: use auto, cpu, cuda or cuda:N (N a GPU ordinal)")),
            },
        }
    }
}

/// The GPUs a stage leases, after `--device`.
fn gpus_needed(kind: &str, gpus: u32, device: DeviceChoice) -> usize {
    let trains = matches!(kind, "train" | "retrain" | "evaluate");
    match device {
        DeviceChoice::Cpu if trains => 0,
        DeviceChoice::Cuda(_) if trains => gpus.max(1) as usize,
        _ => gpus as usize,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ran,
    Cached,
    Failed,
    Skipped,
    WouldRun,
    Interrupted,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ran => "ran",
            Status::Cached => "cached",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::WouldRun => "would-run",
            Status::Interrupted => "interrupted",
        }
    }
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why the stage ran (or would run): what changed since the lock file.
    pub reasons: Vec<String>,
    /// Outputs recreated in the workspace from the store (or that would be).
    pub restored: Vec<String>,
    /// What the stage had to say: a summary, warnings, skipped samples.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_s: f64,
    #[serde(skip)]
    pub log: Option<PathBuf>,
    /// Selected by `--only` (every stage without it). A stage left out by `--only` and
    /// skipped is what the user asked for, not a failure of the run.
    #[serde(skip)]
    pub selected: bool,
}

/// Receives events as the run goes.
pub trait Reporter: Send + Sync {
    fn started(&self, stage: &str);
    fn waiting(&self, stage: &str, why: &str);
    fn finished(&self, report: &StageReport);
    fn warn(&self, msg: &str);
    /// A running stage's progress: `done` of `total` units, and a short status line.
    fn progress(&self, _stage: &str, _done: u64, _total: u64, _msg: &str) {}
    /// A line worth keeping from a running stage (an epoch's result).
    fn note(&self, _stage: &str, _msg: &str) {}
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub reports: Vec<StageReport>,
    pub interrupted: bool,
}

impl RunSummary {
    pub fn count(&self, s: Status) -> usize {
        self.reports.iter().filter(|r| r.status == s).count()
    }
    /// Nothing failed or was interrupted, and every selected stage ran or was cached (stages
    /// left out by `--only` may be skipped).
    pub fn ok(&self) -> bool {
        !self.interrupted
            && self.count(Status::Failed) == 0
            && self.count(Status::Interrupted) == 0
            && !self.reports.iter().any(|r| r.status == Status::Skipped && r.selected)
    }
}

/// The outcome a stage passes to its dependents.
#[derive(Debug)]
struct Done {
    status: Status,
    /// Output name -> (digest, absolute workspace path); `None` if not available.
    outputs: Option<BTreeMap<String, (Digest, PathBuf)>>,
    fingerprint: Option<Fingerprint>,
    records: BTreeMap<String, OutputRecord>,
    key: Option<String>,
}

impl Done {
    /// A stage that produced nothing usable downstream.
    fn empty(status: Status) -> Done {
        Done { status, outputs: None, fingerprint: None, records: BTreeMap::new(), key: None }
    }
}

struct Engine {
    p: Arc<Pipeline>,
    g: Arc<Graph>,
    store: Arc<Store>,
    stat: Arc<StatCache>,
    lock: LockFile,
    opts: RunOptions,
    reporter: Arc<dyn Reporter>,
    cancel: watch::Receiver<bool>,
    jobs: Arc<Semaphore>,
    gpus: Arc<GpuPool>,
    halt: AtomicBool,
    selected: Vec<bool>,
    forced: Vec<bool>,
}

/// Check stage names given on the command line.
pub fn check_stage_names(p: &Pipeline, names: &[String], flag: &str) -> Result<(), String> {
    for n in names {
        if p.stage(n).is_none() {
            let all: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
            let hint = match crate::diag::did_you_mean(n, all.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("stages: {}", all.join(", ")),
            };
            return Err(format!("{flag}: no stage named `{n}` in {}\n  = hint: {hint}", p.path.display()));
        }
    }
    Ok(())
}

/// Run (or, with `dry_run`, plan) a pipeline.
/// The job slots and GPUs stages lease: one set per `run`, or one shared by the variants
/// of a sweep (`crate::sweep`), so that together they use the machine as one run would.
pub struct Resources {
    pub jobs: Arc<Semaphore>,
    pub gpus: Arc<GpuPool>,
}

impl Resources {
    pub fn new(jobs: usize, device: DeviceChoice) -> Resources {
        Resources {
            jobs: Arc::new(Semaphore::new(jobs.max(1))),
            gpus: Arc::new(GpuPool::new(match device {
                // `cuda:N`: GPU N only (none when this machine lacks it: stages then say so).
                DeviceChoice::Cuda(Some(n)) => crate::gpu::detect().into_iter().filter(|g| *g == n).collect(),
                _ => crate::gpu::detect(),
            })),
        }
    }
}

pub async fn run(
    p: Arc<Pipeline>,
    g: Arc<Graph>,
    store: Arc<Store>,
    opts: RunOptions,
    reporter: Arc<dyn Reporter>,
    cancel: watch::Receiver<bool>,
) -> RunSummary {
    let res = Resources::new(opts.jobs, opts.device);
    run_with(p, g, store, opts, reporter, cancel, &res).await
}

/// `run` on resources shared with other runs (a sweep's variants).
pub async fn run_with(
    p: Arc<Pipeline>,
    g: Arc<Graph>,
    store: Arc<Store>,
    opts: RunOptions,
    reporter: Arc<dyn Reporter>,
    cancel: watch::Receiver<bool>,
    res: &Resources,
) -> RunSummary {
    let n = p.stages.len();
    let mut selected = vec![opts.only.is_empty(); n];
    for name in &opts.only {
        if let Some(i) = p.stage_index(name) {
            if opts.downstream {
                for j in g.downstream_closure(i) {
                    selected[j] = true;
                }
            } else {
                selected[i] = true;
            }
        }
    }
    let mut forced = vec![opts.force_all; n];
    for name in &opts.force {
        if let Some(i) = p.stage_index(name) {
            forced[i] = true;
        }
    }
    let stat = Arc::new(StatCache::load(&store.stat_cache_path()));
    let lock = LockFile::read(&p.lock_path());
    let engine = Arc::new(Engine {
        p: Arc::clone(&p),
        g: Arc::clone(&g),
        store: Arc::clone(&store),
        stat: Arc::clone(&stat),
        lock,
        reporter,
        cancel,
        jobs: Arc::clone(&res.jobs),
        gpus: Arc::clone(&res.gpus),
        halt: AtomicBool::new(false),
        selected,
        forced,
        opts,
    });

    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = watch::channel::<Option<Arc<Done>>>(None);
        senders.push(tx);
        receivers.push(rx);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, tx) in senders.into_iter().enumerate() {
        let ups: Vec<(usize, watch::Receiver<Option<Arc<Done>>>)> = g.upstream[i].iter().map(|u| (*u, receivers[*u].clone())).collect();
        let e = Arc::clone(&engine);
        tasks.spawn(async move {
            // External inputs do not depend on other stages: hash them now, while the
            // stages upstream still run.
            let prehash = e.start_prehash(i);
            let mut upstream = BTreeMap::new();
            for (u, mut rx) in ups {
                let done = loop {
                    if let Some(d) = rx.borrow().clone() {
                        break d;
                    }
                    if rx.changed().await.is_err() {
                        break Arc::new(Done::empty(Status::Failed));
                    }
                };
                upstream.insert(u, done);
            }
            let start = Instant::now();
            let (report, done) = e.stage(i, &upstream, prehash).await;
            let mut report = report;
            report.duration_s = start.elapsed().as_secs_f64();
            if report.status == Status::Failed && !e.opts.keep_going {
                e.halt.store(true, Ordering::SeqCst);
            }
            e.reporter.finished(&report);
            let _ = tx.send(Some(Arc::new(done)));
            (i, report)
        });
    }
    let mut reports: Vec<Option<StageReport>> = vec![None; n];
    let mut done_lock: BTreeMap<String, LockStage> = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((i, rep)) => reports[i] = Some(rep),
            Err(e) => tracing::error!("a stage task crashed: {e}"),
        }
    }
    for (i, rx) in receivers.iter().enumerate() {
        if let Some(d) = rx.borrow().as_ref()
            && matches!(d.status, Status::Ran | Status::Cached)
            && let (Some(fp), Some(key)) = (&d.fingerprint, &d.key)
        {
            done_lock.insert(p.stages[i].name.clone(), LockStage { key: key.clone(), fingerprint: fp.clone(), outs: d.records.clone() });
        }
    }
    let interrupted = *engine.cancel.borrow();
    if !engine.opts.dry_run {
        if let Err(e) = update_lock_file(&p, &store, done_lock) {
            engine.reporter.warn(&format!("cannot write the lock file {}: {e}", p.lock_path().display()));
        }
        if let Err(e) = stat.save() {
            tracing::debug!("cannot save the stat cache: {e}");
        }
        store.register_root(&p.lock_path());
    }
    // Report in pipeline order.
    let reports = reports.into_iter().flatten().collect();
    RunSummary { reports, interrupted }
}

fn update_lock_file(p: &Pipeline, store: &Store, done: BTreeMap<String, LockStage>) -> std::io::Result<()> {
    let path = p.lock_path();
    let name = format!("lockfile-{}", &blake3::hash(path.to_string_lossy().as_bytes()).to_hex()[..16]);
    let _guard = store.lock_name(&name).map_err(std::io::Error::other)?;
    let mut lock = LockFile::read(&path);
    lock.version = crate::lockfile::VERSION;
    lock.pipeline = p.name.clone();
    lock.stages.retain(|k, _| p.stage(k).is_some());
    for (k, v) in done {
        lock.stages.insert(k, v);
    }
    lock.write(&path)
}

impl Engine {
    fn report(&self, i: usize, status: Status) -> StageReport {
        StageReport {
            stage: self.p.stages[i].name.clone(),
            status,
            key: None,
            reasons: Vec::new(),
            restored: Vec::new(),
            notes: Vec::new(),
            error: None,
            duration_s: 0.0,
            log: None,
            selected: self.selected[i],
        }
    }

    fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    fn not_done(&self, i: usize, status: Status, why: String) -> (StageReport, Done) {
        let mut r = self.report(i, status);
        match status {
            Status::WouldRun => r.reasons.push(why),
            _ => r.error = Some(why),
        }
        (r, Done::empty(status))
    }

    /// Start hashing the stage's external inputs that no stage writes into.
    fn start_prehash(&self, i: usize) -> Option<tokio::task::JoinHandle<Vec<Hashed>>> {
        let list: Vec<(String, PathBuf, crate::diag::Span)> = self.g.inputs[i]
            .iter()
            .filter_map(|r| match &r.source {
                InputSource::Path { path, upstream } if upstream.is_empty() => Some((r.label.clone(), path.clone(), r.span.clone())),
                _ => None,
            })
            .collect();
        if list.is_empty() {
            return None;
        }
        let stat = Arc::clone(&self.stat);
        Some(tokio::task::spawn_blocking(move || hash_inputs(list, &stat)))
    }

    async fn stage(&self, i: usize, upstream: &BTreeMap<usize, Arc<Done>>, prehash: Option<tokio::task::JoinHandle<Vec<Hashed>>>) -> (StageReport, Done) {
        let st = &self.p.stages[i];
        // Upstream problems decide first.
        for (u, d) in upstream {
            if d.outputs.is_none() {
                let un = &self.p.stages[*u].name;
                return match d.status {
                    Status::WouldRun => self.not_done(i, Status::WouldRun, format!("upstream stage `{un}` runs first")),
                    Status::Interrupted => self.not_done(i, Status::Interrupted, "interrupted".into()),
                    Status::Failed => self.not_done(i, Status::Skipped, format!("upstream stage `{un}` failed")),
                    _ => self.not_done(i, Status::Skipped, format!("upstream stage `{un}` has no result")),
                };
            }
        }
        if self.cancelled() {
            return self.not_done(i, Status::Interrupted, "interrupted".into());
        }
        if self.halt.load(Ordering::SeqCst) {
            return self.not_done(i, Status::Skipped, "stopped after an earlier failure (use --keep-going to run independent stages)".into());
        }

        // Inputs -> digests and paths.
        let mut input_paths = BTreeMap::new();
        let mut to_hash: Vec<(String, PathBuf, crate::diag::Span)> = Vec::new();
        let mut inputs: BTreeMap<String, Digest> = BTreeMap::new();
        for r in &self.g.inputs[i] {
            match &r.source {
                InputSource::Artifact { stage, output, sub } => {
                    let outs = upstream[stage].outputs.as_ref().expect("checked above");
                    let (digest, path) = &outs[output];
                    match sub {
                        None => {
                            inputs.insert(r.label.clone(), digest.clone());
                            input_paths.insert(r.label.clone(), path.clone());
                        }
                        Some(s) => {
                            to_hash.push((r.label.clone(), path.join(s), r.span.clone()));
                        }
                    }
                }
                InputSource::Path { path, upstream } if !upstream.is_empty() => to_hash.push((r.label.clone(), path.clone(), r.span.clone())),
                InputSource::Path { .. } => {}
            }
        }
        let mut hashed = match prehash {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        };
        if !to_hash.is_empty() {
            let stat = Arc::clone(&self.stat);
            hashed.extend(tokio::task::spawn_blocking(move || hash_inputs(to_hash, &stat)).await.unwrap_or_default());
        }
        {
            for (label, res, path, span) in hashed {
                match res {
                    Ok(d) => {
                        inputs.insert(label.clone(), d);
                        input_paths.insert(label, path);
                    }
                    Err(e) => {
                        let msg = if e.kind() == std::io::ErrorKind::NotFound {
                            crate::diag::Diag::error(format!("input `{label}` of stage `{}` does not exist", st.name))
                                .at(&span, format!("not found: {}", path.display()))
                                .hint("create it, fix the path (relative to the pipeline's folder), or list it in the `outs` of the stage that makes it")
                        } else {
                            crate::diag::Diag::error(format!("cannot read input `{label}` of stage `{}`: {e}", st.name)).at(&span, "this input")
                        };
                        return self.not_done(i, Status::Failed, msg.render(false).trim_end().to_string());
                    }
                }
            }
        }
        let fp = Fingerprint {
            schema: SCHEMA,
            kind: st.kind.name().to_string(),
            kind_version: st.kind.version(),
            seed: self.p.seed,
            params: st.def.params.clone(),
            inputs,
        };
        let key = fp.key();
        tracing::debug!(stage = %st.name, key = %key, fingerprint = %String::from_utf8_lossy(&fp.canonical()), "stage key");
        let reasons = self.reasons(i, &fp, &key);
        let out_paths: BTreeMap<String, PathBuf> = st.def.outputs.iter().map(|o| (o.name.clone(), self.p.dir.join(&o.path))).collect();

        if (!self.forced[i] || !self.selected[i])
            && let Some((m, restore)) = self.lookup(&key, &out_paths).await {
                let mut rep = self.report(i, Status::Cached);
                rep.key = Some(key.clone());
                rep.reasons = reasons.clone();
                if !restore.is_empty() {
                    if self.opts.dry_run {
                        rep.restored = restore;
                    } else {
                        match self.restore(i, &key, &m, &restore, &out_paths).await {
                            Ok(()) => rep.restored = restore,
                            Err(e) => {
                                self.reporter.warn(&format!("stage `{}`: cannot restore from the store ({e}); running it again", st.name));
                                return self.execute(i, fp, key, reasons, out_paths, input_paths).await;
                            }
                        }
                    }
                }
                let done = self.done_from_manifest(Status::Cached, &m, fp, key, &out_paths);
                return (rep, done);
            }
        if !self.selected[i] {
            return self.not_done(
                i,
                Status::Skipped,
                format!("not up to date and not selected by --only ({})", reasons.join("; ")),
            );
        }
        if self.opts.dry_run {
            let mut rep = self.report(i, Status::WouldRun);
            rep.key = Some(key);
            rep.reasons = reasons;
            return (rep, Done::empty(Status::WouldRun));
        }
        self.execute(i, fp, key, reasons, out_paths, input_paths).await
    }

    /// Why a stage's key differs from the one in the lock file.
    fn reasons(&self, i: usize, fp: &Fingerprint, key: &str) -> Vec<String> {
        let st = &self.p.stages[i];
        let mut out = Vec::new();
        if self.forced[i] {
            out.push("forced (--force)".to_string());
        }
        match self.lock.stages.get(&st.name) {
            None => out.push(format!("no earlier run recorded in {}", file_name(&self.p.lock_path()))),
            Some(l) if l.key == key => {
                if self.store.get_manifest(key).is_none() {
                    out.push("its result is not in the store (new store, or removed by gc)".into());
                }
            }
            Some(l) => {
                let d = fp.diff(&l.fingerprint);
                if d.is_empty() {
                    out.push("stage key changed".into());
                }
                out.extend(d);
            }
        }
        out
    }

    /// A usable cached result for `key`: its manifest and the outputs that must be
    /// restored into the workspace.
    async fn lookup(&self, key: &str, out_paths: &BTreeMap<String, PathBuf>) -> Option<(Manifest, Vec<String>)> {
        let store = Arc::clone(&self.store);
        let stat = Arc::clone(&self.stat);
        let key = key.to_string();
        let out_paths = out_paths.clone();
        let reporter = Arc::clone(&self.reporter);
        tokio::task::spawn_blocking(move || {
            let m = store.get_manifest(&key)?;
            if out_paths.keys().any(|k| !m.outputs.contains_key(k)) {
                return None;
            }
            let mut restore = Vec::new();
            for (name, rec) in &m.outputs {
                let Some(ws) = out_paths.get(name) else { continue };
                let current = if ws.exists() { digest_path(ws, &stat).ok() } else { None };
                if current.as_deref() == Some(rec.digest.as_str()) {
                    continue;
                }
                if !store.artifact_present(&rec.digest) {
                    reporter.warn(&format!("the store lost output `{name}` of a cached result ({}); the stage runs again", crate::hash::short(&rec.digest)));
                    return None;
                }
                restore.push(name.clone());
            }
            Some((m, restore))
        })
        .await
        .ok()
        .flatten()
    }

    async fn restore(&self, i: usize, key: &str, m: &Manifest, names: &[String], out_paths: &BTreeMap<String, PathBuf>) -> Result<(), String> {
        let st = &self.p.stages[i];
        let _lock = self.key_lock(key, &st.name).await?;
        let store = Arc::clone(&self.store);
        let stat = Arc::clone(&self.stat);
        // The manifest may come from another stage with the same key: linking follows this one.
        let owned: Vec<String> = st.def.outputs.iter().filter(|o| o.owned).map(|o| o.name.clone()).collect();
        let jobs: Vec<(String, PathBuf, bool)> = names.iter().map(|n| (m.outputs[n].digest.clone(), out_paths[n].clone(), owned.contains(n))).collect();
        tokio::task::spawn_blocking(move || {
            for (digest, path, link) in jobs {
                store.materialize(&digest, &path, &stat, link).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn done_from_manifest(&self, status: Status, m: &Manifest, fp: Fingerprint, key: String, out_paths: &BTreeMap<String, PathBuf>) -> Done {
        let outputs = m.outputs.iter().filter_map(|(n, r)| out_paths.get(n).map(|p| (n.clone(), (r.digest.clone(), p.clone())))).collect();
        Done { status, outputs: Some(outputs), fingerprint: Some(fp), records: m.outputs.clone(), key: Some(key) }
    }

    /// Take the per-key lock, waiting (cancellably) while another process holds it.
    async fn key_lock(&self, key: &str, stage: &str) -> Result<crate::store::KeyLock, String> {
        let mut told = false;
        loop {
            match self.store.try_lock_key(key) {
                Ok(Some(l)) => return Ok(l),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if self.cancelled() {
                return Err("interrupted".into());
            }
            if !told {
                self.reporter.waiting(stage, "another taoflow process is running this stage; waiting for it");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn execute(
        &self,
        i: usize,
        fp: Fingerprint,
        key: String,
        reasons: Vec<String>,
        out_paths: BTreeMap<String, PathBuf>,
        input_paths: BTreeMap<String, PathBuf>,
    ) -> (StageReport, Done) {
        let st = &self.p.stages[i];
        let need = gpus_needed(st.kind.name(), st.def.gpus, self.opts.device);
        if need > self.gpus.total() {
            let have = self.gpus.total();
            return self.not_done(
                i,
                Status::Failed,
                format!(
                    "stage `{}` needs {need} GPU(s) but this machine has {have}\n  = hint: set `gpus = 0` in the stage to run it on the CPU, or run on a machine with GPUs (TAOFLOW_GPUS=0,1 lists them by hand)",
                    st.name
                ),
            );
        }
        let lock = match self.key_lock(&key, &st.name).await {
            Ok(l) => l,
            Err(e) if e == "interrupted" => return self.not_done(i, Status::Interrupted, e),
            Err(e) => return self.not_done(i, Status::Failed, e),
        };
        // Another process may have made it while we waited.
        if !self.forced[i]
            && let Some((m, restore)) = self.lookup(&key, &out_paths).await
        {
            let mut rep = self.report(i, Status::Cached);
            rep.key = Some(key.clone());
            rep.reasons = vec!["made by another taoflow process".into()];
            drop(lock);
            if !restore.is_empty() {
                if let Err(e) = self.restore(i, &key, &m, &restore, &out_paths).await {
                    return self.not_done(i, Status::Failed, e);
                }
                rep.restored = restore;
            }
            let done = self.done_from_manifest(Status::Cached, &m, fp, key, &out_paths);
            return (rep, done);
        }
        let Ok(_permit) = self.jobs.acquire().await else {
            return self.not_done(i, Status::Failed, "internal: job pool closed".into());
        };
        let lease = tokio::select! {
            l = self.gpus.acquire(need) => l,
            _ = wait_cancel(self.cancel.clone()) => return self.not_done(i, Status::Interrupted, "interrupted".into()),
        };
        if self.cancelled() {
            return self.not_done(i, Status::Interrupted, "interrupted".into());
        }
        self.reporter.started(&st.name);
        tracing::info!(stage = %st.name, key = %key, gpus = ?lease.ids, "running");
        let log = self.store.log_path(&self.p.name, &st.name);
        if let Some(parent) = log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let scratch = match tempfile::Builder::new().prefix(&format!("stage-{}-", st.name)).tempdir_in(self.store.tmp_dir()) {
            Ok(d) => d,
            Err(e) => return self.not_done(i, Status::Failed, format!("cannot create a scratch folder in the store: {e}")),
        };
        let ctx = RunCtx {
            stage: st.name.clone(),
            def: st.def.clone(),
            pipeline_dir: self.p.dir.clone(),
            inputs: input_paths,
            outputs: out_paths.clone(),
            scratch: scratch.path().to_path_buf(),
            gpus: lease.ids.clone(),
            seed: self.p.seed,
            log: log.clone(),
            kernel_cache: self.store.root.join("kernels-v1"),
            checkpoints: self.store.root.join("checkpoints-v1").join(&key),
            progress: {
                let reporter = Arc::clone(&self.reporter);
                let stage = st.name.clone();
                let (r2, s2) = (Arc::clone(&reporter), stage.clone());
                crate::stages::ProgressFn::new(Arc::new(move |done, total, msg: &str| reporter.progress(&stage, done, total, msg)), Arc::new(move |msg: &str| r2.note(&s2, msg)))
            },
            cancel: self.cancel.clone(),
        };
        let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let t0 = Instant::now();
        let result = st.kind.run(&ctx).await;
        let duration = t0.elapsed().as_secs_f64();
        drop(lease);
        drop(scratch);
        let mut rep = self.report(i, Status::Ran);
        rep.key = Some(key.clone());
        rep.reasons = reasons;
        rep.log = Some(log.clone());
        let notes = match result {
            Err(StageError::Interrupted) => {
                rep.status = Status::Interrupted;
                rep.error = Some("interrupted; nothing was stored".into());
                return (rep, Done::empty(Status::Interrupted));
            }
            Err(StageError::Failed(msg)) => {
                rep.status = Status::Failed;
                rep.error = Some(msg);
                return (rep, Done::empty(Status::Failed));
            }
            Ok(notes) => notes,
        };
        rep.notes = notes;
        if self.cancelled() {
            rep.status = Status::Interrupted;
            rep.error = Some("interrupted; nothing was stored".into());
            return (rep, Done::empty(Status::Interrupted));
        }
        // Store the outputs, then the manifest: a manifest only ever names stored objects.
        let store = Arc::clone(&self.store);
        let stat = Arc::clone(&self.stat);
        let decls: Vec<(String, PathBuf, PathBuf, bool)> = st.def.outputs.iter().map(|o| (o.name.clone(), o.path.clone(), out_paths[&o.name].clone(), o.owned)).collect();
        let metrics_name = st.def.metrics.clone();
        let ingest = tokio::task::spawn_blocking(move || -> Result<(BTreeMap<String, OutputRecord>, Option<serde_json::Value>), String> {
            let mut recs = BTreeMap::new();
            let mut metrics = None;
            for (name, rel, abs, owned) in decls {
                let h = store.ingest(&abs, &stat, owned).map_err(|e| format!("cannot store output `{name}`: {e}"))?;
                if metrics_name.as_deref() == Some(name.as_str()) {
                    // A folder output holds its metrics in `metrics.json`.
                    let abs = if abs.is_dir() { abs.join("metrics.json") } else { abs.clone() };
                    let text = std::fs::read(&abs).map_err(|e| format!("cannot read metrics file `{}`: {e}", rel.display()))?;
                    let v: serde_json::Value = serde_json::from_slice(&text)
                        .map_err(|e| format!("metrics file `{}` is not valid JSON: {e}\n  = hint: the stage's command must write a JSON object", rel.display()))?;
                    metrics = Some(v);
                }
                recs.insert(name, OutputRecord { path: rel.to_string_lossy().to_string(), digest: h.digest(), size: h.size(), files: h.file_count() });
            }
            Ok((recs, metrics))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let (records, metrics) = match ingest {
            Ok(x) => x,
            Err(msg) => {
                rep.status = Status::Failed;
                rep.error = Some(msg);
                return (rep, Done::empty(Status::Failed));
            }
        };
        let device = if ctx.gpus.is_empty() {
            "cpu".to_string()
        } else {
            format!("cuda:{}", ctx.gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(","))
        };
        let manifest = Manifest {
            v: 1,
            key: key.clone(),
            stage: st.name.clone(),
            pipeline: self.p.name.clone(),
            fingerprint: fp.clone(),
            outputs: records,
            metrics,
            provenance: Provenance {
                host: hostname::get().map(|h| h.to_string_lossy().to_string()).unwrap_or_default(),
                device,
                started_unix,
                duration_s: duration,
                taoflow_version: env!("CARGO_PKG_VERSION").to_string(),
                os: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            },
        };
        tracing::info!(stage = %st.name, key = %key, seconds = duration, "stored result");
        if let Err(e) = self.store.put_manifest(&manifest) {
            rep.status = Status::Failed;
            rep.error = Some(e.to_string());
            return (rep, Done::empty(Status::Failed));
        }
        drop(lock);
        let done = self.done_from_manifest(Status::Ran, &manifest, fp, key, &out_paths);
        (rep, done)
    }
}

/// (label, digest or error, path, span) of each input hashed.
type Hashed = (String, std::io::Result<Digest>, PathBuf, crate::diag::Span);

fn hash_inputs(list: Vec<(String, PathBuf, crate::diag::Span)>, stat: &StatCache) -> Vec<Hashed> {
    list.into_iter().map(|(label, path, span)| (label, digest_path(&path, stat), path, span)).collect()
}

async fn wait_cancel(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod device_tests {
    use super::*;

    #[test]
    fn device_choices_parse_and_apply_to_model_stages_only() {
        assert_eq!("auto".parse::<DeviceChoice>(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(None)));
        assert_eq!("cuda:2".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(Some(2))));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
            assert!(bad.parse::<DeviceChoice>().unwrap_err().contains("cuda:N"), "{bad}");
        }
        assert_eq!(gpus_needed("train", 0, DeviceChoice::Cuda(None)), 1);
        assert_eq!(gpus_needed("evaluate", 0, DeviceChoice::Cuda(Some(1))), 1);
        assert_eq!(gpus_needed("retrain", 1, DeviceChoice::Cpu), 0);
        assert_eq!(gpus_needed("train", 1, DeviceChoice::Auto), 1);
        // Other kinds keep their own `gpus` (augment's kernel, exec commands).
        assert_eq!(gpus_needed("augment", 1, DeviceChoice::Cpu), 1);
        assert_eq!(gpus_needed("exec", 0, DeviceChoice::Cuda(None)), 0);
    }
}
