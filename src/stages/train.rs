//! `train` (and `retrain`): fine-tune a pretrained network, or train one from scratch, on a
//! dataset artifact; the result is a model artifact with its training history.
//!
//! ```toml
//! [stages.train]
//! kind = "train"
//! dataset = "convert"                      # a dataset artifact
//! arch = "mobilenet_v2"                    # mobilenet_v2 | resnet18 | resnet34 | resnet50 | efficientnet_lite0
//! pretrained = "weights/mobilenet_v2.pth"  # .pth/.pt/.safetensors, or a model artifact; omit for scratch
//! input_size = 64                          # or [height, width]
//! epochs = 5
//! batch_size = 32
//! optimizer = "sgd"                        # sgd | adam | adamw
//! lr = 0.01
//! schedule = "cosine"                      # constant | step | cosine | soft_start_annealing
//! freeze_blocks = [0, 1]
//! ```
//!
//! `retrain` is the same stage that starts from a model artifact (`init = "prune.model"`)
//! and keeps its structure.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use burn::backend::{Autodiff, NdArray};
use serde::{Deserialize, Serialize};

use crate::config::Fields;
use crate::schema::{Key, Ty, key};
use crate::data::image_io::InputSpec;
use crate::data::loader::{Dataset, OnlineAugment};
use crate::diag::Diag;
use crate::model::graph::{ModelGraph, Op, TaskKind};
use crate::model::optim::{OptimConfig, OptimKind, Schedule};
use crate::model::train::{EpochRecord, TrainConfig, TrainError};
use crate::tasks::detection::postprocess::ClusterConfig;
use crate::tasks::detection::settings::{self, PerClass};
use crate::tasks::detection::train::{ClassTraining, DetectionTraining};
use crate::stages::{InputDecl, OutputDecl, RunCtx, StageDef, StageError, StageKind};
use crate::value::PVal;

#[derive(Debug)]
pub struct Train {
    /// `retrain`: starts from a model artifact (`init`), never from an architecture name.
    pub retrain: bool,
}

pub const ARCHS: &[&str] = &["mobilenet_v2", "resnet18", "resnet34", "resnet50", "efficientnet_lite0"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelSpec {
    arch: Option<String>,
    width: f64,
    input_size: Option<[u32; 2]>,
    freeze_blocks: Vec<usize>,
    freeze_layers: Vec<String>,
}

/// A detection stage's own settings as written (class names are checked against the dataset
/// when the stage runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct DetectionSpec {
    targets: PerClass,
    postprocess: PerClass,
    deadzone_radius: Option<f64>,
    min_box_size: Option<f64>,
    augment: Option<crate::data::augment::AugmentSpec>,
}

#[derive(Debug)]
struct Parsed {
    model: ModelSpec,
    detection: Option<DetectionSpec>,
    cfg: TrainConfig,
    val_explicit: bool,
    /// GPU arithmetic (`fp32`, `tf32`, `bf16`); not part of the stage key, like the device.
    precision: String,
}

