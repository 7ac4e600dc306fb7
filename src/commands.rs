//! The subcommands. Each returns the process exit code.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use tokio::sync::watch;

use crate::cli::{Cli, Command, PipelineArg};
use crate::config::{self, Pipeline};
use crate::engine::{self, RunOptions, RunSummary, Status};
use crate::graph::{self, Graph, InputSource};
use crate::lockfile::LockFile;
use crate::store::Store;
use crate::ui::{color_enabled, Ui};

pub const EXIT_OK: i32 = 0;
pub const EXIT_STAGE_FAILED: i32 = 1;
pub const EXIT_INVALID: i32 = 2;
pub const EXIT_STORE: i32 = 3;
pub const EXIT_INTERRUPTED: i32 = 130;

/// Where the store is: `--store`/`TAOFLOW_STORE`, else `cache/` in the nearest folder
/// above the pipeline that has a `cache/` folder or is a git checkout, else beside it.
pub fn store_root(flag: Option<&Path>, pipeline_dir: &Path) -> PathBuf {
    crate::runtime::store_root(flag, pipeline_dir)
}

/// The CUDA driver's JIT cache in the store: `CUDA_CACHE_PATH=<store>/cuda-jit` for `run`,
/// unless the user set it. The driver keeps there what it compiles from PTX at run time
/// (cuDNN's run-time compiled engines among them; our kernels in `kernels/`), keyed by GPU
/// architecture, driver and source, so the second process on a machine, or a fresh machine
/// with the store, starts its first GPU step seconds sooner (BENCHMARKS.md, #8). Call it
/// before any thread starts: it sets an environment variable.
pub fn set_cuda_jit_cache(cli: &Cli) {
    let Command::Run { p, .. } = &cli.command else { return };
    if std::env::var_os("CUDA_CACHE_PATH").is_some() {
        return;
    }
    // An unreadable pipeline folder is `run`'s own error to report, a moment later.
    let Ok(dir) = config::pipeline_dir(&p.pipeline) else { return };
    let jit = store_root(cli.store.as_deref(), &dir).join("cuda-jit");
    // SAFETY: called from `main` before the async runtime or any other thread exists.
    unsafe { std::env::set_var("CUDA_CACHE_PATH", jit) };
}

/// The GPU engine's own look at libtorch for `doctor` (builds with the `torch` feature).
fn torch_probe() -> Option<crate::runtime::TorchProbe> {
    #[cfg(feature = "torch")]
    return Some(crate::model::torch::probe());
    #[cfg(not(feature = "torch"))]
    None
}

fn eprint_error(msg: &str) {
    let head = if color_enabled() { "\x1b[1;31merror\x1b[0m" } else { "error" };
    eprintln!("{head}: {msg}");
}

/// Load and validate a pipeline and its graph; print diagnostics on failure.
fn load(p: &PipelineArg) -> Result<(Arc<Pipeline>, Arc<Graph>), i32> {
    let pipeline = config::load(&p.pipeline, &p.set).map_err(|d| {
        eprint!("{}", d.render(color_enabled()));
        EXIT_INVALID
    })?;
    let g = graph::build(&pipeline).map_err(|d| {
        eprint!("{}", d.render(color_enabled()));
        EXIT_INVALID
    })?;
    Ok((Arc::new(pipeline), Arc::new(g)))
}

type Loaded = (Arc<Pipeline>, Arc<Graph>, Arc<Store>);

/// Load a pipeline, its graph and its store.
fn load_all(cli: &Cli, p: &PipelineArg) -> Result<Loaded, i32> {
    let (pipeline, g) = load(p)?;
    let store = open_store(cli, &pipeline)?;
    Ok((pipeline, g, store))
}

fn open_store(cli: &Cli, p: &Pipeline) -> Result<Arc<Store>, i32> {
    let root = store_root(cli.store.as_deref(), &p.dir);
    Store::open(&root).map(Arc::new).map_err(|e| {
        eprint_error(&format!("{e}\n  = hint: pass --store DIR or set TAOFLOW_STORE to a writable folder"));
        EXIT_STORE
    })
}

/// Cancellation: the first Ctrl-C (or SIGTERM) stops cleanly, a second one exits at once.
pub fn cancel_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut count = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
            count += 1;
            if count == 1 {
                eprintln!("\ninterrupted: stopping running stages (press Ctrl-C again to quit at once)");
                let _ = tx.send(true);
            } else {
                std::process::exit(EXIT_INTERRUPTED);
            }
        }
    });
    rx
}

fn summary_line(s: &RunSummary, elapsed: Duration) -> String {
    let mut parts = vec![format!("{} ran", s.count(Status::Ran)), format!("{} cached", s.count(Status::Cached))];
    for (st, w) in [(Status::Failed, "failed"), (Status::Skipped, "skipped"), (Status::Interrupted, "interrupted"), (Status::WouldRun, "would run")] {
        let c = s.count(st);
        if c > 0 {
            parts.push(format!("{c} {w}"));
        }
    }
    format!("{} stage(s): {} in {:.2}s", s.reports.len(), parts.join(", "), elapsed.as_secs_f64())
}

fn exit_code(s: &RunSummary) -> i32 {
    if s.interrupted {
        EXIT_INTERRUPTED
    } else if s.ok() {
        EXIT_OK
    } else {
        EXIT_STAGE_FAILED
    }
}

