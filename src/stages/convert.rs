//! `convert`: a user's images and labels in, a WebDataset-style dataset artifact out.
//!
//! ```toml
//! [stages.convert]
//! kind = "convert"
//! format = "image_folder"          # idx | kitti | segmentation | coco | voc | csv
//! source = "data/flowers"          # a folder (hashed as the stage's input)
//! class_map = { Daisy = "daisy" }  # source -> target, case-insensitive
//! val_fraction = 0.2               # stratified per class, seeded by the pipeline seed
//! on_bad_sample = "skip"           # or "error" (default)
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::schema::{Key, Ty, key, names};
use crate::config::Fields;
use crate::data::convert::{convert, ConvertSpec, OnBad, SplitSpec, TileSpec};
use crate::data::formats::{Format, SourceOptions};
use crate::diag::{did_you_mean, Diag};
use crate::stages::{InputDecl, OutputDecl, RunCtx, StageDef, StageError, StageKind};
use crate::value::{Float, PVal, V};

#[derive(Debug)]
pub struct Convert;

#[derive(Debug)]
struct Parsed {
    spec: ConvertSpec,
}

const SPEC: &[Key] = &[
    key("format", Ty::Str, "The dataset's layout (README: Datasets).").one_of(crate::data::formats::Format::NAMES).required(),
    key("source", Ty::Str, "Where the data is: a folder or file relative to the pipeline's folder, or a stage's output.").required(),
    key("classes", Ty::StrList, "Class names: the order of classes (image_folder), the names of idx label numbers."),
    key("class_map", Ty::StrMap, "Rename classes, case-insensitive: { Car = \"vehicle\", Van = \"vehicle\" }."),
    key("ignore_classes", Ty::StrList, "Labels of these classes are dropped silently (KITTI: DontCare by default)."),
    key("val_fraction", Ty::Float, "Share of each class held out for validation, seeded (default 0.2; 0 with split_lists).").range(0.0, 1.0).below(1.0),
    key("test_fraction", Ty::Float, "Share of each class held out for testing.").def("0.0").range(0.0, 1.0).below(1.0),
    key("split_lists", Ty::StrMap, "Files listing each split's samples (keys or paths, one a line): { train = \"train.txt\", val = \"val.txt\" }; needs train."),
    key("min_size", Ty::Int, "Images whose shorter side is smaller (pixels) are dropped and counted.").def("1").min(0.0),
    key("max_size", Ty::Int, "Images whose longer side is larger (pixels) are dropped and counted (default: no limit).").min(0.0),
    key("on_bad_sample", Ty::Str, "error: the first unreadable sample fails the stage; skip: it is counted and left out.").def("\"error\"").one_of(&["error", "skip"]),
    key("shard_max_mb", Ty::Int, "Largest shard written, in MiB.").def("256").min(1.0),
    key("shard_max_samples", Ty::Int, "Most samples in one shard.").def("10000").min(1.0),
    key("images", Ty::Str, "idx: the images file (gzip or not)."),
    key("labels", Ty::Str, "idx: the labels file."),
    key("val_images", Ty::Str, "idx: a given validation split's images."),
    key("val_labels", Ty::Str, "idx: a given validation split's labels."),
    key("annotations", Ty::Str, "coco, csv: the annotation file."),
    key("images_dir", Ty::Str, "kitti, segmentation, coco, voc, csv: the images' folder inside source."),
    key("labels_dir", Ty::Str, "kitti, voc: the labels' folder inside source."),
    key("masks_dir", Ty::Str, "segmentation: the masks' folder inside source."),
    key("tile", Ty::Table(TILE), "Detection formats: cut large images into tiles, boxes clipped to each tile."),
];

