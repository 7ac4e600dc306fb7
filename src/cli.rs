//! Command-line interface (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const EXIT_CODES: &str = "Exit codes:
  0    success: every stage ran or was served from the cache
  1    a stage failed, or was skipped because one it depends on failed
  2    the command line or the pipeline file is invalid
  3    the store or the workspace could not be read or written
  4    (builds with the GPU engine) no libtorch of the right release was found: taoflow doctor
  130  interrupted (Ctrl-C or SIGTERM); nothing half-made was stored";

/// `taoflow --version`: the crate version and the git commit it was built from (build.rs).
pub const VERSION: &str = env!("TAOFLOW_VERSION");

#[derive(Debug, Parser)]
#[command(
    name = "taoflow",
    version = VERSION,
    about = "Transfer-learning pipelines: convert, augment, train, evaluate, prune, quantize, export — content-hashed and cached",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// The store (cache) folder. Default: `cache/` in the nearest folder above the pipeline
    /// file that has a `cache/` folder or a `.git`, else beside the pipeline file.
    #[arg(long, global = true, env = "TAOFLOW_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// More log output (-v info, -vv debug); `TAOFLOW_LOG` takes a tracing filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct PipelineArg {
    /// The pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Override a parameter: `-S train.lr=0.02`, `-S pipeline.seed=7`.
    #[arg(short = 'S', long = "set", value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SynthCommand {
    /// KITTI detection data: OUT/image_2/NNNNNN.png and OUT/label_2/NNNNNN.txt.
    Kitti {
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 320)]
        width: u32,
        #[arg(long, default_value_t = 128)]
        height: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Class names, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "car,pedestrian,cyclist")]
        classes: Vec<String>,
        /// Most objects per image.
        #[arg(long, default_value_t = 5)]
        max_objects: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExpCommand {
    /// Write a variant's parameters (its `-S` overrides) into the pipeline file; a following
    /// `taoflow run` is then served from the store.
    Apply {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The variant's name (`exp show` lists them, e.g. v1a2b3c4).
        name: String,
    },
    /// One row per run: the workspace and each commit that changed the lock file (newest
    /// first); columns: the parameters that differ between rows, then the metrics.
    Show {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Sort by this metric (`stage.metric`, e.g. `evaluate.accuracy`), largest first.
        #[arg(long, value_name = "STAGE.METRIC")]
        sort_by: Option<String>,
        /// With --sort-by: smallest first (losses).
        #[arg(long, requires = "sort_by")]
        ascending: bool,
        /// At most this many commits of history.
        #[arg(short = 'n', long, default_value_t = 100)]
        max_commits: usize,
        /// Every parameter and metric, not only those that differ.
        #[arg(long)]
        all: bool,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the stages whose inputs or parameters changed; serve the rest from the store.
    #[command(after_help = EXIT_CODES)]
    Run {
        #[command(flatten)]
        p: PipelineArg,
        /// Show what would run, and why, without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Run stages even if cached: all of them, or `--force=STAGE` (repeatable).
        #[arg(long, num_args = 0..=1, default_missing_value = "*", value_name = "STAGE")]
        force: Vec<String>,
        /// Run only this stage (repeatable); the stages it reads from must be up to date.
        #[arg(long, value_name = "STAGE")]
        only: Vec<String>,
        /// With --only: also run every stage that depends on it.
        #[arg(long, requires = "only")]
        downstream: bool,
        /// Stages to run at once (default: number of CPUs).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// After a failure, go on with the stages that do not depend on it.
        #[arg(short, long)]
        keep_going: bool,
        /// Print one JSON object per stage on stdout: name, status (ran, cached, failed,
        /// skipped, would-run, interrupted), key, reasons.
        #[arg(long)]
        json: bool,
        /// Where model stages run: `auto` (each stage's `gpus`), `cpu`, `cuda` (a GPU for
        /// every train/retrain/evaluate stage; needs a build with the `torch` feature) or
        /// `cuda:N` (GPU N only).
        #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda|cuda:N")]
        device: crate::engine::DeviceChoice,
        /// How running stages are shown: bars on a terminal, else plain lines (one per
        /// epoch, and a progress line at most every TAOFLOW_PROGRESS_INTERVAL seconds, 60).
        #[arg(long, value_enum, default_value = "auto")]
        progress: crate::ui::ProgressMode,
        /// Print stage results, warnings and errors only (no progress, no "running" lines).
        #[arg(short, long)]
        quiet: bool,
        /// How `-S` lists (`-S train.lr=0.001,0.01`) and ranges (`-S train.lr=log:1e-4..1e-1`,
        /// `-S train.epochs=2..8`) become variants: `grid` (every combination of the lists) or
        /// `random:N` (N draws, seeded by the pipeline seed). Variants run in workspaces of
        /// their own under the store; `taoflow exp show` compares them.
        #[arg(long, value_name = "grid|random:N")]
        sweep: Option<crate::sweep::Mode>,
    },
    /// Show each stage that is not up to date, and why (which parameter or input changed).
    Status {
        #[command(flatten)]
        p: PipelineArg,
        #[arg(long)]
        json: bool,
    },
    /// Print the stage graph: text, Graphviz (--dot) or Mermaid (--mermaid).
    Dag {
        #[command(flatten)]
        p: PipelineArg,
        #[arg(long, conflicts_with = "mermaid")]
        dot: bool,
        #[arg(long)]
        mermaid: bool,
    },
    /// Show the metrics of the last run as a table: one row per number; lists (per-epoch
    /// history, confusion matrices, per-class tables) are left to --all and --json.
    Show {
        #[command(flatten)]
        p: PipelineArg,
        /// Every stage's whole metrics record as JSON.
        #[arg(long)]
        json: bool,
        /// Every entry of every list too (`history[3].loss`).
        #[arg(long)]
        all: bool,
    },
    /// Compare the workspace's lock file (parameters, and the metrics the store holds for it)
    /// with the one at a git revision: changed parameters old → new, metric deltas.
    #[command(after_help = "Examples:\n  taoflow diff pipelines/quickstart.toml            # HEAD → workspace\n  taoflow diff pipelines/quickstart.toml HEAD~3 HEAD\n  taoflow diff pipelines/quickstart.toml main --metrics --json")]
    Diff {
        /// The pipeline file (TOML); its lock file is what is compared.
        pipeline: PathBuf,
        /// The revision to compare from (anything git's rev-parse takes).
        #[arg(default_value = "HEAD")]
        rev: String,
        /// The revision to compare to (default: the workspace's lock file).
        to: Option<String>,
        /// Only the parameters.
        #[arg(long)]
        params: bool,
        /// Only the metrics.
        #[arg(long)]
        metrics: bool,
        /// Unchanged rows too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write one self-contained HTML report of the last run: the stage graph and states, a
    /// timeline, metrics, training curves, confusion matrices, prune and INT8 tables, dataset
    /// statistics with samples, and the PNGs stages wrote. No network needed to view it.
    Report {
        #[command(flatten)]
        p: PipelineArg,
        /// Where to write it (default: outputs/PIPELINE/report.html beside the pipeline).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overlay the training curves of another run: a sweep variant's name or a git
        /// revision (repeatable).
        #[arg(long, value_name = "VARIANT|REV")]
        compare: Vec<String>,
    },
    /// Experiments: the runs recorded in git history and the workspace, side by side.
    Exp {
        #[command(subcommand)]
        what: ExpCommand,
    },
    /// Remove from the store what no lock file and no recent manifest reaches.
    Gc {
        /// Keep manifests younger than this many days even if no lock file names them.
        #[arg(long, default_value_t = 7.0)]
        keep_days: f64,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// A pipeline whose store to clean (otherwise --store or ./cache).
        pipeline: Option<PathBuf>,
    },
    /// Restore the outputs recorded in the lock file into the workspace, from the store.
    Checkout {
        pipeline: PathBuf,
        /// Only these stages (default: all).
        stages: Vec<String>,
    },
    /// Generate synthetic data: `taoflow synth kitti OUT` writes a KITTI detection dataset
    /// (textured backgrounds, shapes of several classes) for tests and examples.
    Synth {
        #[command(subcommand)]
        what: SynthCommand,
    },
    /// Draw the labels (boxes, masks) of a few samples of a dataset artifact into PNGs.
    Preview {
        /// A dataset folder (e.g. outputs/PIPELINE/STAGE/dataset).
        dataset: PathBuf,
        /// Where to write the PNGs.
        out: PathBuf,
        #[arg(long, default_value = "train")]
        split: String,
        #[arg(long, default_value_t = 8)]
        count: usize,
    },
    /// Benchmark and check the augment kernel: CPU reference vs the GPU kernel on one random
    /// batch (parity: bytes that differ, by how much; timings). Prints JSON.
    BenchAugment {
        #[arg(long, default_value_t = 256)]
        batch: usize,
        #[arg(long, default_value_t = 1248)]
        width: u32,
        #[arg(long, default_value_t = 384)]
        height: u32,
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// GPU ordinal; the GPU part is left out when no CUDA driver is present.
        #[arg(long, default_value_t = 0)]
        gpu: usize,
        /// Skip the CPU reference (timing only).
        #[arg(long)]
        no_cpu: bool,
    },
    /// Run a built architecture with imported weights on a raw f32 input (for parity checks
    /// against PyTorch): writes the logits as raw little-endian f32.
    Forward {
        /// mobilenet_v2, resnet18, resnet34 or resnet50.
        #[arg(long)]
        arch: String,
        #[arg(long, default_value_t = 1000)]
        classes: usize,
        /// Weights (.pth, .pt or .safetensors, torchvision names).
        #[arg(long)]
        weights: PathBuf,
        /// Raw little-endian f32 input, NCHW.
        #[arg(long)]
        input: PathBuf,
        /// N,C,H,W of the input.
        #[arg(long, value_delimiter = ',')]
        shape: Vec<usize>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Classify images with a model artifact (folder with model.json) or an ONNX file
    /// (exported or INT8 QDQ, run with tract): the top-k classes with probabilities.
    Infer {
        /// A model artifact folder, an .onnx file, or a folder holding one .onnx file.
        model: PathBuf,
        /// Image files (PNG, JPEG, BMP, TIFF).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(short = 'k', long, default_value_t = 5)]
        top_k: usize,
        /// One JSON array of results on stdout.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Detectors: report boxes scored at least this (default 0: every box the
        /// post-processing keeps).
        #[arg(long, default_value_t = 0.0)]
        min_score: f32,
        /// Detectors: write one KITTI label file per image into DIR (`<stem>.txt`, the score
        /// as the 16th field), what `eval-detections` reads.
        #[arg(long, value_name = "DIR")]
        kitti: Option<PathBuf>,
        /// Detectors: write each image with its boxes drawn into DIR (`<stem>.png`).
        #[arg(long, value_name = "DIR")]
        draw: Option<PathBuf>,
    },
    /// Evaluate object detections against ground truth: COCO's twelve numbers (as
    /// pycocotools computes them), TAO's per-class AP and mAP, a per-class table.
    /// GT: a COCO dataset .json or a folder of KITTI label files; DETS: a COCO results
    /// .json list or a folder of KITTI files with the score as the 16th field.
    #[command(name = "eval-detections")]
    EvalDetections {
        /// Ground truth: COCO dataset JSON, or a folder of KITTI `<image>.txt` files.
        gt: PathBuf,
        /// Detections: COCO results JSON, or a folder of KITTI files (16th field = score).
        dets: PathBuf,
        /// KITTI ground truth: the classes to evaluate, in this order (default: all found).
        #[arg(long, value_delimiter = ',')]
        classes: Option<Vec<String>>,
        /// TAO metric: IoU a detection needs to match, `0.5` or `car=0.7` (repeatable).
        #[arg(long, value_name = "[CLASS=]IOU")]
        iou: Vec<String>,
        /// TAO metric: boxes (both sides) lower than this are left out; `20` or `car=40`.
        #[arg(long, value_name = "[CLASS=]PIXELS")]
        min_height: Vec<String>,
        #[arg(long, value_name = "[CLASS=]PIXELS")]
        max_height: Vec<String>,
        #[arg(long, value_name = "[CLASS=]PIXELS")]
        min_width: Vec<String>,
        #[arg(long, value_name = "[CLASS=]PIXELS")]
        max_width: Vec<String>,
        /// TAO metric: `integrate` (area under the precision envelope) or `sample` (VOC 11-point).
        #[arg(long, value_name = "MODE")]
        ap_mode: Option<String>,
        /// Print the whole report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Also write `metrics.json` and `pr_curves.png` into this folder.
        #[arg(short, long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// With `-o`: the folder of the images (COCO file names, or KITTI stems with any image
        /// extension, are relative to it); writes `predictions.png`, ground truth green and
        /// detections red.
        #[arg(long, value_name = "DIR", requires = "out")]
        images: Option<PathBuf>,
        /// How many images `predictions.png` shows.
        #[arg(long, default_value_t = 12)]
        grid: usize,
        /// Detections drawn in `predictions.png`: those scored at least this.
        #[arg(long, default_value_t = 0.5)]
        grid_score: f64,
    },
    /// Print the digest taoflow gives a file or folder (reads every byte; no cache).
    Hash {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Re-run what a changed file or parameter affects, until Ctrl-C.
    Watch {
        #[command(flatten)]
        p: PipelineArg,
        /// Quiet period before a re-run, in milliseconds.
        #[arg(long, default_value_t = 300)]
        debounce_ms: u64,
        #[arg(short, long)]
        jobs: Option<usize>,
    },
    /// Print the JSON Schema of pipeline files (every stage kind and key, with descriptions,
    /// defaults and ranges), for editors: Taplo / Even Better TOML (README).
    Schema {
        /// Write it to this file instead of stdout.
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// What this machine offers and what taoflow will use: CPU engine threads, onnxruntime,
    /// NVIDIA's driver and GPUs, libtorch (path, version, CUDA or not), cuDNN, NVRTC, the
    /// store — and the fix for each missing piece.
    Doctor {
        /// Report the store of this pipeline file (default: the current folder's).
        pipeline: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `taoflow completions bash > ~/.local/share/bash-completion/completions/taoflow`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}
