//! The `convert` stage's work: items from a source format -> validated, split, shuffled
//! samples -> tar shards and `dataset.json`. The same input and options give the same bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use image::DynamicImage;
use rayon::prelude::*;

use super::formats::{self, Bad, Format, ImageSource, Item, ItemLabel, SourceOptions};
use super::image_io;
use super::rng::Rng;
use super::shards::{RawSample, ShardWriter};
use super::{DataError, DatasetManifest, DetectionTarget, ImageStats, MinMaxMean, Skipped, SplitInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBad {
    Error,
    Skip,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SplitSpec {
    /// Stratified per class, seeded.
    Fraction { val: f64, test: f64 },
    /// Split name -> file listing the keys (or relative paths) of its samples.
    Lists(BTreeMap<String, PathBuf>),
}

/// Tiling of large images: tiles of `size` (width, height) pixels, neighbours overlapping by
/// `overlap`, the last row and column aligned to the image's edge; a box is kept, cut at the
/// tile's edges, when at least `min_visible` of its area lies inside the tile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileSpec {
    pub size: [u32; 2],
    pub overlap: u32,
    pub min_visible: f32,
    /// Keep tiles without boxes (background examples).
    pub keep_empty: bool,
    /// Where the last tile of a row or column goes when the image is not a whole number of
    /// strides long.
    pub edge: TileEdge,
}

/// The last tile along an axis: `Shift` moves it back to end flush with the image (every
/// tile whole, but it may nearly repeat the one before: 417 px in tiles of 416 gives tiles
/// at 0 and 1); `Pad` keeps the stride and fills what lies past the image with black (every
/// pixel once per stride, tiles the same size); `Drop` leaves out what does not fill a whole
/// tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TileEdge {
    #[default]
    Shift,
    Pad,
    Drop,
}

impl TileEdge {
    pub const NAMES: &'static [&'static str] = &["shift", "pad", "drop"];

    pub fn parse(s: &str) -> Option<TileEdge> {
        match s {
            "shift" => Some(TileEdge::Shift),
            "pad" => Some(TileEdge::Pad),
            "drop" => Some(TileEdge::Drop),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TileEdge::Shift => "shift",
            TileEdge::Pad => "pad",
            TileEdge::Drop => "drop",
        }
    }

    /// Tile origins along an axis of `len` pixels for tiles of `tile` overlapping by `overlap`.
    pub fn starts(self, len: u32, tile: u32, overlap: u32) -> Vec<u32> {
        let stride = (tile - overlap.min(tile - 1)).max(1);
        match self {
            TileEdge::Shift => tile_starts(len, tile, overlap),
            // A tile is worth having when it reaches past the one before it.
            TileEdge::Pad => (0..).map(|i| i * stride).take_while(|&s| s == 0 || s + overlap.min(tile - 1) < len).collect(),
            TileEdge::Drop if len <= tile => vec![0],
            TileEdge::Drop => (0..).map(|i| i * stride).take_while(|&s| s + tile <= len).collect(),
        }
    }
}

/// Tile origins along one axis of `len` pixels: 0, stride, 2·stride, … and the last one
/// flush with the end (one tile of the whole length when it is not longer than a tile).
pub fn tile_starts(len: u32, tile: u32, overlap: u32) -> Vec<u32> {
    if len <= tile {
        return vec![0];
    }
    let stride = (tile - overlap.min(tile - 1)).max(1);
    let mut v: Vec<u32> = (0..).map(|i| i * stride).take_while(|s| s + tile < len).collect();
    v.push(len - tile);
    v.dedup();
    v
}