pub async fn main(cli: Cli) -> i32 {
    match &cli.command {
        Command::Run { p, dry_run, force, only, downstream, jobs, keep_going, json, device, progress, quiet, sweep } => {
            let t0 = Instant::now();
            let (fixed, axes) = match crate::sweep::parse_axes(&p.set) {
                Ok(x) => x,
                Err(e) => {
                    eprint_error(&e);
                    return EXIT_INVALID;
                }
            };
            let opts = RunOptions {
                dry_run: *dry_run,
                force_all: force.iter().any(|f| f == "*"),
                force: force.iter().filter(|f| *f != "*").cloned().collect(),
                only: only.clone(),
                downstream: *downstream,
                jobs: jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
                keep_going: *keep_going,
                device: *device,
            };
            let ui = Arc::new(Ui::with_progress(*json, *progress, *quiet));
            if !axes.is_empty() || sweep.is_some() {
                return run_sweep(&cli, &p.pipeline, &fixed, &axes, sweep.unwrap_or(crate::sweep::Mode::Grid), opts, ui, *json).await;
            }
            let (pipeline, g, store) = match load_all(&cli, p) {
                Ok(x) => x,
                Err(c) => return c,
            };
            if let Err(e) = check_flags(&pipeline, &opts) {
                eprint_error(&e);
                return EXIT_INVALID;
            }
            let cancel = cancel_on_signals();
            let s = engine::run(pipeline, g, store, opts, ui, cancel).await;
            if !*json {
                eprintln!("{}", summary_line(&s, t0.elapsed()));
            }
            exit_code(&s)
        }
        Command::Status { p, json } => {
            let (pipeline, g, store) = match load_all(&cli, p) {
                Ok(x) => x,
                Err(c) => return c,
            };
            let s = dry_run(Arc::clone(&pipeline), g, store).await;
            if *json {
                for r in &s.reports {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                }
                return EXIT_OK;
            }
            let ui = Ui::for_status();
            let mut stale = 0;
            for r in &s.reports {
                if r.status == Status::Cached && r.restored.is_empty() {
                    continue;
                }
                stale += 1;
                println!("{}", ui.describe(r));
            }
            if stale == 0 {
                println!("{}: all {} stage(s) up to date", pipeline.path.display(), s.reports.len());
            }
            EXIT_OK
        }
        Command::Dag { p, dot, mermaid } => {
            let (pipeline, g) = match load(p) {
                Ok(x) => x,
                Err(c) => return c,
            };
            print!("{}", render_dag(&pipeline, &g, if *dot { DagFormat::Dot } else if *mermaid { DagFormat::Mermaid } else { DagFormat::Text }));
            EXIT_OK
        }
        Command::Show { p, json, all } => {
            let (pipeline, _g, store) = match load_all(&cli, p) {
                Ok(x) => x,
                Err(c) => return c,
            };
            show(&pipeline, &store, *json, *all)
        }
        Command::Report { p, output, compare } => {
            let (pipeline, g, store) = match load_all(&cli, p) {
                Ok(x) => x,
                Err(c) => return c,
            };
            report(&pipeline, g, store, &p.pipeline, output.as_deref(), compare).await
        }
        Command::Diff { pipeline, rev, to, params, metrics, all, json } => diff(&cli, pipeline, rev, to.as_deref(), *params, *metrics, *all, *json),
        Command::Exp { what: crate::cli::ExpCommand::Show { pipeline, sort_by, ascending, max_commits, all, json, csv } } => {
            exp_show(&cli, pipeline, sort_by.as_deref(), *ascending, *max_commits, *all, *json, *csv)
        }
        Command::Exp { what: crate::cli::ExpCommand::Apply { pipeline, name } } => exp_apply(&cli, pipeline, name),
        Command::Gc { keep_days, dry_run, pipeline } => {
            let root = match (&cli.store, pipeline) {
                (Some(s), _) => s.clone(),
                (None, Some(p)) => {
                    let dir = p.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }).unwrap_or(Path::new("."));
                    store_root(None, &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()))
                }
                (None, None) => store_root(None, &std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))),
            };
            if !root.join("CACHEDIR.TAG").exists() {
                eprint_error(&format!("`{}` is not a taoflow store (no CACHEDIR.TAG)\n  = hint: pass --store DIR", root.display()));
                return EXIT_STORE;
            }
            match Store::open(&root) {
                Ok(s) => gc(&s, *keep_days, *dry_run),
                Err(e) => {
                    eprint_error(&e.to_string());
                    EXIT_STORE
                }
            }
        }
        Command::Checkout { pipeline, stages } => {
            let arg = PipelineArg { pipeline: pipeline.clone(), set: Vec::new() };
            let (p, _g) = match load(&arg) {
                Ok(x) => x,
                Err(c) => return c,
            };
            if let Err(e) = engine::check_stage_names(&p, stages, "checkout") {
                eprint_error(&e);
                return EXIT_INVALID;
            }
            let store = match open_store(&cli, &p) {
                Ok(s) => s,
                Err(c) => return c,
            };
            checkout(&p, &store, stages)
        }
        Command::Synth { what: crate::cli::SynthCommand::Kitti { out, count, width, height, seed, classes, max_objects } } => {
            let spec = crate::data::synth::SynthSpec { count: *count, width: *width, height: *height, seed: *seed, classes: classes.clone(), max_objects: *max_objects };
            match crate::data::synth::kitti(out, &spec) {
                Ok(n) => {
                    eprintln!("wrote {count} image(s) with {n} box(es) to {}", out.display());
                    EXIT_OK
                }
                Err(e) => {
                    eprint_error(&e.to_string());
                    EXIT_STORE
                }
            }
        }
        Command::Preview { dataset, out, split, count } => match crate::data::preview::preview(dataset, split, *count, out) {
            Ok(files) => {
                for f in &files {
                    println!("{}", out.join(f).display());
                }
                EXIT_OK
            }
            Err(e) => {
                eprint_error(&e.to_string());
                EXIT_STAGE_FAILED
            }
        },
        Command::BenchAugment { batch, width, height, iters, gpu, no_cpu } => bench_augment(*batch, *width, *height, *iters, *gpu, *no_cpu),
        Command::Forward { arch, classes, weights, input, shape, out } => match forward_cmd(arch, *classes, weights, input, shape, out) {
            Ok(msg) => {
                eprintln!("{msg}");
                EXIT_OK
            }
            Err(e) => {
                eprint_error(&e);
                EXIT_STAGE_FAILED
            }
        },
        Command::Infer { model, images, top_k, json, batch_size, min_score, kitti, draw } => infer_cmd(model, images, *top_k, *json, *batch_size, *min_score, kitti.as_deref(), draw.as_deref()),
        Command::EvalDetections { gt, dets, classes, iou, min_height, max_height, min_width, max_width, ap_mode, json, out, images, grid, grid_score } => {
            let o = crate::tasks::detection::report::EvalOptions {
                classes: classes.clone(),
                iou: iou.clone(),
                min_height: min_height.clone(),
                max_height: max_height.clone(),
                min_width: min_width.clone(),
                max_width: max_width.clone(),
                ap_mode: ap_mode.clone(),
            };
            let g = images.as_ref().map(|dir| crate::tasks::detection::report::GridOptions { images: crate::tasks::detection::grid::Images::Dir(dir.clone()), count: *grid, min_score: *grid_score });
            eval_detections_cmd(gt, dets, &o, *json, out.as_deref(), g.as_ref())
        }
        Command::Doctor { pipeline, json } => {
            let search = cfg!(feature = "torch").then(crate::runtime::find_libtorch);
            let report = crate::runtime::doctor(crate::runtime::DoctorInput { store: cli.store.clone(), pipeline: pipeline.clone(), search, torch: torch_probe(), engine_missing: None });
            if *json {
                println!("{}", serde_json::to_string_pretty(&report).expect("the report serialises"));
            } else {
                print!("{}", crate::runtime::render(&report));
            }
            EXIT_OK
        }
        Command::Schema { output } => {
            let mut text = serde_json::to_string_pretty(&crate::schema::pipeline_schema()).expect("the schema serialises");
            text.push('\n');
            match output {
                None => {
                    print!("{text}");
                    EXIT_OK
                }
                Some(path) => match crate::store::write_atomic(path, text.as_bytes()) {
                    Ok(()) => EXIT_OK,
                    Err(e) => {
                        eprint_error(&format!("cannot write `{}`: {e}", path.display()));
                        EXIT_STORE
                    }
                },
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut crate::cli::Cli::command(), "taoflow", &mut std::io::stdout());
            0
        }
        Command::Hash { paths } => {
            use rayon::prelude::*;
            let stat = crate::hash::StatCache::in_memory();
            let results: Vec<_> = paths.par_iter().map(|p| (p, crate::hash::hash_path(p, &stat))).collect();
            let mut code = EXIT_OK;
            for (p, r) in results {
                match r {
                    Ok(h) => println!("{}  {}  ({} file(s), {} bytes)", h.digest(), p.display(), h.file_count(), h.size()),
                    Err(e) => {
                        eprint_error(&format!("cannot hash `{}`: {e}", p.display()));
                        code = EXIT_STORE;
                    }
                }
            }
            code
        }
        Command::Watch { p, debounce_ms, jobs } => watch_cmd(&cli, p, *debounce_ms, *jobs).await,
    }
}

pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

fn input_text(p: &Pipeline, src: &InputSource, label: &str) -> String {
    match src {
        InputSource::Artifact { stage, output, sub } => {
            let base = format!("{}.{}", p.stages[*stage].name, output);
            match sub {
                Some(s) => format!("{base}/{}", s.display()),
                None => base,
            }
        }
        InputSource::Path { .. } => label.to_string(),
    }
}

pub fn render_dag(p: &Pipeline, g: &Graph, fmt: DagFormat) -> String {
    let mut out = String::new();
    match fmt {
        DagFormat::Text => {
            for &i in &g.order {
                let s = &p.stages[i];
                let gpus = if s.def.gpus > 0 { format!(", {} GPU", s.def.gpus) } else { String::new() };
                out.push_str(&format!("{} ({}{gpus})\n", s.name, s.kind.name()));
                if let Some(d) = &s.def.description {
                    out.push_str(&format!("  # {d}\n"));
                }
                for r in &g.inputs[i] {
                    let kind = if matches!(r.source, InputSource::Path { .. }) { "path" } else { "artifact" };
                    out.push_str(&format!("  <- {} ({kind})\n", input_text(p, &r.source, &r.label)));
                }
                for o in &s.def.outputs {
                    out.push_str(&format!("  -> {}.{} = {}\n", s.name, o.name, o.path.display()));
                }
            }
        }
        DagFormat::Dot => {
            out.push_str(&format!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n", p.name.replace('"', "'")));
            for &i in &g.order {
                let s = &p.stages[i];
                out.push_str(&format!("  \"{}\" [label=\"{}\\n({})\"];\n", s.name, s.name, s.kind.name()));
            }
            for (i, ups) in g.upstream.iter().enumerate() {
                for u in ups {
                    out.push_str(&format!("  \"{}\" -> \"{}\";\n", p.stages[*u].name, p.stages[i].name));
                }
            }
            out.push_str("}\n");
        }
        DagFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for &i in &g.order {
                let s = &p.stages[i];
                out.push_str(&format!("  {}[\"{} ({})\"]\n", mermaid_id(&s.name), s.name, s.kind.name()));
            }
            for (i, ups) in g.upstream.iter().enumerate() {
                for u in ups {
                    out.push_str(&format!("  {} --> {}\n", mermaid_id(&p.stages[*u].name), mermaid_id(&p.stages[i].name)));
                }
            }
        }
    }
    out
}

fn mermaid_id(s: &str) -> String {
    format!("s_{}", s.replace('-', "_"))
}

/// `--force STAGE` and `--only STAGE` must name stages of the pipeline.
fn check_flags(p: &Pipeline, opts: &RunOptions) -> Result<(), String> {
    for (names, flag) in [(&opts.force, "--force"), (&opts.only, "--only")] {
        engine::check_stage_names(p, names, flag)?;
    }
    Ok(())
}

/// `taoflow run P -S a.b=1,2 ...`: the variants of a sweep, at once (`crate::sweep`).
#[allow(clippy::too_many_arguments)]
async fn run_sweep(cli: &Cli, pipeline: &Path, fixed: &[String], axes: &[crate::sweep::Axis], mode: crate::sweep::Mode, opts: RunOptions, ui: Arc<Ui>, json: bool) -> i32 {
    let t0 = Instant::now();
    // The seed of random draws: the pipeline's own (or its -S pipeline.seed).
    let base = match config::load(pipeline, fixed) {
        Ok(p) => p,
        Err(d) => {
            eprint!("{}", d.render(color_enabled()));
            return EXIT_INVALID;
        }
    };
    if axes.is_empty() {
        eprint_error("a sweep needs at least one swept parameter\n  = hint: a list (-S train.lr=0.001,0.01) or, with --sweep random:N, a range (-S train.lr=log:1e-4..1e-1)");
        return EXIT_INVALID;
    }
    let variants = match crate::sweep::expand(axes, mode, base.seed as u64) {
        Ok(v) => v,
        Err(e) => {
            eprint_error(&e);
            return EXIT_INVALID;
        }
    };
    if let Err(e) = check_flags(&base, &opts) {
        eprint_error(&e);
        return EXIT_INVALID;
    }
    let store = match open_store(cli, &base) {
        Ok(s) => s,
        Err(c) => return c,
    };
    let prepared = match crate::sweep::prepare(pipeline, fixed, &variants, &store.root) {
        Ok(v) => v,
        Err(e) => {
            eprint!("{e}");
            if !e.ends_with('\n') {
                eprintln!();
            }
            return EXIT_INVALID;
        }
    };
    if !json {
        eprintln!("sweep: {} variant(s) of {}", prepared.len(), pipeline.display());
    }
    let cancel = cancel_on_signals();
    let summaries = crate::sweep::run_all(&prepared, Arc::clone(&store), opts, ui, cancel).await;
    let mut code = EXIT_OK;
    if !json {
        let rows: Vec<Vec<String>> = prepared
            .iter()
            .zip(&summaries)
            .map(|(v, s)| {
                let status = if s.ok() { "ok" } else if s.interrupted { "interrupted" } else { "failed" };
                vec![v.name.clone(), v.swept.join(" "), format!("{} ran, {} cached", s.count(Status::Ran), s.count(Status::Cached)), status.to_string()]
            })
            .collect();
        eprint!("{}", crate::results::table(&["variant".into(), "overrides".into(), "stages".into(), "status".into()], &rows));
        let ran: usize = summaries.iter().map(|s| s.count(Status::Ran)).sum();
        let cached: usize = summaries.iter().map(|s| s.count(Status::Cached)).sum();
        eprintln!("{} variant(s): {ran} stage run(s), {cached} served from the store, in {:.2}s; compare them: taoflow exp show {}", prepared.len(), t0.elapsed().as_secs_f64(), pipeline.display());
    }
    for s in &summaries {
        let c = exit_code(s);
        if c != EXIT_OK && (code == EXIT_OK || c == EXIT_INTERRUPTED) {
            code = c;
        }
    }
    code
}

