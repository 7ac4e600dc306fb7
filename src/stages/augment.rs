//! `augment`: TAO's offline augmentation of a dataset artifact.
//!
//! ```toml
//! [stages.augment]
//! kind = "augment"
//! dataset = "convert"             # a dataset artifact
//! copies = 2                      # augmented copies per image (keys `<key>-aug0` …)
//! keep_originals = true
//! output_width = 416              # optional, with output_height: resize in the same pass
//! output_height = 160
//! min_box_size = 2                # boxes smaller than this after the warp are dropped
//! splits = ["train"]              # other splits are copied unchanged
//!
//! [stages.augment.spatial]        # a number is fixed, [min, max] is sampled per image
//! rotation = [-10, 10]            # degrees (rotation_units = "radians" to change)
//! shear_x = [-0.1, 0.1]
//! translate_x = [-8, 8]           # output pixels
//! flip_horizontal = 0.5           # probability
//! zoom = [0.9, 1.1]
//!
//! [stages.augment.color]
//! hue = [-15, 15]                 # degrees
//! saturation = [0.8, 1.2]         # factor
//! contrast = [0.8, 1.2]           # factor around contrast_center (127.5)
//! brightness = [-20, 20]          # levels
//!
//! [stages.augment.blur]
//! std = [0, 1.0]                  # pixels
//! size = 5                        # kernel size (odd)
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::schema::{Key, Ty, key, names};
use crate::config::{type_error, Fields};
use crate::data::augment::{augment_dataset, AugmentSpec, Param};
use crate::diag::{did_you_mean, Diag};
use crate::stages::{InputDecl, OutputDecl, RunCtx, StageDef, StageError, StageKind};
use crate::value::{Float, Node, PVal, Table, V};

#[derive(Debug)]
pub struct Augment;

#[derive(Debug)]
struct Parsed {
    spec: AugmentSpec,
    shard_max_bytes: u64,
    cpu_fallback: bool,
}

const SPEC: &[Key] = &[
    key("dataset", Ty::Str, "The dataset to augment: a stage's dataset (`convert`) or a path.").required(),
    key("cpu_fallback", Ty::Bool, "Run on the CPU when no GPU kernel can be used (the result is the same to the bit).").def("false"),
    key("copies", Ty::Int, "Augmented copies written per image.").def("1").min(0.0),
    key("keep_originals", Ty::Bool, "Keep each original image beside its copies.").def("true"),
    key("output_width", Ty::Int, "Resize every image to this width (with output_height; default: each image's own size).").range(1.0, 16384.0),
    key("output_height", Ty::Int, "Resize every image to this height (with output_width).").range(1.0, 16384.0),
    key("output_channels", Ty::Int, "Channels of the written images: 1 (grey) or 3 (RGB).").def("3").int_one_of(&[1, 3]),
    key("min_box_size", Ty::Float, "Boxes narrower or lower than this (pixels) after augmentation are dropped.").def("2.0"),
    key("splits", Ty::StrList, "The splits augmented; the others are copied unchanged.").def("[\"train\"]"),
    key("shard_max_mb", Ty::Int, "Largest shard written, in MiB.").def("256").min(0.0),
    key("spatial", Ty::Table(SPATIAL), "Geometry: rotation, shear, translation, flips and zoom, each a number or a [min, max] range drawn per image."),
    key("color", Ty::Table(COLOR), "Colour: hue, saturation, contrast and brightness, each a number or a [min, max] range."),
    key("blur", Ty::Table(BLUR), "Gaussian blur."),
];
/// `[stages.X.spatial]`.
pub const SPATIAL: &[Key] = &[
    key("rotation", Ty::NumOrRange, "Rotation angle (degrees, or radians with rotation_units; radians within [-pi, pi]).").def("0.0").range(-180.0, 180.0),
    key("rotation_units", Ty::Str, "Units of `rotation`.").def("\"degrees\"").one_of(&["degrees", "radians"]),
    key("shear_x", Ty::NumOrRange, "Horizontal shear ratio.").def("0.0").range(-1.0, 1.0),
    key("shear_y", Ty::NumOrRange, "Vertical shear ratio.").def("0.0").range(-1.0, 1.0),
    key("translate_x", Ty::NumOrRange, "Horizontal shift in pixels.").def("0.0").range(-16384.0, 16384.0),
    key("translate_y", Ty::NumOrRange, "Vertical shift in pixels.").def("0.0").range(-16384.0, 16384.0),
    key("flip_horizontal", Ty::Float, "Probability of a horizontal flip.").def("0.0").range(0.0, 1.0),
    key("flip_vertical", Ty::Float, "Probability of a vertical flip.").def("0.0").range(0.0, 1.0),
    key("zoom", Ty::NumOrRange, "Zoom factor (above 1 enlarges).").def("1.0").range(0.05, 20.0),
];
/// `[stages.X.color]`.
pub const COLOR: &[Key] = &[
    key("hue", Ty::NumOrRange, "Hue rotation in degrees.").def("0.0").range(-180.0, 180.0),
    key("saturation", Ty::NumOrRange, "Saturation factor (1 keeps it).").def("1.0").range(0.0, 10.0),
    key("contrast", Ty::NumOrRange, "Contrast factor around contrast_center (1 keeps it).").def("1.0").range(0.0, 10.0),
    key("contrast_center", Ty::Float, "The level contrast scales around.").def("127.5").range(0.0, 255.0),
    key("brightness", Ty::NumOrRange, "Offset added to every level.").def("0.0").range(-255.0, 255.0),
];
/// `[stages.X.blur]`.
pub const BLUR: &[Key] = &[
    key("std", Ty::NumOrRange, "Standard deviation of the Gaussian blur in pixels (0: none).").def("0.0").range(0.0, 50.0),
    key("size", Ty::Int, "Kernel size in pixels, odd.").def("5").range(1.0, 101.0),
];