/// A box `[x1, y1, x2, y2]` cut to the tile at (`tx`, `ty`) of `tw`×`th`, in tile
/// coordinates, or None when less than `min_visible` of it (or nothing) is inside.
pub fn clip_to_tile(b: [f32; 4], tx: u32, ty: u32, tw: u32, th: u32, min_visible: f32) -> Option<[f32; 4]> {
    let (x0, y0, x1, y1) = (tx as f32, ty as f32, (tx + tw) as f32, (ty + th) as f32);
    let c = [b[0].max(x0), b[1].max(y0), b[2].min(x1), b[3].min(y1)];
    if c[2] <= c[0] || c[3] <= c[1] {
        return None;
    }
    let area = (b[2] - b[0]) * (b[3] - b[1]);
    let inside = (c[2] - c[0]) * (c[3] - c[1]);
    if area <= 0.0 || inside / area < min_visible {
        return None;
    }
    Some([c[0] - x0, c[1] - y0, c[2] - x0, c[3] - y0])
}

#[derive(Debug, Clone)]
pub struct ConvertSpec {
    pub format: Format,
    pub source: PathBuf,
    pub options: SourceOptions,
    /// Target class names (and their order); for IDX and segmentation, names by index.
    pub classes: Option<Vec<String>>,
    /// Source class name -> target class name, matched case-insensitively.
    pub class_map: Vec<(String, String)>,
    /// Detection classes dropped without complaint (KITTI's `DontCare`).
    pub ignore_classes: Vec<String>,
    pub split: SplitSpec,
    pub min_size: u32,
    pub max_size: u32,
    pub on_bad: OnBad,
    pub shard_max_bytes: u64,
    pub shard_max_samples: usize,
    /// Cut each image (and its boxes) into fixed-size tiles (detection formats).
    pub tile: Option<TileSpec>,
    pub seed: u64,
    /// Set to stop early (Ctrl-C): `convert` returns `DataError::Invalid("interrupted")`.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Told `(samples done, samples in all, split)` after each chunk of 256 samples.
    pub progress: Option<ProgressCallback>,
}

/// `ConvertSpec::progress`: a callback that can sit in a `Debug`, `Clone` spec.
#[derive(Clone)]
pub struct ProgressCallback(pub std::sync::Arc<dyn Fn(u64, u64, &str) + Send + Sync>);

impl std::fmt::Debug for ProgressCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressCallback")
    }
}

/// What `convert` made, and what the user should hear about.
#[derive(Debug)]
pub struct ConvertReport {
    pub manifest: DatasetManifest,
    pub notes: Vec<String>,
}

const MAX_EXAMPLES: usize = 5;

/// The class of a source name: mapped, ignored or unknown.
enum Mapped {
    To(String),
    Ignore,
    Unknown,
}

struct Classes {
    list: Vec<String>,
    index: HashMap<String, u32>,
    map: HashMap<String, String>,
    ignore: BTreeSet<String>,
    /// Names by index for index-labelled sources (IDX, segmentation).
    by_index: Option<Vec<String>>,
    strict: bool,
}

impl Classes {
    fn map(&self, name: &str) -> Mapped {
        let lower = name.to_lowercase();
        if self.ignore.contains(&lower) {
            return Mapped::Ignore;
        }
        if let Some(t) = self.map.get(&lower) {
            return Mapped::To(t.clone());
        }
        if let Some(c) = self.list.iter().find(|c| c.to_lowercase() == lower) {
            return Mapped::To(c.clone());
        }
        if self.strict { Mapped::Unknown } else { Mapped::To(name.to_string()) }
    }
}

fn index_name(by_index: &Option<Vec<String>>, raw: &str) -> Result<String, String> {
    match by_index {
        None => Ok(raw.to_string()),
        Some(names) => {
            let i: usize = raw.parse().map_err(|_| format!("label `{raw}` is not a class index"))?;
            names.get(i).cloned().ok_or_else(|| format!("label {i} but only {} class name(s) are given in `classes`", names.len()))
        }
    }
}

/// A sample ready for a shard.
struct Processed {
    key: String,
    members: Vec<(String, Vec<u8>)>,
    width: u32,
    height: u32,
    channels: u8,
    encoding: &'static str,
    classes: Vec<String>,
    boxes: Vec<String>,
}