fn exp_apply(cli: &Cli, pipeline: &Path, name: &str) -> i32 {
    let (_, store) = match lock_and_store(cli, pipeline) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let variants = crate::sweep::list_variants(&store.root, pipeline);
    let Some((rec, _)) = variants.iter().find(|(r, _)| r.name == name) else {
        let names: Vec<&str> = variants.iter().map(|(r, _)| r.name.as_str()).collect();
        eprint_error(&format!(
            "{} has no variant `{name}`\n  = hint: {}",
            pipeline.display(),
            if names.is_empty() { "run a sweep first: taoflow run P -S train.lr=0.001,0.01".to_string() } else { format!("its variants: {}", names.join(", ")) }
        ));
        return EXIT_INVALID;
    };
    match crate::sweep::apply(pipeline, &rec.overrides) {
        Ok(changed) => {
            for c in &changed {
                eprintln!("   {c}");
            }
            eprintln!("applied {name} to {} ({} value(s)); `taoflow run {}` serves its results from the store", pipeline.display(), changed.len(), pipeline.display());
            EXIT_OK
        }
        Err(e) => {
            eprint_error(&e);
            EXIT_INVALID
        }
    }
}

/// What a run would do now, silently (warnings aside): `status` and `report` show it.
async fn dry_run(p: Arc<Pipeline>, g: Arc<Graph>, store: Arc<Store>) -> RunSummary {
    struct Silent;
    impl engine::Reporter for Silent {
        fn started(&self, _: &str) {}
        fn waiting(&self, _: &str, _: &str) {}
        fn finished(&self, _: &engine::StageReport) {}
        fn warn(&self, m: &str) {
            eprintln!("warning: {m}");
        }
    }
    let (_tx, rx) = watch::channel(false);
    let opts = RunOptions { dry_run: true, jobs: 4, ..Default::default() };
    engine::run(p, g, store, opts, Arc::new(Silent), rx).await
}

/// A run's lock file by name: a sweep variant of the pipeline, else a git revision.
fn named_lock(store: &Store, pipeline: &Path, lock_path: &Path, name: &str) -> Result<LockFile, String> {
    if let Some((_, l)) = crate::sweep::list_variants(&store.root, pipeline).into_iter().find(|(r, _)| r.name == name) {
        return Ok(l);
    }
    let repo = crate::git::Repo::discover(lock_path).map_err(|e| format!("`{name}` is no variant of this pipeline, and {e}"))?;
    lock_at(&repo, name, lock_path).map_err(|e| format!("`{name}` is no variant of this pipeline, and {e}"))
}

async fn report(p: &Arc<Pipeline>, g: Arc<Graph>, store: Arc<Store>, pipeline_path: &Path, output: Option<&Path>, compare: &[String]) -> i32 {
    // Each stage's state, as `taoflow status` finds it.
    let s = dry_run(Arc::clone(p), Arc::clone(&g), Arc::clone(&store)).await;
    let lock = LockFile::read(&p.lock_path());
    let mut others = Vec::new();
    for name in compare {
        match named_lock(&store, pipeline_path, &p.lock_path(), name) {
            Ok(l) => others.push((name.clone(), crate::results::lock_metrics(&l, &store))),
            Err(e) => {
                eprint_error(&e);
                return EXIT_INVALID;
            }
        }
    }
    let mut stages = Vec::new();
    for (i, st) in p.stages.iter().enumerate() {
        let rep = s.reports.iter().find(|r| r.stage == st.name);
        let in_lock = lock.stages.get(&st.name);
        let (state, class) = match rep.map(|r| r.status) {
            Some(Status::Cached) => ("up to date", "ok"),
            Some(Status::WouldRun) if in_lock.is_some() => ("stale", "stale"),
            Some(Status::Failed) => ("cannot run", "bad"),
            _ => ("not run", "none"),
        };
        let manifest = in_lock.and_then(|l| store.get_manifest(&l.key));
        let own_key = in_lock.map(|l| l.key.clone());
        let compare_runs = others
            .iter()
            .filter_map(|(n, m)| m.get(&st.name).map(|v| (n.clone(), v.clone())))
            .filter(|(_, v)| manifest.as_ref().and_then(|m| m.metrics.as_ref()) != Some(v) || own_key.is_none())
            .collect();
        stages.push(crate::report::StageView {
            name: st.name.clone(),
            kind: st.kind.name().to_string(),
            description: st.def.description.clone(),
            state: state.to_string(),
            state_class: class,
            reasons: if class == "stale" { rep.map(|r| r.reasons.clone()).unwrap_or_default() } else { Vec::new() },
            upstream: g.upstream[i].clone(),
            manifest,
            outputs: st.def.outputs.iter().map(|o| (o.name.clone(), p.dir.join(&o.path))).collect(),
            compare: compare_runs,
        });
    }
    let input = crate::report::ReportInput {
        pipeline: p.name.clone(),
        file: pipeline_path.display().to_string(),
        generated: crate::report::unix_text(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        version: crate::cli::VERSION.to_string(),
        stages,
    };
    let html = crate::report::render(&input);
    let out = output.map(Path::to_path_buf).unwrap_or_else(|| p.dir.join("outputs").join(&p.name).join("report.html"));
    if let Some(parent) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    match crate::store::write_atomic(&out, html.as_bytes()) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644));
            eprintln!("wrote {} ({} KB): open it in a browser", out.display(), html.len() / 1024);
            EXIT_OK
        }
        Err(e) => {
            eprint_error(&format!("cannot write {}: {e}", out.display()));
            EXIT_STORE
        }
    }
}