const SPEC: &[Key] = &[
    key("dataset", Ty::Str, "The dataset to train on: a stage's dataset (`convert`, `augment`) or a path.").required(),
    key("arch", Ty::Str, "The network (train only); a detection dataset gets DetectNet_v2's two heads on this backbone. Give `arch` or `init`.").one_of(ARCHS),
    key("width", Ty::Float, "Width multiplier of the network's channels.").def("1.0").above(0.0).max(4.0),
    key("pretrained", Ty::Str, "Weights to start `arch` from: a torchvision .pth or safetensors file, or a stage's output (train only)."),
    key("init", Ty::Str, "A model artifact to continue from, with its structure (e.g. `prune.model`); required by retrain."),
    key("input_size", Ty::Size, "Input size in pixels: one number (square) or [height, width] (default: the dataset's image size).").range(8.0, 4096.0),
    key("epochs", Ty::Int, "Passes over the training split.").def("10").min(1.0),
    key("batch_size", Ty::Int, "Images per step.").def("32").min(1.0),
    key("optimizer", Ty::Str, "The optimizer.").def("\"sgd\"").one_of(&["sgd", "adam", "adamw"]),
    key("lr", Ty::Float, "Peak learning rate (default 0.01 with sgd, 0.001 with adam and adamw).").range(1e-12, 10.0),
    key("momentum", Ty::Float, "SGD momentum.").def("0.9").range(0.0, 0.999_999),
    key("nesterov", Ty::Bool, "Nesterov momentum (SGD).").def("false"),
    key("beta1", Ty::Float, "Adam's first-moment decay.").def("0.9").range(0.0, 0.999_999),
    key("beta2", Ty::Float, "Adam's second-moment decay.").def("0.999").range(0.0, 0.999_999_9),
    key("eps", Ty::Float, "Adam's epsilon.").def("1e-8").range(0.0, 1.0),
    key("weight_decay", Ty::Float, "L2 weight decay (decoupled with adamw; default 0.01 with adamw, else 0).").range(0.0, 1.0),
    key("l1", Ty::Float, "L1 penalty on weights, as TAO's L1 regularizer (sparsifies channels before pruning).").def("0.0").range(0.0, 1.0),
    key("schedule", Ty::Str, "Learning-rate schedule; soft_start_annealing is TAO's.").def("\"cosine\"").one_of(&["constant", "step", "cosine", "soft_start_annealing"]),
    key("min_lr", Ty::Float, "Final learning rate of cosine and soft_start_annealing (0: lr/1000 for soft_start_annealing).").def("0.0").range(0.0, 10.0),
    key("warmup_epochs", Ty::Float, "Linear warm-up before the cosine schedule, in epochs.").def("0.0").range(0.0, 1e6),
    key("step_epochs", Ty::Int, "Epochs between steps of the step schedule (default: a third of the epochs).").min(0.0),
    key("gamma", Ty::Float, "Factor of each step of the step schedule.").def("0.1").range(0.0, 1.0),
    key("soft_start", Ty::Float, "soft_start_annealing: share of training spent ramping up to lr.").def("0.1").range(0.0, 1.0),
    key("annealing_start", Ty::Float, "soft_start_annealing: share of training after which lr decays.").def("0.7").range(0.0, 1.0),
    key("label_smoothing", Ty::Float, "Label smoothing of the cross-entropy (classifiers).").def("0.0").range(0.0, 0.999),
    key("hflip", Ty::Bool, "Flip training images horizontally at random (classifiers; detectors use `spatial`).").def("false"),
    key("crop_padding", Ty::Int, "Pad by this many pixels and crop back at random (classifiers).").def("0").min(0.0),
    key("freeze_blocks", Ty::IntList, "Backbone blocks (0, 1, …) whose weights stay fixed, as TAO's freeze_blocks.").min(0.0),
    key("freeze_layers", Ty::StrList, "Layers (names in model.json) whose weights stay fixed."),
    key("train_split", Ty::Str, "The split trained on.").def("\"train\""),
    key("val_split", Ty::Str, "The split validated on after epochs (\"none\" or \"\": no validation; a missing default split is skipped).").def("\"val\""),
    key("val_every", Ty::Int, "Validate every this many epochs.").def("1").min(1.0),
    key("checkpoint_every", Ty::Int, "Keep a resumable checkpoint every this many epochs (0: never).").def("1").min(0.0),
    key("precision", Ty::Str, "GPU arithmetic: fp32, tf32 (TF32 tensor cores) or bf16 autocast; not part of the stage key.").def("\"tf32\"").one_of(&["fp32", "tf32", "bf16"]),
    key("targets", Ty::PerClass(crate::tasks::detection::train::TARGET_KEYS), "Detectors: DetectNet_v2's target rasteriser and cost, per class (TAO's KITTI spec by default)."),
    key("postprocess", Ty::PerClass(crate::tasks::detection::postprocess::CLUSTER_KEYS), "Detectors: clustering of grid cells into boxes, per class; kept in the model."),
    key("deadzone_radius", Ty::Float, "Detectors: the rasteriser's dead zone around each box's coverage (default 0.4, or the init model's).").range(0.0, 1.0),
    key("min_box_size", Ty::Float, "Detectors: boxes narrower or lower than this (input pixels, after augmentation) leave the targets (default 1).").range(0.0, 4096.0),
    key("spatial", Ty::Table(crate::stages::augment::SPATIAL), "Detectors: online augmentation of every training batch, geometry (the augment stage's keys); boxes follow."),
    key("color", Ty::Table(crate::stages::augment::COLOR), "Detectors: online colour augmentation of every training batch (the augment stage's keys)."),
    key("blur", Ty::Table(crate::stages::augment::BLUR), "Detectors: online Gaussian blur of training batches (the augment stage's keys)."),
];