/// `tile = { … }` of a convert stage.
const TILE: &[Key] = &[
    key("size", Ty::Size, "Tile size in pixels: one number (square) or [width, height].").range(16.0, 65536.0).required(),
    key("overlap", Ty::Int, "Pixels shared by neighbouring tiles (less than the tile).").def("0").min(0.0),
    key("min_visible", Ty::Float, "A box is kept in a tile when at least this share of it lies inside.").def("0.5").above(0.0).max(1.0),
    key("keep_empty", Ty::Bool, "Keep tiles without boxes.").def("true"),
    key("edge", Ty::Str, "The last tile of a row or column: shift it back flush with the image (it may nearly repeat the one before), pad it with black, or drop what does not fill a tile.").def("\"shift\"").one_of(crate::data::convert::TileEdge::NAMES),
];

/// `tile = { size = 416 | [w, h], overlap = 0, min_visible = 0.5, keep_empty = true }`.
fn parse_tile(f: &mut Fields<'_>, stage: &str) -> Option<TileSpec> {
    let t = f.table("tile")?;
    let ctx = format!("`tile` of stage `{stage}`");
    let mut tf = Fields::new(t, &ctx, &mut *f.diags);
    let size = match tf.get("size") {
        None => {
            tf.missing("size", "size = 416 (or [width, height])");
            None
        }
        Some(n) => {
            let as_px = |n: &crate::value::Node| match &n.v {
                V::Int(i) if *i >= 16 && *i <= 1 << 16 => Some(*i as u32),
                _ => None,
            };
            let v = match &n.v {
                V::Array(a) if a.len() == 2 => as_px(&a[0]).zip(as_px(&a[1])).map(|(w, h)| [w, h]),
                _ => as_px(n).map(|p| [p, p]),
            };
            if v.is_none() {
                tf.diags.push(Diag::error(format!("`size` in {ctx} must be a whole number of pixels (16 to 65536) or [width, height]")).at(&n.span, "not a tile size").hint("size = 416"));
            }
            v
        }
    };
    let overlap = tf.uint("overlap").map_or(0, |(v, _)| v as u32);
    let min_visible = match tf.float("min_visible") {
        Some((v, n)) if !(v > 0.0 && v <= 1.0) => {
            tf.diags.push(Diag::error(format!("`min_visible` in {ctx} is the share of a box that must lie inside a tile, in (0, 1]; not {v}")).at(&n.span, "out of range"));
            0.5
        }
        Some((v, _)) => v as f32,
        None => 0.5,
    };
    let keep_empty = tf.bool("keep_empty").is_none_or(|(b, _)| b);
    let edge = crate::data::convert::TileEdge::parse(&tf.choice("edge", crate::data::convert::TileEdge::NAMES, "shift")).unwrap_or_default();
    if let (Some(sz), Some(n)) = (size, t.get("overlap"))
        && overlap >= sz[0].min(sz[1])
    {
        tf.diags.push(Diag::error(format!("`overlap` ({overlap}) in {ctx} must be smaller than the tile")).at(&n.span, "too large"));
    }
    tf.finish(&names(TILE));
    size.map(|size| TileSpec { size, overlap, min_visible, keep_empty, edge })
}