fn show(p: &Pipeline, store: &Store, json: bool, all: bool) -> i32 {
    let lock = LockFile::read(&p.lock_path());
    if json {
        let all: serde_json::Map<String, serde_json::Value> = crate::results::lock_metrics(&lock, store).into_iter().collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::Value::Object(all)).unwrap_or_default());
        return EXIT_OK;
    }
    let order: Vec<String> = p.stages.iter().map(|s| s.name.clone()).collect();
    match crate::results::show_table(&order, &lock, store, all) {
        Some(t) => print!("{t}"),
        None => println!("no metrics recorded yet: run the pipeline first (`taoflow run {}`)", p.path.display()),
    }
    EXIT_OK
}

/// The lock file and store of a pipeline file, without validating the pipeline (`diff` and
/// `exp show` read history, where today's file may not even parse).
fn lock_and_store(cli: &Cli, pipeline: &Path) -> Result<(PathBuf, Store), i32> {
    let dir = config::pipeline_dir(pipeline).map_err(|(d, e)| {
        eprint_error(&format!("cannot read the folder {} of {}: {e}", d.display(), pipeline.display()));
        EXIT_INVALID
    })?;
    let root = store_root(cli.store.as_deref(), &dir);
    let store = Store::open(&root).map_err(|e| {
        eprint_error(&format!("{e}\n  = hint: pass --store DIR or set TAOFLOW_STORE"));
        EXIT_STORE
    })?;
    Ok((config::lock_path_for(&dir, pipeline), store))
}

fn lock_at(repo: &crate::git::Repo, rev: &str, lock_path: &Path) -> Result<LockFile, String> {
    match repo.file_at(rev, lock_path)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| format!("{} at {rev} is not a lock file taoflow reads: {e}", lock_path.display())),
        None => Ok(LockFile::default()),
    }
}

#[allow(clippy::too_many_arguments)]
fn diff(cli: &Cli, pipeline: &Path, rev: &str, to: Option<&str>, params: bool, metrics: bool, all: bool, json: bool) -> i32 {
    let (lock_path, store) = match lock_and_store(cli, pipeline) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let repo = match crate::git::Repo::discover(&lock_path) {
        Ok(r) => r,
        Err(e) => {
            eprint_error(&e);
            return EXIT_INVALID;
        }
    };
    let old = match lock_at(&repo, rev, &lock_path) {
        Ok(l) => l,
        Err(e) => {
            eprint_error(&e);
            return EXIT_INVALID;
        }
    };
    let (new_label, new) = match to {
        Some(r) => match lock_at(&repo, r, &lock_path) {
            Ok(l) => (r.to_string(), l),
            Err(e) => {
                eprint_error(&e);
                return EXIT_INVALID;
            }
        },
        None => ("workspace".to_string(), LockFile::read(&lock_path)),
    };
    let d = crate::results::diff((rev, &old), (&new_label, &new), &store, all);
    if json {
        println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
    } else {
        print!("{}", d.render(params, metrics));
    }
    EXIT_OK
}

#[allow(clippy::too_many_arguments)]
fn exp_show(cli: &Cli, pipeline: &Path, sort_by: Option<&str>, ascending: bool, max_commits: usize, all: bool, json: bool, csv: bool) -> i32 {
    use crate::results::ExpRow;
    let (lock_path, store) = match lock_and_store(cli, pipeline) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let mut rows = Vec::new();
    let workspace = LockFile::read(&lock_path);
    let history = match crate::git::Repo::discover(&lock_path) {
        Ok(repo) => match repo.history(&lock_path, max_commits) {
            Ok(h) => h,
            Err(e) => {
                eprint_error(&e);
                return EXIT_INVALID;
            }
        },
        // Not a git checkout: the workspace alone.
        Err(_) => Vec::new(),
    };
    let committed_head = history.first().map(|r| r.bytes.clone());
    if !workspace.stages.is_empty() && committed_head.as_deref() != Some(&workspace.to_bytes()[..]) {
        rows.push(ExpRow::from_lock("workspace", "workspace", "not committed", None, &workspace, &store));
    }
    for (rec, lock) in crate::sweep::list_variants(&store.root, pipeline) {
        if lock.stages.is_empty() {
            continue;
        }
        let swept = rec.overrides.join(" ");
        rows.push(ExpRow::from_lock(&rec.name, "variant", &swept, Some(rec.time as i64), &lock, &store));
    }
    for r in &history {
        match serde_json::from_slice::<LockFile>(&r.bytes) {
            Ok(l) => rows.push(ExpRow::from_lock(&r.id, "commit", &r.summary, Some(r.time), &l, &store)),
            Err(e) => tracing::warn!("commit {}: its lock file is not one taoflow reads ({e}); left out", r.id),
        }
    }
    if rows.is_empty() {
        println!("no runs recorded: run `taoflow run {}` (and commit its lock file to keep the run in history)", pipeline.display());
        return EXIT_OK;
    }
    if let Some(m) = sort_by
        && let Err(e) = crate::results::sort_rows(&mut rows, m, ascending)
    {
        eprint_error(&e);
        return EXIT_INVALID;
    }
    let (params, metrics) = crate::results::exp_columns(&rows, all);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
    } else if csv {
        print!("{}", crate::results::exp_csv(&rows, &params, &metrics));
    } else {
        print!("{}", crate::results::exp_table(&rows, &params, &metrics));
    }
    EXIT_OK
}