impl StageKind for Train {
    fn name(&self) -> &'static str {
        if self.retrain { "retrain" } else { "train" }
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        if self.retrain { "fine-tune a pruned model (`init`), keeping its structure" } else { "train or fine-tune a classifier or a DetectNet_v2 detector" }
    }
    fn spec(&self) -> Vec<Key> {
        // `retrain` keeps its `init` model's structure: no `arch`, no `pretrained`.
        SPEC.iter()
            .filter(|k| !(self.retrain && matches!(k.name, "arch" | "pretrained")))
            .map(|k| if self.retrain && k.name == "init" { k.required() } else { *k })
            .collect()
    }

    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef> {
        let before = f.diags.0.len();
        let dataset = f.required_str("dataset", "dataset = \"convert\"");
        let arch = f.str("arch");
        let pretrained = f.str("pretrained");
        let init = if self.retrain { f.required_str("init", "init = \"prune.model\"") } else { f.str("init") };
        if let Some((a, n)) = &arch {
            if self.retrain {
                f.diags.push(Diag::error("`retrain` keeps the structure of its `init` model; it takes no `arch`").at(&n.span, "not used by retrain").hint("remove `arch`"));
            } else if !ARCHS.contains(&a.as_str()) {
                let hint = match crate::diag::did_you_mean(a, ARCHS.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("choose one of {}", ARCHS.join(", ")),
                };
                f.diags.push(Diag::error(format!("unknown architecture `{a}`")).at(&n.span, "unknown").hint(hint));
            }
        }
        if let (Some((_, pn)), Some(_)) = (&pretrained, &init) {
            f.diags.push(Diag::error("`pretrained` and `init` exclude each other").at(&pn.span, "remove one").hint("`init` continues from a model artifact with its structure; `pretrained` loads weights into `arch`"));
        }
        if arch.is_none() && init.is_none() && !self.retrain {
            f.missing("arch", "arch = \"mobilenet_v2\" (or init = \"other.model\")");
        }
        let width = match f.float("width") {
            Some((w, n)) if !(w > 0.0 && w <= 4.0) => {
                f.diags.push(Diag::error("`width` must be in (0, 4]").at(&n.span, "out of range"));
                1.0
            }
            Some((w, _)) => w,
            None => 1.0,
        };
        let input_size = match f.get("input_size") {
            None => None,
            Some(n) => match &n.v {
                crate::value::V::Int(i) if (8..=4096).contains(i) => Some([*i as u32, *i as u32]),
                crate::value::V::Array(a) if a.len() == 2 => {
                    let v: Vec<u32> = a.iter().filter_map(|x| if let crate::value::V::Int(i) = x.v { (8..=4096).contains(&i).then_some(i as u32) } else { None }).collect();
                    if v.len() == 2 {
                        Some([v[0], v[1]])
                    } else {
                        f.diags.push(Diag::error("`input_size` must be 8..4096 pixels").at(&n.span, "invalid"));
                        None
                    }
                }
                _ => {
                    f.diags.push(crate::config::type_error("`input_size`", "a size in pixels (8..4096) or [height, width]", n));
                    None
                }
            },
        };
        let epochs = f.positive_uint("epochs", 10) as usize;
        let batch_size = f.positive_uint("batch_size", 32) as usize;
        let val_every = f.positive_uint("val_every", 1) as usize;
        let checkpoint_every = f.uint("checkpoint_every").map(|(v, _)| v as usize).unwrap_or(1);
        let unit = |f: &mut Fields<'_>, key: &str, default: f64, lo: f64, hi: f64| match f.float(key) {
            Some((v, n)) if !(v >= lo && v <= hi) => {
                f.diags.push(Diag::error(format!("`{key}` must be between {lo} and {hi}")).at(&n.span, "out of range"));
                default
            }
            Some((v, _)) => v,
            None => default,
        };
        let optimizer = f.str("optimizer");
        let opt_name = optimizer.as_ref().map(|(s, _)| s.as_str()).unwrap_or("sgd").to_string();
        let (beta1, beta2) = (unit(f, "beta1", 0.9, 0.0, 0.999_999), unit(f, "beta2", 0.999, 0.0, 0.999_999_9));
        let eps = unit(f, "eps", 1e-8, 0.0, 1.0);
        let momentum = unit(f, "momentum", 0.9, 0.0, 0.999_999);
        let nesterov = f.bool("nesterov").map(|(b, _)| b).unwrap_or(false);
        let kind = match opt_name.as_str() {
            "sgd" => OptimKind::Sgd { momentum, nesterov },
            "adam" => OptimKind::Adam { beta1, beta2, eps },
            "adamw" => OptimKind::AdamW { beta1, beta2, eps },
            other => {
                if let Some((_, n)) = &optimizer {
                    f.diags.push(Diag::error(format!("unknown optimizer `{other}`")).at(&n.span, "unknown").hint("choose sgd, adam or adamw"));
                }
                OptimKind::Sgd { momentum, nesterov }
            }
        };
        let default_lr = if opt_name == "sgd" { 0.01 } else { 1e-3 };
        let lr = unit(f, "lr", default_lr, 1e-12, 10.0);
        let weight_decay = unit(f, "weight_decay", if opt_name == "adamw" { 0.01 } else { 0.0 }, 0.0, 1.0);
        let l1 = unit(f, "l1", 0.0, 0.0, 1.0);
        let schedule_name = f.str("schedule");
        let min_lr = unit(f, "min_lr", 0.0, 0.0, 10.0);
        let warmup_epochs = unit(f, "warmup_epochs", 0.0, 0.0, 1e6);
        let step_epochs = f.uint("step_epochs").map(|(v, _)| v as usize).unwrap_or(epochs.div_ceil(3).max(1));
        let gamma = unit(f, "gamma", 0.1, 0.0, 1.0);
        let soft_start = unit(f, "soft_start", 0.1, 0.0, 1.0);
        let annealing_start = unit(f, "annealing_start", 0.7, 0.0, 1.0);
        let schedule = match schedule_name.as_ref().map(|(s, _)| s.as_str()).unwrap_or("cosine") {
            "constant" => Schedule::Constant,
            "step" => Schedule::Step { step_epochs: step_epochs.max(1), gamma },
            "cosine" => Schedule::Cosine { min_lr, warmup_epochs },
            "soft_start_annealing" => {
                let min = if min_lr > 0.0 { min_lr } else { lr * 1e-3 };
                if soft_start > annealing_start {
                    f.diags.push(Diag::error("`soft_start` must not come after `annealing_start`").hint("e.g. soft_start = 0.1, annealing_start = 0.7"));
                }
                Schedule::SoftStartAnnealing { min_lr: min, soft_start, annealing_start }
            }
            other => {
                if let Some((_, n)) = &schedule_name {
                    f.diags.push(Diag::error(format!("unknown schedule `{other}`")).at(&n.span, "unknown").hint("choose constant, step, cosine or soft_start_annealing"));
                }
                Schedule::Constant
            }
        };
        let label_smoothing = unit(f, "label_smoothing", 0.0, 0.0, 0.999);
        let hflip = f.bool("hflip").map(|(b, _)| b).unwrap_or(false);
        let crop_padding = f.uint("crop_padding").map(|(v, _)| v as u32).unwrap_or(0);
        let augment = (hflip || crop_padding > 0).then_some(OnlineAugment { hflip, crop_padding });
        let mut freeze_blocks = Vec::new();
        if let Some(n) = f.get("freeze_blocks") {
            match &n.v {
                crate::value::V::Array(a) => {
                    for x in a {
                        match x.v {
                            crate::value::V::Int(i) if i >= 0 => freeze_blocks.push(i as usize),
                            _ => f.diags.push(crate::config::type_error("each entry of `freeze_blocks`", "a block number (0, 1, …)", x)),
                        }
                    }
                }
                _ => f.diags.push(crate::config::type_error("`freeze_blocks`", "an array of block numbers", n)),
            }
        }
        freeze_blocks.sort();
        freeze_blocks.dedup();
        let freeze_layers: Vec<String> = f.str_list("freeze_layers").unwrap_or_default().into_iter().map(|(s, _)| s).collect();
        let train_split = f.str("train_split").map(|(s, _)| s).unwrap_or_else(|| "train".into());
        let val = f.str("val_split");
        let val_explicit = val.is_some();
        let val_split = match val {
            Some((s, _)) if s.is_empty() || s == "none" => None,
            Some((s, _)) => Some(s),
            None => Some("val".into()),
        };
        let precision = f.choice("precision", &["fp32", "tf32", "bf16"], "tf32");
        // Detection only (checked against the dataset's task when the stage runs).
        let mut det = DetectionSpec {
            targets: settings::parse::<ClassTraining>(f, "targets", stage, &|c| c.validate()),
            postprocess: settings::parse::<ClusterConfig>(f, "postprocess", stage, &|c| c.validate()),
            deadzone_radius: unit(f, "deadzone_radius", f64::NAN, 0.0, 1.0).into(),
            min_box_size: unit(f, "min_box_size", f64::NAN, 0.0, 4096.0).into(),
            augment: None,
        };
        det.deadzone_radius = det.deadzone_radius.filter(|v| !v.is_nan());
        det.min_box_size = det.min_box_size.filter(|v| !v.is_nan());
        if ["spatial", "color", "blur"].iter().any(|k| f.table.get(k).is_some()) {
            let mut a = crate::stages::augment::parse_tables(f, stage);
            a.min_box_size = 0.0;
            det.augment = Some(a);
        }
        let detection = (det != DetectionSpec::default()).then_some(det);
        if f.diags.0.len() > before {
            return None;
        }
        let (dataset, dnode) = dataset?;
        let model = ModelSpec { arch: arch.map(|(a, _)| a), width, input_size, freeze_blocks, freeze_layers };
        let cfg = TrainConfig {
            epochs,
            batch_size,
            lr,
            schedule,
            optim: OptimConfig { kind, weight_decay, l1 },
            label_smoothing,
            augment,
            train_split,
            val_split,
            val_every,
            checkpoint_every,
            seed: 0,
            detection: None,
        };
        let mut params = BTreeMap::new();
        params.insert("model".into(), PVal::from_json(serde_json::to_value(&model).expect("serialises")));
        if let Some(d) = &detection {
            params.insert("detection".into(), PVal::from_json(serde_json::to_value(d).expect("serialises")));
        }
        params.insert("training".into(), PVal::from_json(serde_json::to_value(&cfg).expect("serialises")));
        let mut inputs = vec![InputDecl { label: "dataset".into(), raw: dataset, span: dnode.span.clone() }];
        if let Some((p, n)) = pretrained {
            inputs.push(InputDecl { label: "pretrained".into(), raw: p, span: n.span.clone() });
        }
        if let Some((p, n)) = init {
            inputs.push(InputDecl { label: "init".into(), raw: p, span: n.span.clone() });
        }
        Some(StageDef {
            params,
            inputs,
            outputs: vec![OutputDecl { name: "model".into(), path: PathBuf::from("outputs").join(stage).join("model"), span: dnode.span.clone(), owned: true }],
            metrics: Some("model".into()),
            gpus: 0,
            description: None,
            typed: Arc::new(Parsed { model, detection, cfg, val_explicit, precision }),
        })
    }

    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>> {
        Box::pin(async move {
            let p = ctx.def.typed.downcast_ref::<Parsed>().ok_or_else(|| StageError::Failed("internal: train stage data missing".into()))?;
            let mut cfg = p.cfg.clone();
            cfg.seed = ctx.seed as u64;
            let model = p.model.clone();
            let detection = p.detection.clone();
            let val_explicit = p.val_explicit;
            let precision = p.precision.clone();
            let gpus = ctx.gpus.clone();
            let dataset = ctx.inputs["dataset"].clone();
            let pretrained = ctx.inputs.get("pretrained").cloned();
            let init = ctx.inputs.get("init").cloned();
            let out = ctx.outputs["model"].clone();
            let ckpt = ctx.checkpoints.clone();
            let log_path = ctx.log.clone();
            let progress = ctx.progress.clone();
            let cancel = ctx.cancel.clone();
            let kernel_cache = ctx.kernel_cache.clone();
            tokio::task::spawn_blocking(move || {
                let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).ok();
                // The stage log, and the user: one line per epoch (also without a terminal).
                let note = progress.clone();
                let mut logf = |s: &str| {
                    if let Some(l) = log.as_mut() {
                        let _ = writeln!(l, "{s}");
                    }
                    note.note(s);
                };
                let r = run_training(&dataset, pretrained.as_deref(), init.as_deref(), &model, detection.as_ref(), cfg, val_explicit, &Where { gpus, precision, kernel_cache }, &ckpt, &out, &progress, &|| *cancel.borrow(), &mut logf);
                if r.is_ok() {
                    let _ = std::fs::remove_dir_all(&ckpt);
                }
                r
            })
            .await
            .map_err(|e| StageError::Failed(format!("training crashed: {e}")))?
        })
    }
}