pub fn convert(spec: &ConvertSpec, out: &Path) -> Result<ConvertReport, DataError> {
    if !spec.source.exists() {
        return Err(DataError::Invalid(format!("the source `{}` does not exist", spec.source.display())));
    }
    let mut collected = formats::collect(spec.format, &spec.source, &spec.options)?;
    let mut notes: Vec<String> = Vec::new();
    let mut warnings = std::mem::take(&mut collected.warnings);

    // Duplicate keys would overwrite each other in a shard.
    collected.items.sort_by(|a, b| a.key.cmp(&b.key));
    for w in collected.items.windows(2) {
        if w[0].key == w[1].key {
            return Err(DataError::Invalid(format!(
                "two samples have the same key `{}`: `{}` and `{}`\n  = hint: file names must be unique per folder once the extension is dropped (e.g. `a.png` and `a.jpg` collide); rename one",
                w[0].key, w[0].origin, w[1].origin
            )));
        }
    }

    // Classes.
    let index_based = matches!(spec.format, Format::Idx | Format::Segmentation);
    if spec.format == Format::Segmentation && spec.classes.is_none() {
        // No names given: one class per index that occurs in any mask (255 = ignore).
        let max = collected
            .items
            .par_iter()
            .filter_map(|it| match &it.label {
                ItemLabel::Mask(p) => formats::read_mask(p).ok().and_then(|(_, _, idx)| idx.into_iter().filter(|v| *v != 255).max()),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        collected.source_classes = Some((0..=max).map(|i| format!("class_{i}")).collect());
        warnings.push(format!("no `classes` given: the masks' indices 0..={max} are named class_0 … class_{max}"));
    }
    let by_index = if index_based { spec.classes.clone().or(collected.source_classes.clone()) } else { None };
    let map: HashMap<String, String> = spec.class_map.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect();
    let strict = !spec.class_map.is_empty() || (spec.classes.is_some() && !index_based);
    let mut list: Vec<String> = Vec::new();
    if let (Some(c), false) = (&spec.classes, index_based) {
        list = c.clone();
    } else if !spec.class_map.is_empty() {
        for (_, t) in &spec.class_map {
            if !list.contains(t) {
                list.push(t.clone());
            }
        }
    }
    let mut ignore: BTreeSet<String> = spec.ignore_classes.iter().map(|s| s.to_lowercase()).collect();
    if spec.format == Format::Kitti && spec.ignore_classes.is_empty() {
        ignore.insert("dontcare".into());
    }
    let mut classes = Classes { list, index: HashMap::new(), map, ignore, by_index, strict };
    // Source names that occur, for the "mapped class never occurs" warning.
    let mut seen_source: BTreeSet<String> = BTreeSet::new();
    for it in &collected.items {
        match &it.label {
            ItemLabel::Class(c) => {
                if let Ok(n) = index_name(&classes.by_index, c) {
                    seen_source.insert(n.to_lowercase());
                }
            }
            ItemLabel::Boxes(b) => seen_source.extend(b.iter().map(|(c, _, _)| c.to_lowercase())),
            ItemLabel::Mask(_) => {}
        }
    }
    if spec.format == Format::Segmentation
        && let Some(names) = &classes.by_index {
            seen_source.extend(names.iter().map(|n| n.to_lowercase()));
        }
    for (src, dst) in &spec.class_map {
        if !seen_source.contains(&src.to_lowercase()) && spec.format != Format::Segmentation {
            warnings.push(format!(
                "class_map maps `{src}` -> `{dst}`, but no sample has class `{src}` (classes seen: {})",
                seen_source.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if classes.list.is_empty() {
        // Not given: the mapped names that occur, sorted (index order for index-based sources).
        let mut names: Vec<String> = Vec::new();
        if let (true, Some(by)) = (index_based, &classes.by_index) {
            for n in by {
                if let Mapped::To(t) = classes.map(n)
                    && !names.contains(&t)
                {
                    names.push(t);
                }
            }
        } else {
            let set: BTreeSet<String> = collected
                .items
                .iter()
                .flat_map(|it| match &it.label {
                    ItemLabel::Class(c) => vec![c.clone()],
                    ItemLabel::Boxes(b) => b.iter().map(|(c, _, _)| c.clone()).collect(),
                    ItemLabel::Mask(_) => vec![],
                })
                .filter_map(|c| if let Mapped::To(t) = classes.map(&c) { Some(t) } else { None })
                .collect();
            names = set.into_iter().collect();
        }
        classes.list = names;
    }
    if classes.list.is_empty() {
        return Err(DataError::Invalid("no classes: every label was ignored or unknown\n  = hint: check `classes`, `class_map` and `ignore_classes`".into()));
    }
    classes.index = classes.list.iter().enumerate().map(|(i, c)| (c.clone(), i as u32)).collect();

    // Splits.
    let mut bad: Vec<Bad> = std::mem::take(&mut collected.bad);
    let assignments = assign_splits(spec, &collected.items, &classes, &mut warnings)?;
    if spec.on_bad == OnBad::Error
        && let Some(b) = bad.first()
    {
        return Err(bad_error(b));
    }

    // Process and write, split by split.
    let mut manifest_splits = BTreeMap::new();
    let mut stats = StatsAcc::default();
    let mut filtered = 0;
    let total: u64 = assignments.values().map(|m| m.len() as u64).sum();
    let mut done = 0u64;
    for (split, mut members) in assignments {
        members.sort();
        Rng::for_purpose(spec.seed, &format!("order/{split}")).shuffle(&mut members);
        let mut writer = ShardWriter::new(out, &split, spec.shard_max_bytes, spec.shard_max_samples);
        let mut info = SplitInfo::default();
        for chunk in members.chunks(256) {
            if spec.cancel.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst)) {
                return Err(DataError::Invalid("interrupted".into()));
            }
            let results: Vec<Result<Option<Vec<Processed>>, Bad>> = chunk.par_iter().map(|&i| process(&collected.items[i], spec, &classes)).collect();
            done += chunk.len() as u64;
            if let Some(cb) = &spec.progress {
                (cb.0)(done, total, &split);
            }
            for r in results {
                match r {
                    Ok(Some(ps)) => {
                        for p in ps {
                            writer.write(&RawSample { key: p.key.clone(), members: p.members })?;
                            info.count += 1;
                            for c in p.classes {
                                *info.per_class.entry(c).or_default() += 1;
                            }
                            for c in p.boxes {
                                *info.boxes_per_class.entry(c).or_default() += 1;
                            }
                            stats.add(p.width, p.height, p.channels, p.encoding);
                        }
                    }
                    Ok(None) => filtered += 1,
                    Err(b) => {
                        if spec.on_bad == OnBad::Error {
                            return Err(bad_error(&b));
                        }
                        bad.push(b);
                    }
                }
            }
        }
        info.shards = writer.finish()?;
        if info.count == 0 {
            warnings.push(format!("split `{split}` is empty"));
        }
        manifest_splits.insert(split, info);
    }
    let total: usize = manifest_splits.values().map(|s| s.count).sum();
    if total == 0 {
        return Err(DataError::Invalid(format!(
            "no usable samples in `{}` ({} bad, {filtered} filtered by size)\n  = hint: check the size filters and the messages above",
            spec.source.display(),
            bad.len()
        )));
    }
    bad.sort_by(|a, b| a.origin.cmp(&b.origin));
    let skipped = Skipped { count: bad.len(), examples: bad.iter().take(MAX_EXAMPLES).map(|b| format!("{}: {}", b.origin, b.message)).collect() };
    if skipped.count > 0 {
        notes.push(format!("skipped {} bad sample(s) (on_bad_sample = \"skip\"); first: {}", skipped.count, skipped.examples.join(" | ")));
    }
    if filtered > 0 {
        notes.push(format!("{filtered} sample(s) left out by the size filters"));
    }
    notes.extend(warnings.iter().cloned());
    let manifest = DatasetManifest {
        version: 1,
        task: spec.format.task().to_string(),
        source_format: spec.format.name().to_string(),
        classes: classes.list.clone(),
        splits: manifest_splits,
        image: stats.finish(),
        skipped,
        filtered,
        warnings,
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    bytes.push(b'\n');
    std::fs::write(out.join("dataset.json"), bytes).map_err(|e| DataError::io("cannot write dataset.json", e))?;
    Ok(ConvertReport { manifest, notes })
}

fn bad_error(b: &Bad) -> DataError {
    DataError::Invalid(format!("{}: {}\n  = hint: fix the sample, or set on_bad_sample = \"skip\" to leave bad samples out (they are counted and listed)", b.origin, b.message))
}

/// Split name -> indices of items.
fn assign_splits(spec: &ConvertSpec, items: &[Item], classes: &Classes, warnings: &mut Vec<String>) -> Result<BTreeMap<String, Vec<usize>>, DataError> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut rest: Vec<usize> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match &it.split {
            Some(s) => out.entry(s.clone()).or_default().push(i),
            None => rest.push(i),
        }
    }
    if rest.is_empty() {
        return Ok(out);
    }
    match &spec.split {
        SplitSpec::Fraction { val, test } => {
            // Stratify by (mapped) class; detection by the first box's class.
            let mut strata: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for i in rest {
                let s = match &items[i].label {
                    ItemLabel::Class(c) => index_name(&classes.by_index, c).map(|n| match classes.map(&n) {
                        Mapped::To(t) => t,
                        _ => n,
                    }),
                    ItemLabel::Boxes(b) => Ok(b.first().map(|(c, _, _)| c.to_lowercase()).unwrap_or_default()),
                    ItemLabel::Mask(_) => Ok(String::new()),
                }
                .unwrap_or_default();
                strata.entry(s).or_default().push(i);
            }
            for (name, mut idx) in strata {
                Rng::for_purpose(spec.seed, &format!("split/{name}")).shuffle(&mut idx);
                let n = idx.len();
                let nv = (n as f64 * val).round() as usize;
                let nt = ((n as f64 * test).round() as usize).min(n - nv.min(n));
                let nv = nv.min(n);
                let (v, r) = idx.split_at(nv);
                let (t, tr) = r.split_at(nt);
                out.entry("train".into()).or_default().extend_from_slice(tr);
                if *val > 0.0 {
                    out.entry("val".into()).or_default().extend_from_slice(v);
                }
                if *test > 0.0 {
                    out.entry("test".into()).or_default().extend_from_slice(t);
                }
            }
        }
        SplitSpec::Lists(lists) => {
            let by_key: HashMap<&str, usize> = rest.iter().map(|&i| (items[i].key.as_str(), i)).collect();
            let mut used = vec![false; items.len()];
            for (split, file) in lists {
                let text = std::fs::read_to_string(file).map_err(|e| DataError::io(format!("cannot read the `{split}` list `{}`", file.display()), e))?;
                let mut missing = Vec::new();
                for (ln, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let key = if Path::new(line).extension().is_some() { formats::key_of(Path::new(line)) } else { line.to_string() };
                    match by_key.get(key.as_str()) {
                        Some(&i) if used[i] => {
                            return Err(DataError::Invalid(format!(
                                "{}:{}: sample `{key}` is listed in more than one split\n  = hint: each sample belongs to one split",
                                file.display(),
                                ln + 1
                            )));
                        }
                        Some(&i) => {
                            used[i] = true;
                            out.entry(split.clone()).or_default().push(i);
                        }
                        None => missing.push(format!("{}:{} `{line}`", file.display(), ln + 1)),
                    }
                }
                if !missing.is_empty() {
                    warnings.push(format!("{} listed sample(s) of split `{split}` were not found, e.g. {}", missing.len(), missing[..missing.len().min(3)].join(", ")));
                }
            }
            let unlisted = rest.iter().filter(|&&i| !used[i]).count();
            if unlisted > 0 {
                warnings.push(format!("{unlisted} sample(s) are in no split list and were left out"));
            }
        }
    }
    Ok(out)
}

fn bad(it: &Item, message: impl Into<String>) -> Bad {
    Bad { origin: it.origin.clone(), message: message.into() }
}

/// Read, decode, validate and encode one sample (several with tiling). `Ok(None)`:
/// filtered out by size.
fn process(it: &Item, spec: &ConvertSpec, classes: &Classes) -> Result<Option<Vec<Processed>>, Bad> {
    let (img, bytes, encoding): (DynamicImage, Option<Vec<u8>>, &'static str) = match &it.image {
        ImageSource::File(p) => {
            let bytes = std::fs::read(p).map_err(|e| bad(it, format!("cannot read image: {e}")))?;
            let img = image_io::decode(&bytes).map_err(|m| bad(it, m))?;
            match image_io::sniff(&bytes) {
                Some(image::ImageFormat::Png) => (img, Some(bytes), "png"),
                Some(image::ImageFormat::Jpeg) => (img, Some(bytes), "jpg"),
                _ => (img, None, "png"),
            }
        }
        ImageSource::Raw { data, offset, width, height } => {
            let n = (*width * *height) as usize;
            let px = data[*offset..*offset + n].to_vec();
            let g = image::GrayImage::from_raw(*width, *height, px).ok_or_else(|| bad(it, "bad IDX image size"))?;
            (DynamicImage::ImageLuma8(g), None, "png")
        }
    };
    let (w, h) = (img.width(), img.height());
    if w.min(h) < spec.min_size || w.max(h) > spec.max_size {
        return Ok(None);
    }
    let image_bytes = match bytes {
        Some(b) => b,
        None => image_io::encode_png(&img).map_err(|m| bad(it, m))?,
    };
    let mut members = vec![(encoding.to_string(), image_bytes)];
    let mut present = Vec::new();
    let mut boxes_out = Vec::new();
    match &it.label {
        ItemLabel::Class(raw) => {
            let name = index_name(&classes.by_index, raw).map_err(|m| bad(it, m))?;
            let target = match classes.map(&name) {
                Mapped::To(t) => t,
                Mapped::Ignore => return Err(bad(it, format!("class `{name}` is in `ignore_classes`"))),
                Mapped::Unknown => return Err(unknown_class(it, &name, classes)),
            };
            let id = *classes.index.get(&target).ok_or_else(|| bad(it, format!("class `{target}` is not in `classes`")))?;
            members.push(("cls".into(), id.to_string().into_bytes()));
            present.push(target);
        }
        ItemLabel::Boxes(raw) => {
            let mut boxes = Vec::new();
            for (name, b, origin) in raw {
                let target = match classes.map(name) {
                    Mapped::To(t) => t,
                    Mapped::Ignore => continue,
                    Mapped::Unknown => {
                        let mut e = unknown_class(it, name, classes);
                        e.origin = origin.clone();
                        return Err(e);
                    }
                };
                let Some(&id) = classes.index.get(&target) else {
                    return Err(Bad { origin: origin.clone(), message: format!("class `{target}` is not in `classes`") });
                };
                let bl = formats::check_box(&target, id, *b, w, h).map_err(|m| Bad { origin: origin.clone(), message: m })?;
                boxes_out.push(target.clone());
                if !present.contains(&target) {
                    present.push(target);
                }
                boxes.push(bl);
            }
            if let Some(t) = &spec.tile {
                return Ok(Some(tiles(it, &img, &boxes, t)?));
            }
            let t = DetectionTarget { width: w, height: h, boxes };
            members.push(("json".into(), serde_json::to_vec(&t).expect("target serialises")));
        }
        ItemLabel::Mask(p) => {
            let (mw, mh, idx) = formats::read_mask(p).map_err(|m| Bad { origin: p.display().to_string(), message: m })?;
            if (mw, mh) != (w, h) {
                return Err(Bad { origin: p.display().to_string(), message: format!("mask is {mw}x{mh} but its image `{}` is {w}x{h}", it.origin) });
            }
            let n = classes.list.len();
            let mut seen = vec![false; 256];
            for v in &idx {
                seen[*v as usize] = true;
            }
            for (v, s) in seen.iter().enumerate() {
                if *s && v != 255 && v >= n {
                    return Err(Bad {
                        origin: p.display().to_string(),
                        message: format!("mask has class index {v} but there are {n} classes (255 means `ignore`); list the class names in `classes`"),
                    });
                }
                if *s && v < n {
                    present.push(classes.list[v].clone());
                }
            }
            let g = image::GrayImage::from_raw(mw, mh, idx).ok_or_else(|| bad(it, "bad mask size"))?;
            members.push(("mask.png".into(), image_io::encode_png(&DynamicImage::ImageLuma8(g)).map_err(|m| bad(it, m))?));
        }
    }
    Ok(Some(vec![Processed { key: it.key.clone(), members, width: w, height: h, channels: image_io::channels(&img), encoding, classes: present, boxes: boxes_out }]))
}

/// The tiles of one image with their boxes, each a sample of its own (`<key>_x<X>_y<Y>`).
fn tiles(it: &Item, img: &DynamicImage, boxes: &[crate::data::BoxLabel], t: &TileSpec) -> Result<Vec<Processed>, Bad> {
    let (w, h) = (img.width(), img.height());
    let pad = t.edge == TileEdge::Pad;
    // Padded tiles are all of the tile's size; otherwise an image smaller than a tile is one
    // tile of its own size.
    let (tw, th) = if pad { (t.size[0], t.size[1]) } else { (t.size[0].min(w), t.size[1].min(h)) };
    let mut out = Vec::new();
    for ty in t.edge.starts(h, t.size[1], t.overlap) {
        for tx in t.edge.starts(w, t.size[0], t.overlap) {
            // The part of the tile inside the image.
            let (cw, ch) = (tw.min(w - tx), th.min(h - ty));
            let mut kept = Vec::new();
            for b in boxes {
                if let Some(c) = clip_to_tile(b.bbox, tx, ty, cw, ch, t.min_visible) {
                    kept.push(crate::data::BoxLabel { class: b.class.clone(), class_id: b.class_id, bbox: c });
                }
            }
            if kept.is_empty() && !t.keep_empty {
                continue;
            }
            let mut crop = img.crop_imm(tx, ty, cw, ch);
            if (cw, ch) != (tw, th) {
                let mut canvas = DynamicImage::new(tw, th, img.color());
                image::imageops::replace(&mut canvas, &crop, 0, 0);
                crop = canvas;
            }
            let png = image_io::encode_png(&crop).map_err(|m| bad(it, m))?;
            let mut present: Vec<String> = Vec::new();
            for b in &kept {
                if !present.contains(&b.class) {
                    present.push(b.class.clone());
                }
            }
            let names: Vec<String> = kept.iter().map(|b| b.class.clone()).collect();
            let target = DetectionTarget { width: tw, height: th, boxes: kept };
            let members = vec![("png".to_string(), png), ("json".to_string(), serde_json::to_vec(&target).expect("target serialises"))];
            out.push(Processed { key: format!("{}_x{tx}_y{ty}", it.key), members, width: tw, height: th, channels: image_io::channels(&crop), encoding: "png", classes: present, boxes: names });
        }
    }
    Ok(out)
}

fn unknown_class(it: &Item, name: &str, classes: &Classes) -> Bad {
    let hint = match crate::diag::did_you_mean(name, classes.list.iter().map(String::as_str)) {
        Some(s) => format!(" (did you mean `{s}`? names are matched case-insensitively)"),
        None => format!(" (known: {})", classes.list.join(", ")),
    };
    bad(it, format!("unknown class `{name}`{hint}; add it to `class_map` or `classes`, or to `ignore_classes` to drop its labels"))
}

#[derive(Default)]
struct StatsAcc {
    n: usize,
    w: (u32, u32, u64),
    h: (u32, u32, u64),
    channels: BTreeMap<String, usize>,
    encodings: BTreeMap<String, usize>,
}

impl StatsAcc {
    fn add(&mut self, w: u32, h: u32, c: u8, enc: &str) {
        if self.n == 0 {
            self.w = (w, w, 0);
            self.h = (h, h, 0);
        }
        self.n += 1;
        self.w = (self.w.0.min(w), self.w.1.max(w), self.w.2 + w as u64);
        self.h = (self.h.0.min(h), self.h.1.max(h), self.h.2 + h as u64);
        *self.channels.entry(c.to_string()).or_default() += 1;
        *self.encodings.entry(enc.to_string()).or_default() += 1;
    }
    fn finish(self) -> ImageStats {
        let n = self.n.max(1) as f64;
        let mmm = |(a, b, s): (u32, u32, u64)| MinMaxMean { min: a, max: b, mean: ((s as f64 / n) * 100.0).round() / 100.0 };
        ImageStats { width: mmm(self.w), height: mmm(self.h), channels: self.channels, encodings: self.encodings }
    }
}

#[cfg(test)]
mod tiling_tests {
    use super::*;

    #[test]
    fn tile_origins_cover_the_image_and_end_at_its_edge() {
        assert_eq!(tile_starts(1000, 416, 0), vec![0, 416, 584]);
        assert_eq!(tile_starts(1000, 416, 100), vec![0, 316, 584]);
        assert_eq!(tile_starts(832, 416, 0), vec![0, 416]);
        assert_eq!(tile_starts(400, 416, 0), vec![0]);
        assert_eq!(tile_starts(417, 416, 0), vec![0, 1]);
        // an overlap as large as the tile still advances
        assert_eq!(tile_starts(10, 4, 9), vec![0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn padded_and_dropped_edges() {
        let (pad, drop) = (TileEdge::Pad, TileEdge::Drop);
        // 417 px: shift nearly repeats a tile, pad adds one of 1 px + black, drop leaves it out
        assert_eq!(TileEdge::Shift.starts(417, 416, 0), vec![0, 1]);
        assert_eq!(pad.starts(417, 416, 0), vec![0, 416]);
        assert_eq!(drop.starts(417, 416, 0), vec![0]);
        assert_eq!(pad.starts(1000, 416, 0), vec![0, 416, 832]);
        assert_eq!(drop.starts(1000, 416, 0), vec![0, 416]);
        // whole strides: the same tiles every way
        for e in [TileEdge::Shift, pad, drop] {
            assert_eq!(e.starts(832, 416, 0), vec![0, 416]);
            assert_eq!(e.starts(400, 416, 0), vec![0]);
        }
        // with overlap, a padded tile must reach past the one before: 416+100 covers 0..732
        assert_eq!(pad.starts(732, 416, 100), vec![0, 316]);
        assert_eq!(pad.starts(733, 416, 100), vec![0, 316, 632]);
        assert_eq!(drop.starts(1000, 416, 100), vec![0, 316]);
        for e in TileEdge::NAMES {
            assert_eq!(TileEdge::parse(e).unwrap().name(), *e);
        }
    }

    #[test]
    fn boxes_are_cut_at_tile_edges_and_kept_when_enough_is_inside() {
        // 40 px wide, 30 inside the tile [0, 100): 75 % visible
        let b = [70.0, 10.0, 110.0, 20.0];
        assert_eq!(clip_to_tile(b, 0, 0, 100, 100, 0.5), Some([70.0, 10.0, 100.0, 20.0]));
        assert_eq!(clip_to_tile(b, 0, 0, 100, 100, 0.8), None);
        // in the next tile, 10 of 40 px: 25 %
        assert_eq!(clip_to_tile(b, 100, 0, 100, 100, 0.25), Some([0.0, 10.0, 10.0, 20.0]));
        assert_eq!(clip_to_tile(b, 100, 0, 100, 100, 0.3), None);
        // entirely outside, or touching only an edge
        assert_eq!(clip_to_tile(b, 0, 100, 100, 100, 0.0), None);
        assert_eq!(clip_to_tile([100.0, 0.0, 120.0, 10.0], 0, 0, 100, 100, 0.0), None);
    }
}