fn checkout(p: &Pipeline, store: &Store, only: &[String]) -> i32 {
    let lock = LockFile::read(&p.lock_path());
    if lock.stages.is_empty() {
        eprint_error(&format!("{} records no results\n  = hint: run `taoflow run {}` first", p.lock_path().display(), p.path.display()));
        return EXIT_STAGE_FAILED;
    }
    let stat = crate::hash::StatCache::load(&store.stat_cache_path());
    let mut restored = 0;
    let mut failed = 0;
    for (name, ls) in &lock.stages {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let owned: Vec<&str> = p.stage(name).map(|s| s.def.outputs.iter().filter(|o| o.owned).map(|o| o.name.as_str()).collect()).unwrap_or_default();
        for (out, rec) in &ls.outs {
            let dest = p.dir.join(&rec.path);
            let current = if dest.exists() { crate::hash::digest_path(&dest, &stat).ok() } else { None };
            if current.as_deref() == Some(rec.digest.as_str()) {
                continue;
            }
            match store.materialize(&rec.digest, &dest, &stat, owned.contains(&out.as_str())) {
                Ok(()) => {
                    restored += 1;
                    eprintln!("   restored {name}.{out} -> {}", rec.path);
                }
                Err(e) => {
                    failed += 1;
                    eprint_error(&format!("cannot restore {name}.{out} ({}): {e}\n  = hint: run the pipeline to make it again", rec.path));
                }
            }
        }
    }
    let _ = stat.save();
    eprintln!("checkout: {restored} output(s) restored, {failed} failed");
    if failed > 0 { EXIT_STORE } else { EXIT_OK }
}

