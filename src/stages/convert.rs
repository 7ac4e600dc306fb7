//! `convert`: a user's images and labels in, a WebDataset-style dataset artifact out.
//!
//! ```toml
//! [stages.convert]
//! kind = "convert"
//! format = "image_folder"          # idx | kitti | segmentation | coco
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

use crate::config::Fields;
use crate::data::convert::{convert, ConvertSpec, OnBad, SplitSpec};
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

const KEYS: &[&str] = &[
    "format",
    "source",
    "classes",
    "class_map",
    "ignore_classes",
    "val_fraction",
    "test_fraction",
    "split_lists",
    "min_size",
    "max_size",
    "on_bad_sample",
    "shard_max_mb",
    "shard_max_samples",
    "images",
    "labels",
    "val_images",
    "val_labels",
    "annotations",
    "images_dir",
    "labels_dir",
    "masks_dir",
];


impl StageKind for Convert {
    fn name(&self) -> &'static str {
        "convert"
    }
    fn version(&self) -> u32 {
        1
    }
    fn keys(&self) -> &'static [&'static str] {
        KEYS
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
                ("annotations", &[Format::Coco]),
                ("images_dir", &[Format::Kitti, Format::Segmentation, Format::Coco]),
                ("labels_dir", &[Format::Kitti]),
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
            seed: 0,
            cancel: None,
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