/// TAO spec keys we do not take, with what to write instead.
const TAO_KEYS: &[(&str, &str)] = &[
    ("hflip_probability", "use `flip_horizontal` in [stages.NAME.spatial]"),
    ("vflip_probability", "use `flip_vertical` in [stages.NAME.spatial]"),
    ("rotate_rad_max", "use `rotation = [-x, x]` with `rotation_units = \"radians\"`"),
    ("zoom_min", "use `zoom = [min, max]`"),
    ("zoom_max", "use `zoom = [min, max]`"),
    ("translate_max_x", "use `translate_x = [-x, x]`"),
    ("translate_max_y", "use `translate_y = [-y, y]`"),
    ("hue_rotation_max", "use `hue = [-x, x]` in [stages.NAME.color]"),
    ("saturation_shift_max", "use `saturation = [1 - x, 1 + x]` in [stages.NAME.color]"),
    ("contrast_scale_max", "use `contrast = [1 - x, 1 + x]` in [stages.NAME.color]"),
    ("color_shift_stddev", "per-channel colour shift is not supported; use `hue`, `saturation`, `brightness`"),
    ("crop", "random crops are not supported offline; use `zoom` and `translate_x`/`translate_y`"),
    ("output_image_channel", "use `output_channels = 1` or `3`"),
];

/// A number (fixed) or `[min, max]` (sampled), checked against `lo..=hi`.
fn param(f: &mut Fields<'_>, table: &Table, key: &str, lo: f64, hi: f64, default: f64, what: &str) -> Param {
    let Some(n) = table.get(key) else { return Param::Fixed(default) };
    let num = |n: &Node| match n.v {
        V::Float(x) => Some(x),
        V::Int(i) => Some(i as f64),
        _ => None,
    };
    let out_of = |f: &mut Fields<'_>, n: &Node, v: f64| {
        f.diags.push(
            Diag::error(format!("`{key}` = {v} is out of range"))
                .at(&n.span, format!("{what} must lie in [{lo}, {hi}]"))
                .hint(format!("give a value or a [min, max] range within [{lo}, {hi}]")),
        );
    };
    match &n.v {
        V::Array(a) if a.len() == 2 => match (num(&a[0]), num(&a[1])) {
            (Some(x), Some(y)) => {
                if x > y {
                    f.diags.push(Diag::error(format!("`{key}` range [{x}, {y}] is reversed")).at(&n.span, "min is larger than max").hint(format!("write [{y}, {x}]")));
                    return Param::Fixed(default);
                }
                for (v, node) in [(x, &a[0]), (y, &a[1])] {
                    if !(lo..=hi).contains(&v) {
                        out_of(f, node, v);
                        return Param::Fixed(default);
                    }
                }
                Param::Range(x, y)
            }
            _ => {
                f.diags.push(type_error(&format!("`{key}`"), "a number or [min, max]", n));
                Param::Fixed(default)
            }
        },
        _ => match num(n) {
            Some(v) if (lo..=hi).contains(&v) => Param::Fixed(v),
            Some(v) => {
                out_of(f, n, v);
                Param::Fixed(default)
            }
            None => {
                f.diags.push(type_error(&format!("`{key}`"), "a number or [min, max]", n));
                Param::Fixed(default)
            }
        },
    }
}