fn gc(store: &Store, keep_days: f64, dry_run: bool) -> i32 {
    let mut keep_keys: HashSet<String> = HashSet::new();
    for lock_path in store.roots() {
        for ls in LockFile::read(&lock_path).stages.values() {
            keep_keys.insert(ls.key.clone());
        }
    }
    let now = std::time::SystemTime::now();
    let keep_for = Duration::from_secs_f64((keep_days.max(0.0)) * 86400.0);
    let mut reachable: HashSet<String> = HashSet::new();
    let (mut removed_manifests, mut kept_manifests) = (0usize, 0usize);
    for (path, key, mtime) in store.manifests() {
        let recent = now.duration_since(mtime).map(|d| d < keep_for).unwrap_or(true);
        if (keep_keys.contains(&key) || recent)
            && let Some(m) = store.get_manifest(&key) {
                for o in m.outputs.values() {
                    store.artifact_objects(&o.digest, &mut reachable);
                }
                kept_manifests += 1;
                continue;
            }
        removed_manifests += 1;
        if !dry_run {
            let _ = std::fs::remove_file(path);
        }
    }
    let (mut removed, mut bytes) = (0usize, 0u64);
    for (path, hash, size) in store.objects() {
        if !reachable.contains(&hash) {
            removed += 1;
            bytes += size;
            if !dry_run {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    // Temp files older than an hour are left-overs of killed runs.
    if let Ok(rd) = std::fs::read_dir(store.tmp_dir()) {
        for e in rd.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|d| d > Duration::from_secs(3600));
            if old && !dry_run {
                let _ = crate::stages::exec::remove_path(&e.path());
            }
        }
    }
    // Checkpoints of interrupted training runs: kept as long as manifests (`--keep-days`),
    // so that a run started again soon resumes; a finished run removes its own.
    let mut checkpoints = 0usize;
    if let Ok(rd) = std::fs::read_dir(store.root.join("checkpoints-v1")) {
        for e in rd.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|d| d > keep_for);
            if old {
                checkpoints += 1;
                if !dry_run {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "gc: {verb} {removed} object(s) ({:.1} MB), {removed_manifests} manifest(s) and {checkpoints} stale training checkpoint(s); kept {kept_manifests} manifest(s), {} object(s)",
        bytes as f64 / 1e6,
        reachable.len()
    );
    EXIT_OK
}

/// Paths whose change should trigger a re-run: the pipeline file and external inputs.
fn watch_paths(p: &Pipeline, g: &Graph) -> Vec<PathBuf> {
    let mut out = vec![std::fs::canonicalize(&p.path).unwrap_or_else(|_| p.path.clone())];
    for ins in &g.inputs {
        for r in ins {
            if let InputSource::Path { path, .. } = &r.source {
                out.push(path.clone());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

async fn watch_cmd(cli: &Cli, p: &PipelineArg, debounce_ms: u64, jobs: Option<usize>) -> i32 {
    use notify::{RecursiveMode, Watcher};
    let cancel = cancel_on_signals();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = match notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    }) {
        Ok(w) => w,
        Err(e) => {
            eprint_error(&format!("cannot watch files: {e}"));
            return EXIT_STORE;
        }
    };
    let mut watched: Vec<PathBuf> = Vec::new();
    let mut ignore: Vec<PathBuf> = Vec::new();
    let mut first = true;
    loop {
        // (Re)load the pipeline: a broken file is reported and watched until fixed.
        let loaded = load(p);
        let mut want: Vec<PathBuf> = Vec::new();
        match &loaded {
            Ok((pipeline, g)) => {
                want = watch_paths(pipeline, g);
                ignore = pipeline.stages.iter().flat_map(|s| s.def.outputs.iter().map(|o| pipeline.dir.join(&o.path))).collect();
                ignore.push(pipeline.lock_path());
                ignore.push(store_root(cli.store.as_deref(), &pipeline.dir));
                let store = match open_store(cli, pipeline) {
                    Ok(s) => s,
                    Err(c) => return c,
                };
                let opts = RunOptions { jobs: jobs.unwrap_or(2), keep_going: true, ..Default::default() };
                let ui = Arc::new(Ui::new(false).quiet_cached(!first));
                let t0 = Instant::now();
                let s = engine::run(Arc::clone(pipeline), Arc::clone(g), store, opts, ui, cancel.clone()).await;
                eprintln!("{}", summary_line(&s, t0.elapsed()));
                if s.interrupted {
                    return EXIT_INTERRUPTED;
                }
            }
            Err(_) => {
                want.push(std::fs::canonicalize(&p.pipeline).unwrap_or_else(|_| p.pipeline.clone()));
            }
        }
        first = false;
        for w in &watched {
            if !want.contains(w) {
                let _ = watcher.unwatch(w);
            }
        }
        for w in &want {
            if !watched.contains(w) {
                // A missing input is watched through its folder, so its creation is seen.
                let target = if w.exists() { w.clone() } else { w.parent().map(Path::to_path_buf).unwrap_or_else(|| w.clone()) };
                let mode = if target.is_dir() { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
                if let Err(e) = watcher.watch(&target, mode) {
                    eprintln!("warning: cannot watch {}: {e}", target.display());
                }
            }
        }
        watched = want.clone();
        eprintln!("watching {} path(s); press Ctrl-C to stop", watched.len());
        // Wait for a relevant change, then for a quiet period.
        let mut changed: Option<PathBuf> = None;
        let mut cancel_rx = cancel.clone();
        while changed.is_none() {
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { return EXIT_OK };
                    if let Ok(ev) = ev {
                        if matches!(ev.kind, notify::EventKind::Access(_)) { continue; }
                        changed = ev.paths.into_iter().find(|path| relevant(path, &watched, &ignore));
                    }
                }
                _ = cancel_rx.changed() => return EXIT_INTERRUPTED,
            }
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(debounce_ms), rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return EXIT_OK,
                Err(_) => break,
            }
        }
        if let Some(c) = changed {
            eprintln!("change detected: {}", c.display());
        }
        if *cancel.borrow() {
            return EXIT_INTERRUPTED;
        }
    }
}

fn relevant(path: &Path, watched: &[PathBuf], ignore: &[PathBuf]) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if name.starts_with(".taoflow-") || name.starts_with(".tmp-") {
        return false;
    }
    if ignore.iter().any(|i| path.starts_with(i)) {
        return false;
    }
    watched.iter().any(|w| path.starts_with(w) || w.starts_with(path))
}

/// Used by tests: stage statuses of a run summary by name.
pub fn statuses(s: &RunSummary) -> BTreeMap<String, Status> {
    s.reports.iter().map(|r| (r.stage.clone(), r.status)).collect()
}

/// `taoflow bench-augment`: the CPU reference and the GPU kernel on one random batch.
fn bench_augment(batch: usize, width: u32, height: u32, iters: usize, gpu: usize, no_cpu: bool) -> i32 {
    use crate::data::augment::{AugmentSpec, Param};
    use crate::data::rng::Rng;
    let spec = AugmentSpec {
        rotation: Param::Range(-10f64.to_radians(), 10f64.to_radians()),
        shear_x: Param::Range(-0.1, 0.1),
        shear_y: Param::Range(-0.05, 0.05),
        translate_x: Param::Range(-20.0, 20.0),
        translate_y: Param::Range(-10.0, 10.0),
        flip_horizontal: 0.5,
        zoom: Param::Range(0.9, 1.1),
        hue: Param::Range(-20.0, 20.0),
        saturation: Param::Range(0.7, 1.3),
        contrast: Param::Range(0.8, 1.2),
        brightness: Param::Range(-20.0, 20.0),
        ..Default::default()
    };
    let t = Instant::now();
    let images: Vec<image::RgbImage> = (0..batch)
        .into_par_iter()
        .map(|i| {
            let mut r = Rng::for_purpose(i as u64, "bench-augment");
            let base = [r.below(200) as u8, r.below(200) as u8, r.below(200) as u8];
            image::RgbImage::from_fn(width, height, |x, y| {
                let v = ((x / 8 + y / 8) % 2) as u8 * 40;
                image::Rgb([base[0].wrapping_add(v).wrapping_add((x % 7) as u8 * 3), base[1].wrapping_add((y % 5) as u8 * 9), base[2].wrapping_add(v / 2)])
            })
        })
        .collect();
    let jobs: Vec<(&image::RgbImage, crate::data::augment::Draw, (u32, u32))> =
        images.iter().enumerate().map(|(i, img)| (img, spec.draw(7, &format!("{i}"), 0), (width, height))).collect();
    let mut out = serde_json::json!({"batch": batch, "width": width, "height": height, "bytes_per_batch": batch as u64 * width as u64 * height as u64 * 3, "make_batch_s": t.elapsed().as_secs_f64(), "cpu_threads": rayon::current_num_threads()});
    let cpu = if no_cpu {
        None
    } else {
        let t = Instant::now();
        let r = crate::data::augment::cpu_warper(&jobs).unwrap_or_default();
        out["cpu_ms_per_batch"] = serde_json::json!(t.elapsed().as_secs_f64() * 1e3);
        Some(r)
    };
    if !crate::cuda::driver_present() {
        out["gpu"] = serde_json::json!("no CUDA driver on this machine");
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return EXIT_OK;
    }
    let t = Instant::now();
    let k = match crate::cuda::AugmentKernel::new(gpu, None) {
        Ok(k) => k,
        Err(e) => {
            eprint_error(&e);
            return EXIT_STAGE_FAILED;
        }
    };
    out["gpu_device"] = serde_json::json!(k.device_name);
    out["gpu_init_and_compile_ms"] = serde_json::json!(t.elapsed().as_secs_f64() * 1e3);
    let cache = std::env::temp_dir().join("taoflow-bench-ptx");
    let t = Instant::now();
    let _ = crate::cuda::compile(crate::cuda::AUGMENT_SRC, k.arch, Some(&cache));
    out["nvrtc_compile_ms"] = serde_json::json!(t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let _ = crate::cuda::compile(crate::cuda::AUGMENT_SRC, k.arch, Some(&cache));
    out["ptx_cache_hit_ms"] = serde_json::json!(t.elapsed().as_secs_f64() * 1e3);
    match k.bench(&jobs, iters) {
        Ok((up, kernel, down)) => {
            out["gpu_upload_ms"] = serde_json::json!(up);
            out["gpu_kernel_ms_per_batch"] = serde_json::json!(kernel);
            out["gpu_download_ms"] = serde_json::json!(down);
            out["gpu_kernel_GBps_out"] = serde_json::json!(batch as f64 * width as f64 * height as f64 * 3.0 / (kernel / 1e3) / 1e9);
        }
        Err(e) => {
            eprint_error(&e);
            return EXIT_STAGE_FAILED;
        }
    }
    let t = Instant::now();
    let g = match k.warp_color(&jobs) {
        Ok(g) => g,
        Err(e) => {
            eprint_error(&e);
            return EXIT_STAGE_FAILED;
        }
    };
    out["gpu_end_to_end_ms_per_batch"] = serde_json::json!(t.elapsed().as_secs_f64() * 1e3);
    if let Some(c) = cpu {
        let (mut total, mut diff, mut over1, mut maxd) = (0u64, 0u64, 0u64, 0u8);
        for (a, b) in c.iter().zip(&g) {
            for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
                total += 1;
                let d = x.abs_diff(*y);
                if d > 0 {
                    diff += 1;
                }
                if d > 1 {
                    over1 += 1;
                }
                maxd = maxd.max(d);
            }
        }
        out["parity_bytes"] = serde_json::json!(total);
        out["parity_bytes_differing"] = serde_json::json!(diff);
        out["parity_fraction_differing"] = serde_json::json!(diff as f64 / total.max(1) as f64);
        out["parity_bytes_differing_by_more_than_1"] = serde_json::json!(over1);
        out["parity_max_abs_diff"] = serde_json::json!(maxd);
        out["parity_ok"] = serde_json::json!(over1 == 0 && (diff as f64) <= 0.001 * total as f64);
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    if out["parity_ok"] == serde_json::json!(false) { EXIT_STAGE_FAILED } else { EXIT_OK }
}

fn forward_cmd(arch: &str, classes: usize, weights: &Path, input: &Path, shape: &[usize], out: &Path) -> Result<String, String> {
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};
    let [n, c, h, w] = shape else { return Err("--shape must be N,C,H,W".into()) };
    let spec = crate::data::image_io::InputSpec::imagenet(*w as u32, *h as u32);
    let g = match arch {
        "mobilenet_v2" => crate::model::builders::mobilenet_v2(classes, 1.0, spec, vec![]),
        a if a.starts_with("resnet") => crate::model::builders::resnet(a[6..].parse().map_err(|_| format!("unknown architecture `{a}`"))?, classes, 1.0, spec, vec![])?,
        a => return Err(format!("unknown architecture `{a}` (mobilenet_v2, resnet18, resnet34, resnet50)")),
    };
    let bytes = std::fs::read(input).map_err(|e| format!("cannot read `{}`: {e}", input.display()))?;
    let x: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if x.len() != n * c * h * w {
        return Err(format!("`{}` holds {} floats, the shape needs {}", input.display(), x.len(), n * c * h * w));
    }
    type B = NdArray<f32>;
    let device = Default::default();
    let wts = crate::model::import::read_weights(weights)?;
    let (net, missing) = crate::model::net::GraphNet::<B>::new(&g, &device)?.load_weights(&wts, &device)?;
    if !missing.is_empty() {
        return Err(format!("weights missing from `{}`: {}", weights.display(), missing.join(", ")));
    }
    let t0 = Instant::now();
    let y = net.forward(Tensor::<B, 4>::from_data(TensorData::new(x, [*n, *c, *h, *w]), &device));
    let v = y.into_data().to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    let mut buf = Vec::with_capacity(v.len() * 4);
    for f in &v {
        buf.extend_from_slice(&f.to_le_bytes());
    }
    std::fs::write(out, buf).map_err(|e| format!("cannot write `{}`: {e}", out.display()))?;
    Ok(format!("{arch}: {} logits written in {:.2}s", v.len(), t0.elapsed().as_secs_f64()))
}

fn eval_detections_cmd(gt: &Path, dets: &Path, o: &crate::tasks::detection::report::EvalOptions, json: bool, out: Option<&Path>, grid: Option<&crate::tasks::detection::report::GridOptions>) -> i32 {
    let r = match crate::tasks::detection::report::evaluate_files(gt, dets, o) {
        Ok(r) => r,
        Err(e) => {
            eprint_error(&e);
            return EXIT_INVALID;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r).expect("serialises"));
    } else {
        print!("{}", r.render());
    }
    if let Some(dir) = out {
        match r.write(dir, grid, serde_json::Map::new()) {
            Ok(files) => files.iter().for_each(|f| eprintln!("wrote {}", f.display())),
            Err(e) => {
                eprint_error(&e);
                return EXIT_STORE;
            }
        }
    }
    EXIT_OK
}