/// The block a layer belongs to, for `freeze_blocks`: the stem is block 0, then each
/// stage of the backbone (`features.N` of MobileNetV2, `layerN` of ResNet, `_blocks.N` of
/// EfficientNet-Lite counted from 1). Heads belong to no block.
pub fn block_of(layer: &str) -> Option<usize> {
    let mut parts = layer.split('.');
    let first = parts.next()?;
    match first {
        "features" => parts.next()?.parse().ok(),
        "conv1" | "bn1" | "_conv_stem" | "_bn0" | "_relu0" => Some(0),
        "_blocks" => parts.next()?.parse::<usize>().ok().map(|n| n + 1),
        _ => first.strip_prefix("layer").and_then(|n| n.parse().ok()),
    }
}

/// Build the graph a stage trains: from `init` (a model artifact), or `arch` with the
/// dataset's classes.
fn build_graph(spec: &ModelSpec, classes: &[String], input_default: u32) -> Result<ModelGraph, String> {
    let [h, w] = spec.input_size.unwrap_or([input_default, input_default]);
    let input = InputSpec::imagenet(w, h);
    match spec.arch.as_deref() {
        Some(arch) => crate::model::builders::by_name(arch, spec.width, input, classes.to_vec()),
        None => Err("no architecture given".into()),
    }
}

