//! The loader every training and evaluation stage reads with: streams the shards of a
//! split, shuffles with the seed (shard order + a shuffle buffer), decodes and resizes on
//! several threads (rayon), normalises to the model's input spec, batches, and prefetches
//! on a background thread. Tiny datasets can be held in memory, decoded once.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use fast_image_resize as fr;
use rayon::prelude::*;

use super::image_io::{self, InputSpec};
use super::rng::Rng;
use super::shards::{RawSample, ShardReader};
use super::{DataError, DatasetManifest, DetectionTarget};

/// A converted dataset artifact (a folder with `dataset.json` and shards).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub manifest: DatasetManifest,
}

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Epoch number: each epoch shuffles differently, deterministically.
    pub epoch: u64,
    /// Samples held for shuffling while streaming.
    pub shuffle_buffer: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    pub drop_last: bool,
    /// Online augmentation for training (classification): random flips and shifted crops.
    pub augment: Option<OnlineAugment>,
    /// Online augmentation for detection training: the `augment` stage's spatial and colour
    /// augmentation (its `output` size is ignored: the input size is used), drawn per seed,
    /// epoch and sample, applied to the resized image; [`Batch::boxes`] follow it.
    pub box_augment: Option<crate::data::augment::AugmentSpec>,
    /// Boxes narrower or lower than this (input pixels) after resizing and augmentation are
    /// dropped from [`Batch::boxes`] (TAO's `min_bbox_width`/`min_bbox_height`).
    pub min_box_size: f64,
}

/// Training-time augmentation applied to the resized pixels, drawn per sample from the
/// seed, the epoch and the key: a horizontal flip with probability 1/2 and a crop shifted
/// by up to `crop_padding` pixels (zero fill), as in the usual CIFAR-style recipe.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OnlineAugment {
    pub hflip: bool,
    pub crop_padding: u32,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions { batch_size: 32, shuffle: true, seed: 0, epoch: 0, shuffle_buffer: 2048, prefetch: 4, drop_last: false, augment: None, box_augment: None, min_box_size: 1.0 }
    }
}

/// Apply [`OnlineAugment`] to interleaved u8 pixels of the spec's size.
pub fn apply_online(px: &[u8], spec: &InputSpec, aug: &OnlineAugment, seed: u64, epoch: u64, key: &str) -> Vec<u8> {
    let mut r = Rng::for_purpose(seed ^ epoch.wrapping_mul(0x9E37_79B9), &format!("online/{key}"));
    let flip = aug.hflip && r.below(2) == 1;
    let p = aug.crop_padding as i64;
    let (dx, dy) = if p > 0 { (r.below(2 * p as u64 + 1) as i64 - p, r.below(2 * p as u64 + 1) as i64 - p) } else { (0, 0) };
    let (w, h, c) = (spec.width as i64, spec.height as i64, spec.channels as usize);
    let mut out = vec![0u8; px.len()];
    for y in 0..h {
        let sy = y + dy;
        if sy < 0 || sy >= h {
            continue;
        }
        for x in 0..w {
            let sx0 = x + dx;
            if sx0 < 0 || sx0 >= w {
                continue;
            }
            let sx = if flip { w - 1 - sx0 } else { sx0 };
            let (d, s) = (((y * w + x) as usize) * c, ((sy * w + sx) as usize) * c);
            out[d..d + c].copy_from_slice(&px[s..s + c]);
        }
    }
    out
}

/// One batch, images normalised to the input spec, NCHW.
#[derive(Debug, Clone)]
pub struct Batch {
    pub len: usize,
    pub images: Vec<f32>,
    /// Class index (classification); 0 otherwise.
    pub labels: Vec<u32>,
    pub keys: Vec<String>,
    /// Boxes in the original image's pixels (detection), as stored.
    pub targets: Vec<Option<DetectionTarget>>,
    /// Boxes in the model input's pixels, after the resize and any online augmentation,
    /// small ones dropped: what training targets are made from (detection; empty otherwise).
    pub boxes: Vec<Vec<crate::data::BoxLabel>>,
    /// Class-index masks resized (nearest) to the input size (segmentation).
    pub masks: Vec<Option<Vec<u8>>>,
}