/// The `spatial`, `color` and `blur` tables of a stage (`augment`, or a detection `train`'s
/// online augmentation) as an [`AugmentSpec`] with the other fields at their defaults;
/// problems go to `f.diags`.
pub fn parse_tables(f: &mut Fields<'_>, stage: &str) -> AugmentSpec {
        let empty = Table::default();
        let spatial = f.table("spatial").unwrap_or(&empty);
        let color = f.table("color").unwrap_or(&empty);
        let blur = f.table("blur").unwrap_or(&empty);
        check_keys(f, spatial, &names(SPATIAL), &format!("stages.{stage}.spatial"));
        check_keys(f, color, &names(COLOR), &format!("stages.{stage}.color"));
        check_keys(f, blur, &names(BLUR), &format!("stages.{stage}.blur"));
        let radians = match spatial.get("rotation_units") {
            None => false,
            Some(Node { v: V::Str(s), .. }) if s == "degrees" => false,
            Some(Node { v: V::Str(s), .. }) if s == "radians" => true,
            Some(n) => {
                f.diags.push(Diag::error("`rotation_units` must be \"degrees\" or \"radians\"").at(&n.span, "unknown unit"));
                false
            }
        };
        let (rlo, rhi) = if radians { (-std::f64::consts::PI, std::f64::consts::PI) } else { (-180.0, 180.0) };
        let rot = param(f, spatial, "rotation", rlo, rhi, 0.0, "rotation");
        let rotation = if radians {
            rot
        } else {
            match rot {
                Param::Fixed(v) => Param::Fixed(v.to_radians()),
                Param::Range(a, b) => Param::Range(a.to_radians(), b.to_radians()),
            }
        };
        let prob = |f: &mut Fields<'_>, key: &str| match param(f, spatial, key, 0.0, 1.0, 0.0, "a probability") {
            Param::Fixed(v) => v,
            Param::Range(_, _) => {
                if let Some(n) = spatial.get(key) {
                    f.diags.push(Diag::error(format!("`{key}` is a probability, not a range")).at(&n.span, "expected one number in [0, 1]"));
                }
                0.0
            }
        };
        let mut spec = AugmentSpec {
            rotation,
            shear_x: param(f, spatial, "shear_x", -1.0, 1.0, 0.0, "a shear ratio"),
            shear_y: param(f, spatial, "shear_y", -1.0, 1.0, 0.0, "a shear ratio"),
            translate_x: param(f, spatial, "translate_x", -16384.0, 16384.0, 0.0, "a translation in pixels"),
            translate_y: param(f, spatial, "translate_y", -16384.0, 16384.0, 0.0, "a translation in pixels"),
            flip_horizontal: prob(f, "flip_horizontal"),
            flip_vertical: prob(f, "flip_vertical"),
            zoom: param(f, spatial, "zoom", 0.05, 20.0, 1.0, "a zoom factor"),
            hue: param(f, color, "hue", -180.0, 180.0, 0.0, "a hue rotation in degrees"),
            saturation: param(f, color, "saturation", 0.0, 10.0, 1.0, "a saturation factor"),
            contrast: param(f, color, "contrast", 0.0, 10.0, 1.0, "a contrast factor"),
            contrast_center: match param(f, color, "contrast_center", 0.0, 255.0, 127.5, "a level") {
                Param::Fixed(v) => v,
                Param::Range(a, _) => a,
            },
            brightness: param(f, color, "brightness", -255.0, 255.0, 0.0, "an offset in levels"),
            blur_std: param(f, blur, "std", 0.0, 50.0, 0.0, "a standard deviation in pixels"),
            blur_size: 5,
            ..AugmentSpec::default()
        };
        if let Some(n) = blur.get("size") {
            match n.v {
                V::Int(s) if s >= 1 && s % 2 == 1 && s <= 101 => spec.blur_size = s as u32,
                _ => f.diags.push(Diag::error("blur `size` must be an odd integer between 1 and 101").at(&n.span, "invalid kernel size")),
            }
        }
        spec
}

fn check_keys(f: &mut Fields<'_>, table: &Table, known: &[&str], section: &str) {
    for (k, _) in &table.entries {
        if known.contains(&k.name.as_str()) {
            continue;
        }
        let hint = if let Some((_, h)) = TAO_KEYS.iter().find(|(t, _)| *t == k.name) {
            format!("`{}` is a TAO spec key taoflow does not take: {h}", k.name)
        } else {
            match did_you_mean(&k.name, known.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("keys of `{section}`: {}", known.join(", ")),
            }
        };
        f.diags.push(Diag::error(format!("unknown key `{}` in `{section}`", k.name)).at(&k.span, "not supported").hint(hint));
    }
}