#[allow(clippy::too_many_arguments)]
fn infer_cmd(model: &Path, images: &[std::path::PathBuf], top_k: usize, json: bool, batch: usize, min_score: f32, kitti: Option<&Path>, draw: Option<&Path>) -> i32 {
    if top_k == 0 {
        eprint_error("--top-k must be at least 1");
        return EXIT_INVALID;
    }
    let m = match crate::infer::load(model) {
        Ok(m) => m,
        Err(e) => {
            eprint_error(&e);
            return EXIT_STAGE_FAILED;
        }
    };
    for n in &m.notes {
        eprintln!("note: {n}");
    }
    if m.detection.is_none() && (kitti.is_some() || draw.is_some()) {
        eprint_error("`--kitti` and `--draw` are for detectors; this model is a classifier");
        return EXIT_INVALID;
    }
    let mut preds = match crate::infer::predict(&m, images, top_k, batch) {
        Ok(p) => p,
        Err(e) => {
            eprint_error(&e);
            return EXIT_STAGE_FAILED;
        }
    };
    crate::infer::keep_scored(&mut preds, min_score);
    for (dir, r) in [(kitti, kitti.map(|d| crate::infer::write_kitti(&preds, d))), (draw, draw.map(|d| crate::infer::draw_boxes(&preds, d)))] {
        if let (Some(dir), Some(Err(e))) = (dir, r) {
            eprint_error(&format!("cannot write into `{}`: {e}", dir.display()));
            return EXIT_STAGE_FAILED;
        }
    }
    let failed = preds.iter().filter(|p| p.error.is_some()).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&preds).expect("serialises"));
    } else {
        eprintln!("{} — input {}x{}x{}", m.kind, m.input.channels, m.input.height, m.input.width);
        for p in &preds {
            match (&p.top, &p.error) {
                (Some(top), _) => {
                    println!("{}", p.image);
                    for (i, s) in top.iter().enumerate() {
                        println!("  {}. {:<24} {:.4}", i + 1, s.class, s.probability);
                    }
                }
                (None, None) if p.boxes.is_some() => {
                    let boxes = p.boxes.as_deref().unwrap_or_default();
                    println!("{}: {} box(es)", p.image, boxes.len());
                    for b in boxes {
                        println!("  {:<16} {:.3}  [{:.1}, {:.1}, {:.1}, {:.1}]", b.class, b.confidence, b.bbox[0], b.bbox[1], b.bbox[2], b.bbox[3]);
                    }
                }
                (None, Some(e)) => eprint_error(&format!("`{}`: {e}", p.image)),
                _ => {}
            }
        }
    }
    if failed > 0 {
        if json {
            for p in preds.iter().filter(|p| p.error.is_some()) {
                eprint_error(&format!("`{}`: {}", p.image, p.error.as_deref().unwrap_or("")));
            }
        }
        EXIT_STAGE_FAILED
    } else {
        EXIT_OK
    }
}