impl Dataset {
    pub fn open(root: &Path) -> Result<Dataset, DataError> {
        let p = root.join("dataset.json");
        let text = std::fs::read_to_string(&p).map_err(|e| DataError::io(format!("cannot read `{}` (is this a dataset made by `convert`?)", p.display()), e))?;
        let manifest: DatasetManifest = serde_json::from_str(&text).map_err(|e| DataError::Invalid(format!("`{}` is not a valid dataset manifest: {e}", p.display())))?;
        for s in manifest.splits.values() {
            for sh in &s.shards {
                if !root.join(sh).is_file() {
                    return Err(DataError::Invalid(format!("shard `{}` listed in `{}` is missing", root.join(sh).display(), p.display())));
                }
            }
        }
        Ok(Dataset { root: root.to_path_buf(), manifest })
    }

    fn shards(&self, split: &str) -> Result<Vec<PathBuf>, DataError> {
        let s = self.manifest.splits.get(split).ok_or_else(|| {
            DataError::Invalid(format!(
                "the dataset has no split `{split}` (it has: {})",
                self.manifest.splits.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(s.shards.iter().map(|x| self.root.join(x)).collect())
    }

    pub fn len(&self, split: &str) -> usize {
        self.manifest.splits.get(split).map(|s| s.count).unwrap_or(0)
    }

    /// Stream a split in batches.
    pub fn stream(&self, split: &str, spec: &InputSpec, opts: &LoaderOptions) -> Result<Loader, DataError> {
        spec.validate().map_err(DataError::Invalid)?;
        if opts.augment.is_some() && self.manifest.task != "classification" {
            return Err(DataError::Invalid(format!("online flips and crops are for classification; this is a {} dataset (its labels would not follow)", self.manifest.task)));
        }
        let mut shards = self.shards(split)?;
        if opts.shuffle {
            Rng::for_purpose(opts.seed ^ opts.epoch.wrapping_mul(0x9E37_79B9), "loader/shards").shuffle(&mut shards);
        }
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let spec = spec.clone();
        let opts = opts.clone();
        let handle = std::thread::Builder::new()
            .name("taoflow-loader".into())
            .spawn(move || {
                let mut rng = Rng::for_purpose(opts.seed ^ opts.epoch.wrapping_mul(0x9E37_79B9), "loader/buffer");
                let mut buffer: Vec<RawSample> = Vec::new();
                let mut pending: Vec<RawSample> = Vec::with_capacity(opts.batch_size);
                let cap = if opts.shuffle { opts.shuffle_buffer.max(1) } else { 1 };
                let emit = |pending: &mut Vec<RawSample>| -> bool {
                    let batch = decode_batch(std::mem::take(pending), &spec, &opts);
                    tx.send(batch).is_ok()
                };
                for shard in shards {
                    let mut reader = match ShardReader::open(&shard) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let r = reader.for_each(|s| {
                        buffer.push(s);
                        if buffer.len() >= cap {
                            let j = if opts.shuffle { rng.below(buffer.len() as u64) as usize } else { 0 };
                            pending.push(buffer.swap_remove(j));
                            if pending.len() == opts.batch_size && !emit(&mut pending) {
                                return Err(DataError::Invalid("consumer gone".into()));
                            }
                        }
                        Ok(())
                    });
                    if let Err(e) = r {
                        if !matches!(&e, DataError::Invalid(m) if m == "consumer gone") {
                            let _ = tx.send(Err(e));
                        }
                        return;
                    }
                }
                if opts.shuffle {
                    rng.shuffle(&mut buffer);
                }
                for s in buffer.drain(..) {
                    pending.push(s);
                    if pending.len() == opts.batch_size && !emit(&mut pending) {
                        return;
                    }
                }
                if !pending.is_empty() && !opts.drop_last {
                    emit(&mut pending);
                }
            })
            .map_err(|e| DataError::io("cannot start the loader thread", e))?;
        Ok(Loader { rx, handle: Some(handle) })
    }

    /// Load a split into memory (for tiny datasets): decoded and resized once, shuffled
    /// per epoch.
    pub fn in_memory(&self, split: &str, spec: &InputSpec) -> Result<MemoryLoader, DataError> {
        spec.validate().map_err(DataError::Invalid)?;
        let mut samples = Vec::new();
        for sh in self.shards(split)? {
            ShardReader::open(&sh)?.for_each(|s| {
                samples.push(s);
                Ok(())
            })?;
        }
        let decoded = (0..samples.len()).map(|_| OnceLock::new()).collect();
        Ok(MemoryLoader { samples: Arc::new(samples), decoded: Arc::new(decoded), spec: spec.clone() })
    }
}

/// Batches from a background thread; iterate to consume.
pub struct Loader {
    rx: Receiver<Result<Batch, DataError>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(b) => Some(b),
            Err(_) => {
                if let Some(h) = self.handle.take() {
                    let _ = h.join();
                }
                None
            }
        }
    }
}

/// A decoded sample: resized pixels (interleaved u8) and its labels.
#[derive(Debug, Clone)]
struct Decoded {
    pixels: Vec<u8>,
    label: u32,
    target: Option<DetectionTarget>,
    /// Input-space boxes, filled by [`augmented`].
    boxes: Vec<crate::data::BoxLabel>,
    mask: Option<Vec<u8>>,
}

fn decode_one(s: &RawSample, spec: &InputSpec) -> Result<Decoded, DataError> {
    let bad = |m: String| DataError::Invalid(format!("sample `{}`: {m}", s.key));
    let img_bytes = s.member("png").or_else(|| s.member("jpg")).ok_or_else(|| bad("has no .png or .jpg member".into()))?;
    let img = image_io::decode(img_bytes).map_err(bad)?;
    let mut resizer = fr::Resizer::new();
    let pixels = image_io::resize_u8(&img, spec, &mut resizer).map_err(bad)?;
    let label = match s.member("cls") {
        Some(b) => std::str::from_utf8(b).ok().and_then(|t| t.trim().parse().ok()).ok_or_else(|| bad("bad .cls member".into()))?,
        None => 0,
    };
    let target = match s.member("json") {
        Some(b) => Some(serde_json::from_slice(b).map_err(|e| bad(format!("bad .json member: {e}")))?),
        None => None,
    };
    let mask = match s.member("mask.png") {
        Some(b) => {
            let m = image_io::decode(b).map_err(bad)?.to_luma8();
            let (mw, mh) = m.dimensions();
            let mut out = vec![0u8; (spec.width * spec.height) as usize];
            for y in 0..spec.height {
                for x in 0..spec.width {
                    let sx = ((x as u64 * mw as u64) / spec.width as u64) as u32;
                    let sy = ((y as u64 * mh as u64) / spec.height as u64) as u32;
                    out[(y * spec.width + x) as usize] = m.get_pixel(sx, sy).0[0];
                }
            }
            Some(out)
        }
        None => None,
    };
    Ok(Decoded { pixels, label, target, boxes: Vec::new(), mask })
}

fn assemble(items: Vec<(String, Decoded)>, spec: &InputSpec) -> Batch {
    let n = items.len();
    let per = spec.len();
    let mut images = vec![0f32; n * per];
    images.par_chunks_mut(per).zip(items.par_iter()).for_each(|(dst, (_, d))| image_io::normalize_into(&d.pixels, spec, dst));
    let mut b = Batch { len: n, images, labels: Vec::with_capacity(n), keys: Vec::with_capacity(n), targets: Vec::with_capacity(n), boxes: Vec::with_capacity(n), masks: Vec::with_capacity(n) };
    for (k, d) in items {
        b.keys.push(k);
        b.labels.push(d.label);
        b.boxes.push(d.boxes);
        b.targets.push(d.target);
        b.masks.push(d.mask);
    }
    b
}

fn augmented(mut d: Decoded, key: &str, spec: &InputSpec, opts: &LoaderOptions) -> Decoded {
    if let Some(a) = &opts.augment {
        d.pixels = apply_online(&d.pixels, spec, a, opts.seed, opts.epoch, key);
    }
    if let Some(t) = &d.target {
        let (pixels, boxes) = detection_view(&d.pixels, t, spec, opts, key);
        if let Some(p) = pixels {
            d.pixels = p;
        }
        d.boxes = boxes;
    }
    d
}

/// A detection sample as the model sees it: the boxes scaled from the stored image to the
/// input size and, with [`LoaderOptions::box_augment`], the resized pixels warped and
/// recoloured with the draw for (seed, epoch, key), the boxes through the same matrix
/// (enclosing box of the corners, clipped); boxes under `min_box_size` dropped.
pub fn detection_view(px: &[u8], t: &DetectionTarget, spec: &InputSpec, opts: &LoaderOptions, key: &str) -> (Option<Vec<u8>>, Vec<crate::data::BoxLabel>) {
    use crate::data::augment::{forward_matrix, transform_box, warp_color, Draw};
    let out = (spec.width, spec.height);
    let draw = opts.box_augment.as_ref().map(|a| a.draw(opts.seed ^ opts.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15), &format!("online-boxes/{key}"), 0));
    // stored image -> input (a scale), then the augmentation's own warp of the input
    let scale = forward_matrix(&Draw::identity(), (t.width.max(1), t.height.max(1)), out);
    let m = match &draw {
        Some(d) => scale.then(&forward_matrix(d, out, out)),
        None => scale,
    };
    let boxes = t.boxes.iter().filter_map(|b| transform_box(b, &m, out, opts.min_box_size)).collect();
    let pixels = draw.map(|d| {
        let rgb = if spec.channels == 3 {
            image::RgbImage::from_raw(spec.width, spec.height, px.to_vec()).expect("input-sized pixels")
        } else {
            image::DynamicImage::ImageLuma8(image::GrayImage::from_raw(spec.width, spec.height, px.to_vec()).expect("input-sized pixels")).to_rgb8()
        };
        let w = warp_color(&rgb, &d, out);
        if spec.channels == 3 { w.into_raw() } else { image::DynamicImage::ImageRgb8(w).to_luma8().into_raw() }
    });
    (pixels, boxes)
}

fn decode_batch(samples: Vec<RawSample>, spec: &InputSpec, opts: &LoaderOptions) -> Result<Batch, DataError> {
    let decoded: Vec<(String, Decoded)> = samples.par_iter().map(|s| decode_one(s, spec).map(|d| (s.key.clone(), augmented(d, &s.key, spec, opts)))).collect::<Result<_, _>>()?;
    Ok(assemble(decoded, spec))
}

/// A split held in memory; each sample is decoded and resized once, on first use.
#[derive(Clone)]
pub struct MemoryLoader {
    samples: Arc<Vec<RawSample>>,
    decoded: Arc<Vec<OnceLock<Decoded>>>,
    spec: InputSpec,
}

impl MemoryLoader {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The batches of one epoch.
    pub fn epoch(&self, opts: &LoaderOptions) -> Result<Vec<Batch>, DataError> {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        if opts.shuffle {
            Rng::for_purpose(opts.seed ^ opts.epoch.wrapping_mul(0x9E37_79B9), "loader/memory").shuffle(&mut order);
        }
        let mut out = Vec::new();
        for chunk in order.chunks(opts.batch_size.max(1)) {
            if opts.drop_last && chunk.len() < opts.batch_size {
                break;
            }
            let items: Vec<(String, Decoded)> = chunk
                .par_iter()
                .map(|&i| {
                    let d = match self.decoded[i].get() {
                        Some(d) => d.clone(),
                        None => {
                            let d = decode_one(&self.samples[i], &self.spec)?;
                            let _ = self.decoded[i].set(d.clone());
                            d
                        }
                    };
                    let key = &self.samples[i].key;
                    Ok((key.clone(), augmented(d, key, &self.spec, opts)))
                })
                .collect::<Result<_, DataError>>()?;
            out.push(assemble(items, &self.spec));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_flip_and_shift() {
        let spec = InputSpec::plain(4, 2, 1);
        let px: Vec<u8> = (1..=8).collect();
        let aug = OnlineAugment { hflip: true, crop_padding: 0 };
        // Over keys, both outcomes occur; a flip mirrors each row.
        let outs: Vec<Vec<u8>> = (0..16).map(|k| apply_online(&px, &spec, &aug, 1, 0, &k.to_string())).collect();
        assert!(outs.contains(&px));
        assert!(outs.contains(&vec![4, 3, 2, 1, 8, 7, 6, 5]));
        // Deterministic per (seed, epoch, key).
        assert_eq!(apply_online(&px, &spec, &aug, 1, 0, "a"), apply_online(&px, &spec, &aug, 1, 0, "a"));
        // Shifts move pixels and fill with zeros; the content is conserved where it stays.
        let shifted = apply_online(&px, &spec, &OnlineAugment { hflip: false, crop_padding: 1 }, 3, 0, "z");
        assert_eq!(shifted.len(), 8);
        assert!(shifted.iter().all(|v| *v == 0 || px.contains(v)));
    }

    fn target() -> DetectionTarget {
        let b = |x1: f32, y1: f32, x2: f32, y2: f32| crate::data::BoxLabel { class: "car".into(), class_id: 0, bbox: [x1, y1, x2, y2] };
        // stored at 80×40; the model sees 40×20
        DetectionTarget { width: 80, height: 40, boxes: vec![b(8.0, 4.0, 40.0, 24.0), b(70.0, 30.0, 71.0, 31.0)] }
    }

    #[test]
    fn detection_boxes_follow_the_resize_and_small_ones_go() {
        let spec = InputSpec::plain(40, 20, 3);
        let px = vec![0u8; 40 * 20 * 3];
        let (pixels, boxes) = detection_view(&px, &target(), &spec, &LoaderOptions::default(), "k");
        assert!(pixels.is_none(), "no augmentation: the pixels stay");
        // halved; the 1-pixel box becomes 0.5 pixels and is dropped (min_box_size 1)
        assert_eq!(boxes.iter().map(|b| b.bbox).collect::<Vec<_>>(), vec![[4.0, 2.0, 20.0, 12.0]]);
        let keep = LoaderOptions { min_box_size: 0.0, ..Default::default() };
        assert_eq!(detection_view(&px, &target(), &spec, &keep, "k").1.len(), 2);
    }

    #[test]
    fn detection_augmentation_moves_pixels_and_boxes_together() {
        let spec = InputSpec::plain(40, 20, 3);
        // a white rectangle where the first box is (input space 4..20 × 2..12)
        let mut px = vec![0u8; 40 * 20 * 3];
        for y in 2..12 {
            for x in 4..20 {
                px[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let flip = crate::data::augment::AugmentSpec { flip_horizontal: 1.0, ..Default::default() };
        let opts = LoaderOptions { box_augment: Some(flip), ..Default::default() };
        let (pixels, boxes) = detection_view(&px, &target(), &spec, &opts, "k");
        let pixels = pixels.expect("augmented");
        assert_eq!(boxes[0].bbox, [20.0, 2.0, 36.0, 12.0], "mirrored: x' = 40 - x");
        let at = |p: &[u8], x: usize, y: usize| p[(y * 40 + x) * 3];
        assert_eq!(at(&pixels, 28, 7), 255, "the rectangle moved with its box");
        assert_eq!(at(&pixels, 10, 7), 0);
        // random translation: a function of (seed, epoch, key), different across epochs
        let shift = crate::data::augment::AugmentSpec { translate_x: crate::data::augment::Param::Range(-8.0, 8.0), ..Default::default() };
        let o = |epoch: u64| LoaderOptions { box_augment: Some(shift.clone()), seed: 3, epoch, ..Default::default() };
        let a = detection_view(&px, &target(), &spec, &o(0), "k");
        assert_eq!(a, detection_view(&px, &target(), &spec, &o(0), "k"));
        let xs: Vec<f32> = (0..6).map(|e| detection_view(&px, &target(), &spec, &o(e), "k").1[0].bbox[0]).collect();
        assert!(xs.windows(2).any(|w| w[0] != w[1]), "{xs:?}");
        for (e, x) in xs.iter().enumerate() {
            // the box moved by the draw's dx: its left edge and the rectangle's agree
            let (p, _) = detection_view(&px, &target(), &spec, &o(e as u64), "k");
            let p = p.unwrap();
            let col = (x.round() as usize + 2).min(39);
            assert!(at(&p, col, 7) > 100, "epoch {e}: box at {x}, pixel {}", at(&p, col, 7));
        }
    }
}