fn pparam(p: &Param) -> PVal {
    match *p {
        Param::Fixed(v) => PVal::Float(Float(v)),
        Param::Range(a, b) => PVal::Array(vec![PVal::Float(Float(a)), PVal::Float(Float(b))]),
    }
}

impl StageKind for Augment {
    fn name(&self) -> &'static str {
        "augment"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "write augmented copies of a dataset (spatial, colour, blur), boxes following"
    }
    fn spec(&self) -> Vec<Key> {
        SPEC.to_vec()
    }

    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef> {
        let before = f.diags.0.len();
        // A TAO key at the top level gets the same help as inside the tables.
        let mut tao: Vec<(String, crate::diag::Span, &str)> = Vec::new();
        for (k, _) in &f.table.entries {
            if let Some((_, h)) = TAO_KEYS.iter().find(|(t, _)| *t == k.name) {
                tao.push((k.name.clone(), k.span.clone(), h));
            }
        }
        for (name, span, h) in tao {
            f.mark(&name);
            f.diags.push(Diag::error(format!("`{name}` is a TAO spec key taoflow does not take")).at(&span, "not supported").hint(h.to_string()));
        }
        let dataset = f.required_str("dataset", "dataset = \"convert\" (a stage whose output is a dataset)");
        let cpu_fallback = f.bool("cpu_fallback").map(|(b, _)| b).unwrap_or(false);
        let copies = f.uint("copies").map(|(v, _)| v as u32).unwrap_or(1);
        let keep_originals = f.bool("keep_originals").map(|(b, _)| b).unwrap_or(true);
        if copies == 0 && !keep_originals
            && let Some(n) = f.table.get("copies")
        {
            f.diags.push(Diag::error("no copies and no originals: the output would be empty").at(&n.span, "copies = 0").hint("set copies ≥ 1 or keep_originals = true"));
        }
        let ow = f.uint("output_width");
        let oh = f.uint("output_height");
        let output = match (ow, oh) {
            (None, None) => None,
            (Some((w, wn)), Some((h, hn))) => {
                for (v, n, k) in [(w, wn, "output_width"), (h, hn, "output_height")] {
                    if v == 0 || v > 16384 {
                        f.diags.push(Diag::error(format!("`{k}` must be between 1 and 16384, not {v}")).at(&n.span, "invalid output size"));
                    }
                }
                Some((w as u32, h as u32))
            }
            (Some((_, n)), None) | (None, Some((_, n))) => {
                f.diags.push(Diag::error("`output_width` and `output_height` go together").at(&n.span, "only one of them").hint("give both, or neither to keep each image's size"));
                None
            }
        };
        let output_channels = match f.uint("output_channels") {
            None => 3,
            Some((c @ (1 | 3), _)) => c as u32,
            Some((c, n)) => {
                f.diags.push(Diag::error(format!("`output_channels` must be 1 or 3, not {c}")).at(&n.span, "unsupported channel count"));
                3
            }
        };
        let min_box_size = f.float("min_box_size").map(|(v, _)| v).unwrap_or(2.0);
        let splits = f.str_list("splits").map(|v| v.into_iter().map(|(s, _)| s).collect()).unwrap_or_else(|| vec!["train".to_string()]);
        let shard_max_mb = f.uint("shard_max_mb").map(|(v, _)| v.max(1)).unwrap_or(256);
        let mut spec = parse_tables(f, stage);
        spec.output = output;
        spec.output_channels = output_channels;
        spec.copies = copies;
        spec.keep_originals = keep_originals;
        spec.min_box_size = min_box_size;
        spec.splits = splits;
        if f.diags.0.len() > before {
            return None;
        }
        let (dataset, dnode) = dataset?;
        let mut params: BTreeMap<String, PVal> = BTreeMap::new();
        for (k, v) in [
            ("rotation_rad", &spec.rotation),
            ("shear_x", &spec.shear_x),
            ("shear_y", &spec.shear_y),
            ("translate_x", &spec.translate_x),
            ("translate_y", &spec.translate_y),
            ("zoom", &spec.zoom),
            ("hue", &spec.hue),
            ("saturation", &spec.saturation),
            ("contrast", &spec.contrast),
            ("brightness", &spec.brightness),
            ("blur_std", &spec.blur_std),
        ] {
            params.insert(k.into(), pparam(v));
        }
        params.insert("flip_horizontal".into(), PVal::Float(Float(spec.flip_horizontal)));
        params.insert("flip_vertical".into(), PVal::Float(Float(spec.flip_vertical)));
        params.insert("contrast_center".into(), PVal::Float(Float(spec.contrast_center)));
        params.insert("blur_size".into(), PVal::Int(spec.blur_size as i64));
        params.insert("output".into(), match spec.output {
            Some((w, h)) => PVal::Array(vec![PVal::Int(w as i64), PVal::Int(h as i64)]),
            None => PVal::Str("source".into()),
        });
        params.insert("copies".into(), PVal::Int(spec.copies as i64));
        params.insert("output_channels".into(), PVal::Int(spec.output_channels as i64));
        params.insert("keep_originals".into(), PVal::Bool(spec.keep_originals));
        params.insert("min_box_size".into(), PVal::Float(Float(spec.min_box_size)));
        params.insert("splits".into(), PVal::Array(spec.splits.iter().map(|s| PVal::Str(s.clone())).collect()));
        params.insert("shard_max_mb".into(), PVal::Int(shard_max_mb as i64));
        Some(StageDef {
            params,
            inputs: vec![InputDecl { label: "dataset".into(), raw: dataset, span: dnode.span.clone() }],
            outputs: vec![OutputDecl { name: "dataset".into(), path: PathBuf::from("outputs").join(stage).join("dataset"), span: dnode.span.clone(), owned: true }],
            metrics: None,
            gpus: 0,
            description: None,
            typed: Arc::new(Parsed { spec, shard_max_bytes: shard_max_mb << 20, cpu_fallback }),
        })
    }

    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>> {
        Box::pin(async move {
            let parsed = ctx.def.typed.downcast_ref::<Parsed>().ok_or_else(|| StageError::Failed("internal: augment stage data missing".into()))?;
            let spec = parsed.spec.clone();
            let max = parsed.shard_max_bytes;
            let input = ctx.inputs.get("dataset").cloned().ok_or_else(|| StageError::Failed("internal: no dataset input".into()))?;
            let out = ctx.outputs["dataset"].clone();
            let seed = ctx.seed as u64;
            let log = ctx.log.clone();
            let gpu = ctx.gpus.first().copied();
            let cache = ctx.kernel_cache.clone();
            let fallback = parsed.cpu_fallback;
            tokio::task::spawn_blocking(move || -> Result<Vec<String>, StageError> {
                let mut notes = Vec::new();
                // With a GPU leased (`gpus = 1`), the fused NVRTC kernel warps; else the CPU.
                let kernel = match gpu {
                    None => None,
                    Some(ordinal) => match crate::cuda::AugmentKernel::new(ordinal as usize, Some(&cache)) {
                        Ok(k) => {
                            notes.push(format!("augment kernel on {} ({}, PTX {})", k.device_name, k.arch, if k.cached_ptx { "from the cache" } else { "compiled" }));
                            Some(k)
                        }
                        Err(e) if fallback => {
                            notes.push(format!("warning: GPU augment unavailable, using the CPU (cpu_fallback = true): {e}"));
                            None
                        }
                        Err(e) => return Err(StageError::Failed(format!("{e}\n  = hint: set `cpu_fallback = true` to run on the CPU when the GPU path fails, or `gpus = 0`"))),
                    },
                };
                let gpu_warper = |jobs: &[(&image::RgbImage, crate::data::augment::Draw, (u32, u32))]| kernel.as_ref().expect("kernel").warp_color(jobs);
                let warper: &crate::data::augment::Warper<'_> = if kernel.is_some() { &gpu_warper } else { &crate::data::augment::cpu_warper };
                let device = if kernel.is_some() { "the GPU" } else { "the CPU" };
                crate::stages::write_dir_atomically(&out, |tmp| {
                    let (_, rep) = augment_dataset(&input, tmp, &spec, seed, max, warper).map_err(|e| StageError::Failed(e.to_string()))?;
                    let line = format!(
                        "augmented on {device}: {} -> {} images; boxes {} -> {} ({} dropped as too small or outside)",
                        rep.images_in, rep.images_out, rep.boxes_in, rep.boxes_out, rep.boxes_dropped
                    );
                    notes.push(line);
                    let _ = std::fs::write(&log, format!("{}\n", notes.join("\n")));
                    Ok(notes)
                })
            })
            .await
            .map_err(|e| StageError::Failed(format!("augment crashed: {e}")))?
        })
    }
}