/// A detector for `classes` from `arch` (a backbone) at `input_size` (default 224²), the
/// input RGB / 255 as TAO's DetectNet_v2 takes it.
fn build_detector(spec: &ModelSpec, classes: &[String]) -> Result<ModelGraph, String> {
    let [h, w] = spec.input_size.unwrap_or([224, 224]);
    let arch = spec.arch.as_deref().ok_or("no architecture given")?;
    if !crate::model::builders::DETECTNET_BACKBONES.contains(&arch) {
        return Err(format!("`arch = \"{arch}\"` is not a DetectNet_v2 backbone here\n  = hint: for detection choose {}", crate::model::builders::DETECTNET_BACKBONES.join(", ")));
    }
    if h % 16 != 0 || w % 16 != 0 {
        return Err(format!("a detector's `input_size` must be multiples of 16 pixels; [{h}, {w}] is not\n  = hint: e.g. input_size = [{}, {}]", h.div_ceil(16) * 16, w.div_ceil(16) * 16));
    }
    crate::model::builders::detectnet_v2(arch, spec.width, InputSpec::plain(w, h, 3), classes.to_vec())
}

/// The linear layers that produce the output: replaced when the class count changes.
fn head_layers(g: &ModelGraph) -> Vec<String> {
    g.layers.iter().filter(|l| l.name == g.output() && matches!(l.op, Op::Linear { .. })).map(|l| l.name.clone()).collect()
}