impl StageKind for Convert {
    fn name(&self) -> &'static str {
        "convert"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "read a dataset (image folders, MNIST idx, KITTI, COCO, VOC, CSV, masks) into shards with splits"
    }
    fn spec(&self) -> Vec<Key> {
        SPEC.to_vec()
    }

    fn parse(&self, f: &mut Fields<'_>, stage: &str) -> Option<StageDef> {
        let before = f.diags.0.len();
        let format = match f.str("format") {
            Some((s, node)) => match Format::parse(&s) {
                Some(fm) => Some(fm),
                None => {
                    f.diags.push(
                        Diag::error(format!("unknown dataset format `{s}` in stage `{stage}`")).at(&node.span, "unknown format").hint(
                            match did_you_mean(&s, Format::NAMES.iter().copied()) {
                                Some(m) => format!("did you mean `{m}`?"),
                                None => format!("formats: {}", Format::NAMES.join(", ")),
                            },
                        ),
                    );
                    None
                }
            },
            None => {
                if f.table.get("format").is_none() {
                    f.missing("format", &format!("format = \"image_folder\" (one of {})", Format::NAMES.join(", ")));
                }
                None
            }
        };
        let source = f.required_str("source", "source = \"data/images\"");
        let classes = f.str_list("classes").map(|v| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>());
        let mut class_map = Vec::new();
        if let Some(t) = f.table("class_map") {
            for (k, v) in &t.entries {
                match &v.v {
                    V::Str(s) => class_map.push((k.name.clone(), s.clone())),
                    _ => f.diags.push(crate::config::type_error(&format!("`class_map.{}`", k.name), "a string (the target class)", v)),
                }
            }
        }
        let ignore_classes = f.str_list("ignore_classes").map(|v| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>()).unwrap_or_default();
        let fraction = |f: &mut Fields<'_>, key: &str, default: f64| -> f64 {
            match f.float(key) {
                Some((v, n)) if !(0.0..1.0).contains(&v) => {
                    f.diags.push(Diag::error(format!("`{key}` must be at least 0 and below 1, not {v}")).at(&n.span, "out of range").hint("e.g. 0.2 keeps a fifth of each class for this split"));
                    default
                }
                Some((v, _)) => v,
                None => default,
            }
        };
        let has_lists = f.table.get("split_lists").is_some();
        let val = fraction(f, "val_fraction", if has_lists { 0.0 } else { 0.2 });
        let test = fraction(f, "test_fraction", 0.0);
        if val + test >= 1.0
            && let Some(n) = f.table.get("test_fraction").or(f.table.get("val_fraction"))
        {
            f.diags.push(Diag::error("`val_fraction` + `test_fraction` must stay below 1").at(&n.span, "nothing would be left to train on"));
        }
        let mut lists = BTreeMap::new();
        if let Some(t) = f.table("split_lists") {
            for (k, v) in &t.entries {
                match &v.v {
                    V::Str(s) => {
                        lists.insert(k.name.clone(), s.clone());
                    }
                    _ => f.diags.push(crate::config::type_error(&format!("`split_lists.{}`", k.name), "a path string", v)),
                }
            }
            if !lists.contains_key("train")
                && let Some(n) = f.table.get("split_lists")
            {
                f.diags.push(Diag::error("`split_lists` needs a `train` list").at(&n.span, "no `train` here").hint("split_lists = { train = \"train.txt\", val = \"val.txt\" }"));
            }
        }
        let min_size = f.uint("min_size").map(|(v, _)| v as u32).unwrap_or(1);
        let max_size = f.uint("max_size").map(|(v, _)| v as u32).unwrap_or(u32::MAX);
        if min_size > max_size
            && let Some(n) = f.table.get("max_size")
        {
            f.diags.push(Diag::error("`max_size` is smaller than `min_size`").at(&n.span, "no image could pass"));
        }
        let on_bad = match f.str("on_bad_sample") {
            Some((s, n)) => match s.as_str() {
                "error" => OnBad::Error,
                "skip" => OnBad::Skip,
                _ => {
                    f.diags.push(Diag::error(format!("`on_bad_sample` must be \"error\" or \"skip\", not \"{s}\"")).at(&n.span, "unknown value"));
                    OnBad::Error
                }
            },
            None => OnBad::Error,
        };
        let shard_max_mb = f.positive_uint("shard_max_mb", 256);
        let shard_max_samples = f.positive_uint("shard_max_samples", 10_000) as usize;
        let tile = parse_tile(f, stage);
        if let (Some(fm), Some(k)) = (format, f.table.get_key("tile"))
            && fm.task() != "detection"
        {
            f.diags.push(Diag::error(format!("`tile` does not apply to format `{}`", fm.name())).at(&k.span, "detection formats only").hint("tiling cuts images and their boxes: kitti, coco, voc, csv"));
        }
        let opt = |f: &mut Fields<'_>, key: &str| f.str(key).map(|(s, _)| s);
        let options = SourceOptions {
            idx_images: opt(f, "images"),
            idx_labels: opt(f, "labels"),
            idx_val_images: opt(f, "val_images"),
            idx_val_labels: opt(f, "val_labels"),
            coco_annotations: opt(f, "annotations"),
            images_dir: opt(f, "images_dir"),
            labels_dir: opt(f, "labels_dir"),
            masks_dir: opt(f, "masks_dir"),
        };
        if let Some(fm) = format {
            let only: &[(&str, &[Format])] = &[
                ("images", &[Format::Idx]),
                ("labels", &[Format::Idx]),
                ("val_images", &[Format::Idx]),
                ("val_labels", &[Format::Idx]),
                ("annotations", &[Format::Coco, Format::Csv]),
                ("images_dir", &[Format::Kitti, Format::Segmentation, Format::Coco, Format::Voc, Format::Csv]),
                ("labels_dir", &[Format::Kitti, Format::Voc]),
                ("masks_dir", &[Format::Segmentation]),
            ];
            for (key, fmts) in only {
                if !fmts.contains(&fm)
                    && let Some(k) = f.table.get_key(key)
                {
                    f.diags.push(
                        Diag::error(format!("`{key}` does not apply to format `{}`", fm.name()))
                            .at(&k.span, "not used by this format")
                            .hint(format!("`{key}` is for: {}", fmts.iter().map(|x| x.name()).collect::<Vec<_>>().join(", "))),
                    );
                }
            }
        }
        if f.diags.0.len() > before {
            return None;
        }
        let (source, source_node) = source?;
        let format = format?;
        let mut params: BTreeMap<String, PVal> = BTreeMap::new();
        let s = |x: &str| PVal::Str(x.to_string());
        params.insert("format".into(), s(format.name()));
        params.insert("classes".into(), PVal::Array(classes.iter().flatten().map(|c| s(c)).collect()));
        params.insert("class_map".into(), PVal::Array(class_map.iter().map(|(a, b)| PVal::Array(vec![s(a), s(b)])).collect()));
        params.insert("ignore_classes".into(), PVal::Array(ignore_classes.iter().map(|c| s(c)).collect()));
        params.insert("val_fraction".into(), PVal::Float(Float(val)));
        params.insert("test_fraction".into(), PVal::Float(Float(test)));
        params.insert("split_lists".into(), PVal::Table(lists.iter().map(|(k, v)| (k.clone(), s(v))).collect()));
        params.insert("min_size".into(), PVal::Int(min_size as i64));
        params.insert("max_size".into(), PVal::Int(max_size as i64));
        params.insert("on_bad_sample".into(), s(if on_bad == OnBad::Skip { "skip" } else { "error" }));
        params.insert("shard_max_mb".into(), PVal::Int(shard_max_mb as i64));
        params.insert("shard_max_samples".into(), PVal::Int(shard_max_samples as i64));
        for (k, v) in [
            ("images", &options.idx_images),
            ("labels", &options.idx_labels),
            ("val_images", &options.idx_val_images),
            ("val_labels", &options.idx_val_labels),
            ("annotations", &options.coco_annotations),
            ("images_dir", &options.images_dir),
            ("labels_dir", &options.labels_dir),
            ("masks_dir", &options.masks_dir),
        ] {
            if let Some(v) = v {
                params.insert(k.into(), s(v));
            }
        }
        if let Some(t) = &tile {
            let mut m = BTreeMap::new();
            m.insert("size".to_string(), PVal::Array(vec![PVal::Int(t.size[0] as i64), PVal::Int(t.size[1] as i64)]));
            m.insert("overlap".to_string(), PVal::Int(t.overlap as i64));
            m.insert("min_visible".to_string(), PVal::Float(Float(t.min_visible as f64)));
            m.insert("keep_empty".to_string(), PVal::Bool(t.keep_empty));
            // (Written only when not the default, so that existing stage keys stay.)
            if t.edge != crate::data::convert::TileEdge::Shift {
                m.insert("edge".to_string(), PVal::Str(t.edge.name().into()));
            }
            params.insert("tile".into(), PVal::Table(m));
        }
        let split = if lists.is_empty() {
            SplitSpec::Fraction { val, test }
        } else {
            SplitSpec::Lists(lists.into_iter().map(|(k, v)| (k, PathBuf::from(v))).collect())
        };
        let spec = ConvertSpec {
            format,
            source: PathBuf::new(),
            options,
            classes,
            class_map,
            ignore_classes,
            split,
            min_size,
            max_size,
            on_bad,
            shard_max_bytes: shard_max_mb << 20,
            shard_max_samples,
            tile,
            seed: 0,
            cancel: None,
            progress: None,
        };
        let out = OutputDecl { name: "dataset".into(), path: PathBuf::from("outputs").join(stage).join("dataset"), span: source_node.span.clone(), owned: true };
        Some(StageDef {
            params,
            inputs: vec![InputDecl { label: "source".into(), raw: source, span: source_node.span.clone() }],
            outputs: vec![out],
            metrics: None,
            gpus: 0,
            description: None,
            typed: Arc::new(Parsed { spec }),
        })
    }

    fn run<'a>(&'a self, ctx: &'a RunCtx) -> Pin<Box<dyn Future<Output = Result<Vec<String>, StageError>> + Send + 'a>> {
        Box::pin(async move {
            let parsed = ctx.def.typed.downcast_ref::<Parsed>().ok_or_else(|| StageError::Failed("internal: convert stage data missing".into()))?;
            let mut spec = parsed.spec.clone();
            spec.source = ctx.inputs.get("source").cloned().ok_or_else(|| StageError::Failed("internal: no source input".into()))?;
            if let SplitSpec::Lists(l) = &mut spec.split {
                for p in l.values_mut() {
                    *p = spec.source.join(&*p);
                }
            }
            spec.seed = ctx.seed as u64;
            let flag = Arc::new(AtomicBool::new(false));
            spec.cancel = Some(Arc::clone(&flag));
            // Long conversions say how far they are (plain lines without a terminal).
            let progress = ctx.progress.clone();
            spec.progress = Some(crate::data::convert::ProgressCallback(Arc::new(move |done, total, split: &str| progress.update(done, total, &format!("{done}/{total} samples (writing `{split}`)")))));
            let out = ctx.outputs["dataset"].clone();
            let log = ctx.log.clone();
            let mut cancel = ctx.cancel.clone();
            let watcher = tokio::spawn(async move {
                while !*cancel.borrow() {
                    if cancel.changed().await.is_err() {
                        return;
                    }
                }
                flag.store(true, Ordering::SeqCst);
            });
            let res = tokio::task::spawn_blocking(move || -> Result<Vec<String>, StageError> {
                let report = crate::stages::write_dir_atomically(&out, |tmp| {
                    convert(&spec, tmp).map_err(|e| match e {
                        crate::data::DataError::Invalid(m) if m == "interrupted" => StageError::Interrupted,
                        other => StageError::Failed(other.to_string()),
                    })
                })?;
                let m = &report.manifest;
                let mut summary = format!("{} dataset, {} classes:", m.task, m.classes.len());
                for (name, s) in &m.splits {
                    summary.push_str(&format!(" {name} {} in {} shard(s);", s.count, s.shards.len()));
                }
                let _ = std::fs::write(&log, format!("{summary}\n{}\n", report.notes.join("\n")));
                let mut notes = vec![summary.trim_end_matches(';').to_string()];
                notes.extend(report.notes);
                Ok(notes)
            })
            .await
            .map_err(|e| StageError::Failed(format!("convert crashed: {e}")));
            watcher.abort();
            res?
        })
    }
}