/// Where a training stage runs: the GPUs it leased (none: the CPU) and the GPU precision.
struct Where {
    gpus: Vec<u32>,
    precision: String,
    /// The store's cache of our compiled CUDA kernels.
    #[cfg_attr(not(feature = "torch"), allow(dead_code))]
    kernel_cache: std::path::PathBuf,
}

#[allow(clippy::too_many_arguments)]
fn run_training(
    dataset: &Path,
    pretrained: Option<&Path>,
    init: Option<&Path>,
    spec: &ModelSpec,
    det: Option<&DetectionSpec>,
    cfg: TrainConfig,
    val_explicit: bool,
    place: &Where,
    ckpt: &Path,
    out: &Path,
    progress: &crate::stages::ProgressFn,
    cancelled: &dyn Fn() -> bool,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<String>, StageError> {
    type B = Autodiff<NdArray<f32>>;
    let device = Default::default();
    let fail = StageError::Failed;
    let ds = Dataset::open(dataset).map_err(|e| fail(e.to_string()))?;
    let detector = match ds.manifest.task.as_str() {
        "classification" => false,
        "detection" => true,
        other => return Err(fail(format!("`train` handles classification and detection datasets for now; this one is `{other}`"))),
    };
    if !detector && det.is_some() {
        return Err(fail("`targets`, `postprocess`, `deadzone_radius`, `min_box_size` and online `spatial`/`color`/`blur` augmentation are for detection datasets; this one is for classification\n  = hint: remove them, or use `hflip`/`crop_padding`".into()));
    }
    let classes = ds.manifest.classes.clone();
    let mut cfg = cfg;
    let mut notes = Vec::new();
    if !ds.manifest.splits.contains_key(&cfg.train_split) {
        return Err(fail(format!("the dataset has no `{}` split (it has {})\n  = hint: set `train_split`", cfg.train_split, ds.manifest.splits.keys().cloned().collect::<Vec<_>>().join(", "))));
    }
    if let Some(v) = &cfg.val_split
        && !ds.manifest.splits.contains_key(v)
    {
        if val_explicit {
            return Err(fail(format!("the dataset has no `{v}` split for validation (it has {})", ds.manifest.splits.keys().cloned().collect::<Vec<_>>().join(", "))));
        }
        notes.push(format!("no `{v}` split: no validation"));
        cfg.val_split = None;
    }

    // The graph and its starting weights.
    <B as burn::tensor::backend::Backend>::seed(&device, cfg.seed);
    let (graph, weights) = match init {
        Some(dir) => {
            let text = std::fs::read_to_string(dir.join("model.json")).map_err(|e| fail(format!("`init`: cannot read `{}` (is it a model artifact?): {e}", dir.join("model.json").display())))?;
            let mut g: ModelGraph = serde_json::from_str(&text).map_err(|e| fail(format!("`init`: `{}` is not a model graph: {e}", dir.join("model.json").display())))?;
            if let Some([h, w]) = spec.input_size {
                g.input.height = h;
                g.input.width = w;
            }
            let w = crate::model::import::read_weights(&dir.join("weights.safetensors")).map_err(fail)?;
            let old_classes = g.classes.len();
            if (g.task == TaskKind::Detection) != detector {
                return Err(fail(format!("`init` is a {} model and the dataset is for {}", g.task.as_str(), ds.manifest.task)));
            }
            if detector && g.classes != classes {
                return Err(fail(format!("`init` detects {} and the dataset has {}\n  = hint: retrain a detector on data with the same classes, or train a new one with `arch`", g.classes.join(", "), classes.join(", "))));
            }
            if g.classes != classes {
                // New head: resize the output linear layer.
                for l in g.layers.iter_mut() {
                    if l.name == g.outputs[0]
                        && let Op::Linear { out_features, .. } = &mut l.op
                    {
                        *out_features = classes.len();
                    }
                }
                if old_classes != classes.len() {
                    notes.push(format!("new head for {} classes (the init model had {old_classes})", classes.len()));
                }
                g.classes = classes.clone();
            }
            (g, Some(w))
        }
        None => {
            let g = if detector { build_detector(spec, &classes).map_err(fail)? } else { build_graph(spec, &classes, 224).map_err(fail)? };
            let w = match pretrained {
                Some(p) => {
                    let file = if p.is_dir() { p.join("weights.safetensors") } else { p.to_path_buf() };
                    Some(crate::model::import::read_weights(&file).map_err(fail)?)
                }
                None => None,
            };
            (g, w)
        }
    };
    let mut graph = graph;
    if detector {
        // The detector's settings: post-processing kept in the model, targets and cost for
        // training.
        let d = det.cloned().unwrap_or_default();
        let head = graph.detection.as_mut().ok_or_else(|| fail("internal: a detector without detection settings".into()))?;
        if !d.postprocess.is_empty() || init.is_none() {
            head.clustering = d.postprocess.resolve(&classes, "postprocess").map_err(fail)?;
        }
        // `retrain` keeps the targets its model was trained with unless the stage gives its own.
        let inherited = head.targets.clone().filter(|t| t.classes.len() == classes.len());
        let target_classes = match &inherited {
            Some(t) if d.targets.is_empty() => t.classes.clone(),
            _ => d.targets.resolve(&classes, "targets").map_err(fail)?,
        };
        let deadzone_radius = d.deadzone_radius.map(|v| v as f32).or(inherited.map(|t| t.deadzone_radius)).unwrap_or(0.4);
        head.targets = Some(crate::tasks::detection::train::TargetSettings { deadzone_radius, classes: target_classes.clone() });
        cfg.detection = Some(DetectionTraining { deadzone_radius, classes: target_classes, augment: d.augment.clone(), min_box_size: d.min_box_size.unwrap_or(1.0) });
    }
    let graph = graph;
    graph.validate().map_err(fail)?;
    let mut net = crate::model::net::GraphNet::<B>::new(&graph, &device).map_err(fail)?;
    // A detector's layers that ImageNet weights lack (its heads; ResNet's first-stage
    // projection, stride 2 here): TAO's initialisation (Glorot-uniform kernels, zero bias).
    let new_layers = if detector && init.is_none() { crate::model::builders::detectnet_new_layers(&graph) } else { Vec::new() };
    if !new_layers.is_empty() {
        let mut w = crate::model::builders::glorot_init(&graph, &new_layers, cfg.seed);
        if weights.is_none() {
            // From scratch: Burn's initialisation elsewhere, TAO's on the heads.
            w.retain(|k, _| new_layers.iter().any(|l| k.starts_with(&format!("{l}."))));
        }
        let (n, _) = net.load_weights(&w, &device).map_err(fail)?;
        net = n;
    }
    if let Some(mut w) = weights {
        let dropped = crate::model::train::drop_mismatched(&graph, &mut w, &head_layers(&graph)).map_err(fail)?;
        let (n, missing) = net.load_weights(&w, &device).map_err(fail)?;
        let missing: Vec<String> = missing.into_iter().filter(|m| !dropped.iter().chain(&new_layers).any(|d| m.starts_with(&format!("{d}.")))).collect();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
            return Err(fail(format!(
                "the starting weights lack {} of the model's tensors: {}{}\n  = hint: check that `arch` matches the weights (names follow torchvision)",
                missing.len(),
                shown.join(", "),
                if missing.len() > 5 { ", …" } else { "" }
            )));
        }
        net = n;
        if !dropped.is_empty() && init.is_none() {
            notes.push(format!("new head `{}` for {} classes", dropped.join("`, `"), classes.len()));
        }
        if !new_layers.is_empty() {
            notes.push(format!("new layers `{}` (Glorot-uniform, zero bias)", new_layers.join("`, `")));
        }
    }
    let frozen = |name: &str| block_of(name).is_some_and(|b| spec.freeze_blocks.contains(&b)) || spec.freeze_layers.iter().any(|p| name == p || name.starts_with(&format!("{p}.")));
    let (net, n_frozen) = net.freeze(&frozen);
    if !spec.freeze_blocks.is_empty() || !spec.freeze_layers.is_empty() {
        if n_frozen == 0 {
            return Err(fail(format!("`freeze_blocks`/`freeze_layers` froze no layer of `{}`", graph.arch)));
        }
        notes.push(format!("{n_frozen} layers frozen"));
    }

    let total_progress = progress.clone();
    let prog = move |p: crate::model::train::Progress<'_>| total_progress.update(p.done, p.total, p.message);
    let outcome = {
        let mut burn_engine;
        #[cfg(feature = "torch")]
        let mut torch_engine;
        let engine: &mut dyn crate::model::train::Engine = match place.gpus.as_slice() {
            [] => {
                burn_engine = crate::model::train::BurnEngine::<B>::new(&graph, net, &cfg, &device);
                &mut burn_engine
            }
            [gpu] => {
                #[cfg(feature = "torch")]
                {
                    let precision = crate::model::torch::Precision::parse(&place.precision).ok_or_else(|| fail(format!("unknown precision `{}`", place.precision)))?;
                    let t0 = std::time::Instant::now();
                    let rt = crate::model::torch::Runtime::cuda(*gpu as usize, precision, Some(&place.kernel_cache)).map_err(fail)?;
                    let weights: std::collections::HashMap<String, crate::model::net::WeightData> = net.export_weights().map_err(fail)?.into_iter().collect();
                    let tnet = crate::model::torch::TorchNet::new(&graph, &weights, &frozen, &rt).map_err(fail)?;
                    torch_engine = crate::model::torch::TorchEngine::new(tnet, &cfg, precision).map_err(fail)?.with_objective(cfg.objective(&graph));
                    log(&format!("training on cuda:{gpu} ({}) with libtorch, ready in {:.1}s", place.precision, t0.elapsed().as_secs_f64()));
                    notes.push(format!("trained on cuda:{gpu} ({})", place.precision));
                    &mut torch_engine
                }
                #[cfg(not(feature = "torch"))]
                {
                    let _ = (gpu, &place.precision);
                    return Err(fail(crate::stages::NO_GPU_BUILD.into()));
                }
            }
            many => return Err(fail(format!("training on {} GPUs at once is not built yet\n  = hint: set `gpus = 1`", many.len()))),
        };
        match crate::model::train::train(&graph, engine, &ds, &cfg, Some(ckpt), &prog, cancelled, log) {
            Ok(o) => o,
            Err(TrainError::Interrupted) => return Err(StageError::Interrupted),
            Err(TrainError::Failed(m)) => return Err(fail(m)),
        }
    };
    if outcome.resumed_from > 0 {
        notes.push(format!("resumed from the checkpoint after epoch {}", outcome.resumed_from));
    }
    let last = outcome.history.last().cloned();
    let history = outcome.history.clone();
    let params = graph.param_count();
    crate::stages::write_dir_atomically(out, |tmp| {
        crate::model::artifact::save_weights(tmp, &graph, outcome.weights).map_err(fail)?;
        let summary = serde_json::json!({
            "arch": graph.arch,
            "parameters": params,
            "classes": graph.classes,
            "input": graph.input,
            "epochs": cfg.epochs,
            "steps": outcome.steps,
            "resumed_from_epoch": outcome.resumed_from,
            "train_loss": last.as_ref().map(|r| r.train_loss),
            "train_accuracy": last.as_ref().map(|r| r.train_accuracy),
            "val_loss": last.as_ref().and_then(|r| r.val_loss),
            "val_accuracy": last.as_ref().and_then(|r| r.val_accuracy),
            "history": history,
        });
        let mut j = serde_json::to_vec_pretty(&summary).expect("serialises");
        j.push(b'\n');
        std::fs::write(tmp.join("metrics.json"), j).map_err(|e| fail(format!("cannot write metrics.json: {e}")))?;
        std::fs::write(tmp.join("history.csv"), history_csv(&history)).map_err(|e| fail(format!("cannot write history.csv: {e}")))?;
        crate::plot::training_curves(&history, &tmp.join("curves.png")).map_err(fail)?;
        Ok(())
    })?;
    if let Some(r) = last {
        let mut s = format!("{} ({} parameters), {} epochs: train loss {:.4}", graph.arch, params, cfg.epochs, r.train_loss);
        if let Some(a) = r.train_accuracy {
            s.push_str(&format!(", train acc {a:.4}"));
        }
        if let (Some(l), Some(a)) = (r.val_loss, r.val_accuracy) {
            s.push_str(&format!(", val loss {l:.4}, val acc {a:.4}"));
        }
        s.push_str(&format!(" ({} img/s)", crate::ui::rate(r.images_per_second)));
        notes.insert(0, s);
    }
    Ok(notes)
}

fn history_csv(h: &[EpochRecord]) -> String {
    let mut s = String::from("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds,images_per_second\n");
    let o = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
    for r in h {
        s.push_str(&format!("{},{},{},{},{},{},{},{}\n", r.epoch, r.lr, r.train_loss, o(r.train_accuracy), o(r.val_loss), o(r.val_accuracy), r.seconds, r.images_per_second));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks() {
        assert_eq!(block_of("features.0.0"), Some(0));
        assert_eq!(block_of("features.17.conv.1.0"), Some(17));
        assert_eq!(block_of("conv1"), Some(0));
        assert_eq!(block_of("layer3.1.conv2"), Some(3));
        assert_eq!(block_of("_blocks.0._depthwise_conv"), Some(1));
        assert_eq!(block_of("_conv_stem"), Some(0));
        assert_eq!(block_of("_fc"), None);
        assert_eq!(block_of("fc"), None);
        assert_eq!(block_of("classifier.1"), None);
    }
}
