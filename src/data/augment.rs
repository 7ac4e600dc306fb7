//! Offline augmentation with TAO's semantics: an affine warp (rotation, shear, translation,
//! flips, zoom) fused with the resize to the output size, then colour (hue rotation,
//! saturation, contrast, brightness), then an optional Gaussian blur. Labels follow the
//! image: boxes through the same matrix (enclosing box of the corners, clipped, small ones
//! dropped), masks warped with nearest sampling, classes unchanged.
//!
//! This CPU implementation is the reference; a GPU kernel must match it.

use std::collections::BTreeMap;
use std::path::Path;

use image::{DynamicImage, GrayImage, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::image_io;
use super::rng::Rng;
use super::shards::{RawSample, ShardReader, ShardWriter};
use super::{BoxLabel, DataError, DatasetManifest, DetectionTarget, SplitInfo};

/// A parameter that is a fixed value or a range sampled uniformly per image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Param {
    Fixed(f64),
    Range(f64, f64),
}

impl Param {
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match *self {
            Param::Fixed(v) => v,
            Param::Range(a, b) => a + (b - a) * rng.f64(),
        }
    }
    pub fn bounds(&self) -> (f64, f64) {
        match *self {
            Param::Fixed(v) => (v, v),
            Param::Range(a, b) => (a, b),
        }
    }
}

/// The augmentation spec (TOML tables `spatial`, `color`, `blur` of the stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentSpec {
    /// Rotation in radians.
    pub rotation: Param,
    pub shear_x: Param,
    pub shear_y: Param,
    /// Translation in output pixels.
    pub translate_x: Param,
    pub translate_y: Param,
    pub flip_horizontal: f64,
    pub flip_vertical: f64,
    pub zoom: Param,
    /// Hue rotation in degrees.
    pub hue: Param,
    /// Saturation factor (1 = unchanged).
    pub saturation: Param,
    /// Contrast factor around `contrast_center` (1 = unchanged).
    pub contrast: Param,
    pub contrast_center: f64,
    /// Brightness offset in levels (0-255 scale).
    pub brightness: Param,
    pub blur_std: Param,
    pub blur_size: u32,
    /// Output size; `None` keeps each image's size.
    pub output: Option<(u32, u32)>,
    /// 3 (RGB) or 1 (grey: luma of the augmented RGB).
    pub output_channels: u32,
    pub copies: u32,
    pub keep_originals: bool,
    /// Boxes smaller than this (width or height, output pixels) after the warp are dropped.
    pub min_box_size: f64,
    /// Splits to augment; the others are copied unchanged.
    pub splits: Vec<String>,
}

impl Default for AugmentSpec {
    fn default() -> Self {
        let f = Param::Fixed;
        AugmentSpec {
            rotation: f(0.0),
            shear_x: f(0.0),
            shear_y: f(0.0),
            translate_x: f(0.0),
            translate_y: f(0.0),
            flip_horizontal: 0.0,
            flip_vertical: 0.0,
            zoom: f(1.0),
            hue: f(0.0),
            saturation: f(1.0),
            contrast: f(1.0),
            contrast_center: 127.5,
            brightness: f(0.0),
            blur_std: f(0.0),
            blur_size: 5,
            output: None,
            output_channels: 3,
            copies: 1,
            keep_originals: true,
            min_box_size: 2.0,
            splits: vec!["train".into()],
        }
    }
}

/// The parameters drawn for one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Draw {
    pub rotation: f64,
    pub shear_x: f64,
    pub shear_y: f64,
    pub translate_x: f64,
    pub translate_y: f64,
    pub flip_h: bool,
    pub flip_v: bool,
    pub zoom: f64,
    pub hue: f64,
    pub saturation: f64,
    pub contrast: f64,
    pub contrast_center: f64,
    pub brightness: f64,
    pub blur_std: f64,
    pub blur_size: u32,
}

impl Draw {
    /// No change at all: the warp is the plain resize, the colour untouched, no blur.
    pub fn identity() -> Draw {
        Draw { rotation: 0.0, shear_x: 0.0, shear_y: 0.0, translate_x: 0.0, translate_y: 0.0, flip_h: false, flip_v: false, zoom: 1.0, hue: 0.0, saturation: 1.0, contrast: 1.0, contrast_center: 127.5, brightness: 0.0, blur_std: 0.0, blur_size: 1 }
    }

    /// Colour is left alone (the warp alone runs); the CPU path and the GPU kernel must
    /// agree on this, or rounding of the YIQ round trip would differ.
    pub fn color_is_identity(&self) -> bool {
        self.hue == 0.0 && self.saturation == 1.0 && self.contrast == 1.0 && self.brightness == 0.0
    }
}

impl AugmentSpec {
    /// Parameters for copy `copy` of sample `key`: a pure function of seed, key and copy.
    pub fn draw(&self, seed: u64, key: &str, copy: u32) -> Draw {
        let mut r = Rng::for_purpose(seed ^ (copy as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), &format!("augment/{key}"));
        Draw {
            rotation: self.rotation.sample(&mut r),
            shear_x: self.shear_x.sample(&mut r),
            shear_y: self.shear_y.sample(&mut r),
            translate_x: self.translate_x.sample(&mut r),
            translate_y: self.translate_y.sample(&mut r),
            flip_h: r.f64() < self.flip_horizontal,
            flip_v: r.f64() < self.flip_vertical,
            zoom: self.zoom.sample(&mut r),
            hue: self.hue.sample(&mut r),
            saturation: self.saturation.sample(&mut r),
            contrast: self.contrast.sample(&mut r),
            contrast_center: self.contrast_center,
            brightness: self.brightness.sample(&mut r),
            blur_std: self.blur_std.sample(&mut r),
            blur_size: self.blur_size,
        }
    }
}

/// A 2x3 affine matrix: `[a b c; d e f]` maps (x, y) to (a x + b y + c, d x + e y + f).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [f64; 6]);

impl Affine {
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = self.0;
        (m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5])
    }
    /// `self` after `other`.
    pub fn then(&self, next: &Affine) -> Affine {
        let a = self.0;
        let b = next.0;
        Affine([
            b[0] * a[0] + b[1] * a[3],
            b[0] * a[1] + b[1] * a[4],
            b[0] * a[2] + b[1] * a[5] + b[2],
            b[3] * a[0] + b[4] * a[3],
            b[3] * a[1] + b[4] * a[4],
            b[3] * a[2] + b[4] * a[5] + b[5],
        ])
    }
    pub fn invert(&self) -> Option<Affine> {
        let [a, b, c, d, e, f] = self.0;
        let det = a * e - b * d;
        if det.abs() < 1e-12 {
            return None;
        }
        let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
        Some(Affine([ia, ib, -(ia * c + ib * f), id, ie, -(id * c + ie * f)]))
    }
}

/// Source pixel coordinates -> output pixel coordinates, for an image of `src` size drawn
/// into `out` size: centre, flip, zoom, rotate, shear, scale to the output, translate.
/// Pixel centres are at +0.5.
pub fn forward_matrix(d: &Draw, src: (u32, u32), out: (u32, u32)) -> Affine {
    let (sw, sh) = (src.0 as f64, src.1 as f64);
    let (ow, oh) = (out.0 as f64, out.1 as f64);
    let t1 = Affine([1.0, 0.0, -sw / 2.0, 0.0, 1.0, -sh / 2.0]);
    let flip = Affine([if d.flip_h { -1.0 } else { 1.0 }, 0.0, 0.0, 0.0, if d.flip_v { -1.0 } else { 1.0 }, 0.0]);
    let zoom = Affine([d.zoom, 0.0, 0.0, 0.0, d.zoom, 0.0]);
    let (s, c) = d.rotation.sin_cos();
    // Rotation by `rotation` counter-clockwise as seen on screen (y points down).
    let rot = Affine([c, s, 0.0, -s, c, 0.0]);
    let shear = Affine([1.0, d.shear_x, 0.0, d.shear_y, 1.0, 0.0]);
    let scale = Affine([ow / sw, 0.0, 0.0, 0.0, oh / sh, 0.0]);
    let t2 = Affine([1.0, 0.0, ow / 2.0 + d.translate_x, 0.0, 1.0, oh / 2.0 + d.translate_y]);
    t1.then(&flip).then(&zoom).then(&rot).then(&shear).then(&scale).then(&t2)
}

/// The 3x3 colour matrix for hue rotation (degrees) and saturation, in YIQ space.
pub fn color_matrix(hue_deg: f64, saturation: f64) -> [[f64; 3]; 3] {
    const RGB2YIQ: [[f64; 3]; 3] = [[0.299, 0.587, 0.114], [0.595_716, -0.274_453, -0.321_263], [0.211_456, -0.522_591, 0.311_135]];
    const YIQ2RGB: [[f64; 3]; 3] = [[1.0, 0.956_3, 0.621_0], [1.0, -0.272_1, -0.647_4], [1.0, -1.106_9, 1.704_6]];
    let (s, c) = hue_deg.to_radians().sin_cos();
    let t = [[1.0, 0.0, 0.0], [0.0, saturation * c, -saturation * s], [0.0, saturation * s, saturation * c]];
    let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
        let mut r = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                r[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
            }
        }
        r
    };
    mul(YIQ2RGB, mul(t, RGB2YIQ))
}

/// Warp + resize + colour in one pass, then blur: the whole per-image CPU path.
pub fn augment_rgb(src: &RgbImage, d: &Draw, out: (u32, u32)) -> RgbImage {
    let img = warp_color(src, d, out);
    if d.blur_std > 0.0 { gaussian_blur(&img, d.blur_std, d.blur_size) } else { img }
}

/// Warp + resize + colour in one pass (bilinear, zero fill outside): what the GPU kernel
/// `kernels/augment.cu` does, and its reference.
pub fn warp_color(src: &RgbImage, d: &Draw, out: (u32, u32)) -> RgbImage {
    let (sw, sh) = src.dimensions();
    let inv = forward_matrix(d, (sw, sh), out).invert().unwrap_or(Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]));
    let cm = color_matrix(d.hue, d.saturation);
    let identity_color = d.color_is_identity();
    let (ow, oh) = out;
    let raw = src.as_raw();
    let mut buf = vec![0u8; (ow * oh * 3) as usize];
    buf.par_chunks_mut((ow * 3) as usize).enumerate().for_each(|(y, row)| {
        for x in 0..ow as usize {
            let (fx, fy) = inv.apply(x as f64 + 0.5, y as f64 + 0.5);
            let px = sample_bilinear(raw, sw, sh, fx - 0.5, fy - 0.5);
            let v = if identity_color {
                px
            } else {
                let mut o = [0.0; 3];
                for (i, oi) in o.iter_mut().enumerate() {
                    let m = cm[i][0] * px[0] + cm[i][1] * px[1] + cm[i][2] * px[2];
                    *oi = (m - d.contrast_center) * d.contrast + d.contrast_center + d.brightness;
                }
                o
            };
            for c in 0..3 {
                row[x * 3 + c] = v[c].round().clamp(0.0, 255.0) as u8;
            }
        }
    });
    RgbImage::from_raw(ow, oh, buf).expect("buffer size matches")
}

fn sample_bilinear(raw: &[u8], w: u32, h: u32, x: f64, y: f64) -> [f64; 3] {
    let x0 = x.floor();
    let y0 = y.floor();
    let (ax, ay) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let get = |xi: i64, yi: i64| -> [f64; 3] {
        if xi < 0 || yi < 0 || xi >= w as i64 || yi >= h as i64 {
            return [0.0; 3];
        }
        let i = ((yi as u64 * w as u64 + xi as u64) * 3) as usize;
        [raw[i] as f64, raw[i + 1] as f64, raw[i + 2] as f64]
    };
    let (p00, p10, p01, p11) = (get(x0, y0), get(x0 + 1, y0), get(x0, y0 + 1), get(x0 + 1, y0 + 1));
    let mut o = [0.0; 3];
    for c in 0..3 {
        o[c] = p00[c] * (1.0 - ax) * (1.0 - ay) + p10[c] * ax * (1.0 - ay) + p01[c] * (1.0 - ax) * ay + p11[c] * ax * ay;
    }
    o
}

/// Separable Gaussian blur with a `size`-tap kernel (odd), edges clamped.
pub fn gaussian_blur(img: &RgbImage, std: f64, size: u32) -> RgbImage {
    let r = (size as i64 / 2).max(1);
    let k: Vec<f64> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * std * std)).exp()).collect();
    let sum: f64 = k.iter().sum();
    let k: Vec<f64> = k.into_iter().map(|v| v / sum).collect();
    let (w, h) = img.dimensions();
    let src = img.as_raw();
    let pass = |input: &[u8], horizontal: bool| -> Vec<u8> {
        let mut out = vec![0u8; input.len()];
        out.par_chunks_mut((w * 3) as usize).enumerate().for_each(|(y, row)| {
            for x in 0..w as i64 {
                let mut acc = [0.0; 3];
                for (j, kv) in k.iter().enumerate() {
                    let o = j as i64 - r;
                    let (sx, sy) = if horizontal { ((x + o).clamp(0, w as i64 - 1), y as i64) } else { (x, (y as i64 + o).clamp(0, h as i64 - 1)) };
                    let i = ((sy as u64 * w as u64 + sx as u64) * 3) as usize;
                    for c in 0..3 {
                        acc[c] += kv * input[i + c] as f64;
                    }
                }
                for c in 0..3 {
                    row[x as usize * 3 + c] = acc[c].round().clamp(0.0, 255.0) as u8;
                }
            }
        });
        out
    };
    let h1 = pass(src, true);
    let v = pass(&h1, false);
    RgbImage::from_raw(w, h, v).expect("buffer size matches")
}

/// Nearest-neighbour warp of a class-index mask (fill 255 = ignore outside the source).
pub fn augment_mask(mask: &GrayImage, d: &Draw, out: (u32, u32)) -> GrayImage {
    let (sw, sh) = mask.dimensions();
    let inv = forward_matrix(d, (sw, sh), out).invert().unwrap_or(Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]));
    GrayImage::from_fn(out.0, out.1, |x, y| {
        let (fx, fy) = inv.apply(x as f64 + 0.5, y as f64 + 0.5);
        let (ix, iy) = (fx.floor() as i64, fy.floor() as i64);
        if ix < 0 || iy < 0 || ix >= sw as i64 || iy >= sh as i64 {
            image::Luma([255])
        } else {
            *mask.get_pixel(ix as u32, iy as u32)
        }
    })
}

/// A box through the matrix: enclosing box of its corners, clipped to the output; `None`
/// when it ends up smaller than `min_size`.
pub fn transform_box(b: &BoxLabel, m: &Affine, out: (u32, u32), min_size: f64) -> Option<BoxLabel> {
    let [x1, y1, x2, y2] = b.bbox.map(|v| v as f64);
    let pts = [m.apply(x1, y1), m.apply(x2, y1), m.apply(x1, y2), m.apply(x2, y2)];
    let (mut nx1, mut ny1, mut nx2, mut ny2) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for (x, y) in pts {
        nx1 = nx1.min(x);
        ny1 = ny1.min(y);
        nx2 = nx2.max(x);
        ny2 = ny2.max(y);
    }
    let (w, h) = (out.0 as f64, out.1 as f64);
    let (nx1, ny1, nx2, ny2) = (nx1.clamp(0.0, w), ny1.clamp(0.0, h), nx2.clamp(0.0, w), ny2.clamp(0.0, h));
    if nx2 - nx1 < min_size || ny2 - ny1 < min_size {
        return None;
    }
    let r = |v: f64| ((v * 100.0).round() / 100.0) as f32;
    Some(BoxLabel { class: b.class.clone(), class_id: b.class_id, bbox: [r(nx1), r(ny1), r(nx2), r(ny2)] })
}

/// Counts reported by [`augment_dataset`].
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct AugmentReport {
    pub images_in: usize,
    pub images_out: usize,
    pub boxes_in: usize,
    pub boxes_out: usize,
    pub boxes_dropped: usize,
}

/// Warps a batch of (source, draw, output size) jobs: on the CPU, or with the GPU kernel.
pub type Warper<'a> = dyn Fn(&[(&RgbImage, Draw, (u32, u32))]) -> Result<Vec<RgbImage>, String> + Sync + 'a;

/// The CPU warper (rayon over images).
pub fn cpu_warper(jobs: &[(&RgbImage, Draw, (u32, u32))]) -> Result<Vec<RgbImage>, String> {
    Ok(jobs.par_iter().map(|(src, d, out)| warp_color(src, d, *out)).collect())
}

/// A decoded sample and the variants (original and copies) to make of it.
struct Planned<'s> {
    sample: &'s RawSample,
    src: RgbImage,
    src_channels: u8,
    target: Option<DetectionTarget>,
    mask: Option<GrayImage>,
    /// (key, draw, output size, unchanged original)
    variants: Vec<(String, Draw, (u32, u32), bool)>,
}

fn plan<'s>(s: &'s RawSample, spec: &AugmentSpec, seed: u64) -> Result<Planned<'s>, DataError> {
    let bad = |m: String| DataError::Invalid(format!("sample `{}`: {m}", s.key));
    let bytes = s.member("png").or_else(|| s.member("jpg")).ok_or_else(|| bad("has no .png or .jpg member".into()))?;
    let decoded = image_io::decode(bytes).map_err(bad)?;
    let src_channels = image_io::channels(&decoded);
    let src = decoded.to_rgb8();
    let (sw, sh) = src.dimensions();
    let out_size = spec.output.unwrap_or((sw, sh));
    let target = match s.member("json") {
        Some(j) => Some(serde_json::from_slice(j).map_err(|e| bad(format!("bad .json: {e}")))?),
        None => None,
    };
    let mask = match s.member("mask.png") {
        Some(m) => Some(image_io::decode(m).map_err(bad)?.to_luma8()),
        None => None,
    };
    let identity = Draw { contrast_center: spec.contrast_center, blur_size: spec.blur_size, ..Draw::identity() };
    let mut variants = Vec::new();
    if spec.keep_originals {
        variants.push((s.key.clone(), identity, out_size, out_size == (sw, sh)));
    }
    for c in 0..spec.copies {
        variants.push((format!("{}-aug{c}", s.key), spec.draw(seed, &s.key, c), out_size, false));
    }
    Ok(Planned { sample: s, src, src_channels, target, mask, variants })
}

/// Labels and encoding of one variant whose pixels are `warped` (None: the unchanged original).
fn finish(p: &Planned<'_>, key: &str, d: &Draw, out_size: (u32, u32), warped: Option<RgbImage>, spec: &AugmentSpec, rep: &mut AugmentReport) -> Result<RawSample, DataError> {
    let s = p.sample;
    let bad = |m: String| DataError::Invalid(format!("sample `{}`: {m}", s.key));
    let unchanged = warped.is_none();
    let image_member = match warped {
        None if spec.output_channels == 3 || p.src_channels == 1 => {
            let ext = if s.member("png").is_some() { "png" } else { "jpg" };
            (ext.to_string(), s.member(ext).unwrap_or_default().to_vec())
        }
        warped => {
            let img = warped.unwrap_or_else(|| p.src.clone());
            let img = if d.blur_std > 0.0 { gaussian_blur(&img, d.blur_std, d.blur_size) } else { img };
            let img = if spec.output_channels == 1 { DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(img).to_luma8()) } else { DynamicImage::ImageRgb8(img) };
            ("png".to_string(), image_io::encode_png(&img).map_err(bad)?)
        }
    };
    let m = forward_matrix(d, p.src.dimensions(), out_size);
    let mut members = vec![image_member];
    if let Some(c) = s.member("cls") {
        members.push(("cls".into(), c.to_vec()));
    }
    if let Some(t) = &p.target {
        let boxes: Vec<BoxLabel> = t.boxes.iter().filter_map(|b| transform_box(b, &m, out_size, if unchanged { 0.0 } else { spec.min_box_size })).collect();
        rep.boxes_out += boxes.len();
        rep.boxes_dropped += t.boxes.len() - boxes.len();
        let nt = DetectionTarget { width: out_size.0, height: out_size.1, boxes };
        members.push(("json".into(), serde_json::to_vec(&nt).expect("target serialises")));
    }
    if let Some(mk) = &p.mask {
        let warped = if unchanged { mk.clone() } else { augment_mask(mk, d, out_size) };
        members.push(("mask.png".into(), image_io::encode_png(&DynamicImage::ImageLuma8(warped)).map_err(bad)?));
    }
    rep.images_out += 1;
    Ok(RawSample { key: key.to_string(), members })
}

/// Augment a batch of samples: decode and plan in parallel, warp every variant with one
/// call of `warper` (one kernel launch on the GPU), then labels and encoding in parallel.
fn augment_batch(samples: &[RawSample], spec: &AugmentSpec, seed: u64, warper: &Warper<'_>) -> Result<(Vec<RawSample>, AugmentReport), DataError> {
    let planned: Vec<Planned<'_>> = samples.par_iter().map(|s| plan(s, spec, seed)).collect::<Result<_, _>>()?;
    let mut jobs = Vec::new();
    for p in &planned {
        for (_, d, out, unchanged) in &p.variants {
            if !unchanged {
                jobs.push((&p.src, *d, *out));
            }
        }
    }
    let mut warped = warper(&jobs).map_err(DataError::Invalid)?.into_iter();
    let mut work = Vec::new();
    for (pi, p) in planned.iter().enumerate() {
        for (vi, (_, _, _, unchanged)) in p.variants.iter().enumerate() {
            let img = if *unchanged { None } else { warped.next() };
            work.push((pi, vi, img));
        }
    }
    let results: Vec<(RawSample, AugmentReport)> = work
        .into_par_iter()
        .map(|(pi, vi, img)| {
            let p = &planned[pi];
            let (key, d, out, _) = &p.variants[vi];
            let mut rep = AugmentReport::default();
            let s = finish(p, key, d, *out, img, spec, &mut rep)?;
            Ok((s, rep))
        })
        .collect::<Result<_, DataError>>()?;
    let mut total = AugmentReport { images_in: samples.len(), ..Default::default() };
    total.boxes_in = planned.iter().map(|p| p.target.as_ref().map(|t| t.boxes.len()).unwrap_or(0)).sum();
    let mut out = Vec::with_capacity(results.len());
    for (s, r) in results {
        total.images_out += r.images_out;
        total.boxes_out += r.boxes_out;
        total.boxes_dropped += r.boxes_dropped;
        out.push(s);
    }
    Ok((out, total))
}

/// Augment a dataset artifact into `out` (same layout: shards + `dataset.json`).
pub fn augment_dataset(input: &Path, out: &Path, spec: &AugmentSpec, seed: u64, shard_max_bytes: u64, warper: &Warper<'_>) -> Result<(DatasetManifest, AugmentReport), DataError> {
    let mpath = input.join("dataset.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| DataError::io(format!("cannot read `{}` (the input must be a dataset made by `convert`)", mpath.display()), e))?;
    let mut manifest: DatasetManifest = serde_json::from_str(&text).map_err(|e| DataError::Invalid(format!("`{}` is not a dataset manifest: {e}", mpath.display())))?;
    for s in &spec.splits {
        if !manifest.splits.contains_key(s) {
            return Err(DataError::Invalid(format!(
                "the input dataset has no split `{s}` to augment (it has: {})",
                manifest.splits.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut total = AugmentReport::default();
    let mut new_splits = BTreeMap::new();
    for (split, info) in &manifest.splits {
        let augment = spec.splits.contains(split);
        let mut writer = ShardWriter::new(out, split, shard_max_bytes, 10_000);
        let mut ninfo = SplitInfo::default();
        for sh in &info.shards {
            let mut samples = Vec::new();
            ShardReader::open(&input.join(sh))?.for_each(|s| {
                samples.push(s);
                Ok(())
            })?;
            for chunk in samples.chunks(64) {
                let results: Vec<(Vec<RawSample>, AugmentReport)> = if augment {
                    vec![augment_batch(chunk, spec, seed, warper)?]
                } else {
                    vec![(chunk.to_vec(), AugmentReport { images_in: chunk.len(), images_out: chunk.len(), ..Default::default() })]
                };
                for (outs, rep) in results {
                    total.images_in += rep.images_in;
                    total.images_out += rep.images_out;
                    total.boxes_in += rep.boxes_in;
                    total.boxes_out += rep.boxes_out;
                    total.boxes_dropped += rep.boxes_dropped;
                    for o in outs {
                        count_sample(&o, &manifest.classes, &mut ninfo);
                        writer.write(&o)?;
                    }
                }
            }
        }
        ninfo.shards = writer.finish()?;
        new_splits.insert(split.clone(), ninfo);
    }
    manifest.splits = new_splits;
    manifest.warnings.push(format!(
        "augmented {} with {} cop(y/ies) per image{}: {} -> {} images, boxes {} -> {} ({} dropped as too small or outside)",
        spec.splits.join(", "),
        spec.copies,
        if spec.keep_originals { " plus the originals" } else { "" },
        total.images_in,
        total.images_out,
        total.boxes_in,
        total.boxes_out,
        total.boxes_dropped
    ));
    if let Some((w, h)) = spec.output {
        manifest.image.width = super::MinMaxMean { min: w, max: w, mean: w as f64 };
        manifest.image.height = super::MinMaxMean { min: h, max: h, mean: h as f64 };
    }
    let mut bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    bytes.push(b'\n');
    std::fs::write(out.join("dataset.json"), bytes).map_err(|e| DataError::io("cannot write dataset.json", e))?;
    Ok((manifest, total))
}

fn count_sample(s: &RawSample, classes: &[String], info: &mut SplitInfo) {
    info.count += 1;
    if let Some(c) = s.member("cls").and_then(|b| std::str::from_utf8(b).ok()).and_then(|t| t.trim().parse::<usize>().ok())
        && let Some(name) = classes.get(c)
    {
        *info.per_class.entry(name.clone()).or_default() += 1;
    }
    if let Some(t) = s.member("json").and_then(|j| serde_json::from_slice::<DetectionTarget>(j).ok()) {
        let mut seen = Vec::new();
        for b in &t.boxes {
            *info.boxes_per_class.entry(b.class.clone()).or_default() += 1;
            if !seen.contains(&b.class) {
                seen.push(b.class.clone());
                *info.per_class.entry(b.class.clone()).or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw() -> Draw {
        Draw { blur_size: 5, ..Draw::identity() }
    }

    fn bx(b: [f32; 4]) -> BoxLabel {
        BoxLabel { class: "car".into(), class_id: 0, bbox: b }
    }

    #[test]
    fn box_under_90_degree_rotation() {
        // A 100x100 image rotated by 90 degrees about its centre.
        let d = Draw { rotation: std::f64::consts::FRAC_PI_2, ..draw() };
        let m = forward_matrix(&d, (100, 100), (100, 100));
        let b = transform_box(&bx([10.0, 20.0, 30.0, 60.0]), &m, (100, 100), 0.0).unwrap();
        // Counter-clockwise on screen: (x, y) -> (y, 100 - x).
        assert_eq!(b.bbox, [20.0, 70.0, 60.0, 90.0]);
    }

    #[test]
    fn shear_translation_flip_and_resize() {
        let d = Draw { translate_x: 5.0, translate_y: -3.0, ..draw() };
        let m = forward_matrix(&d, (100, 50), (100, 50));
        assert_eq!(transform_box(&bx([10.0, 10.0, 20.0, 20.0]), &m, (100, 50), 0.0).unwrap().bbox, [15.0, 7.0, 25.0, 17.0]);
        let d = Draw { shear_x: 0.5, ..draw() };
        let m = forward_matrix(&d, (100, 100), (100, 100));
        // x' = x + 0.5 (y - 50): the box's corners at y = 40 and y = 60 shift by -5 and +5.
        assert_eq!(transform_box(&bx([40.0, 40.0, 60.0, 60.0]), &m, (100, 100), 0.0).unwrap().bbox, [35.0, 40.0, 65.0, 60.0]);
        let d = Draw { flip_h: true, ..draw() };
        let m = forward_matrix(&d, (100, 100), (200, 50));
        assert_eq!(transform_box(&bx([10.0, 10.0, 30.0, 20.0]), &m, (200, 50), 0.0).unwrap().bbox, [140.0, 5.0, 180.0, 10.0]);
        // Boxes pushed out of the image are dropped; partly outside ones are clipped.
        let d = Draw { translate_x: 95.0, ..draw() };
        let m = forward_matrix(&d, (100, 100), (100, 100));
        assert!(transform_box(&bx([10.0, 10.0, 20.0, 20.0]), &m, (100, 100), 2.0).is_none());
        assert_eq!(transform_box(&bx([0.0, 0.0, 8.0, 20.0]), &m, (100, 100), 2.0).unwrap().bbox, [95.0, 0.0, 100.0, 20.0]);
        // The inverse undoes the forward matrix.
        let inv = m.invert().unwrap();
        let (x, y) = inv.apply(m.apply(3.0, 7.0).0, m.apply(3.0, 7.0).1);
        assert!((x - 3.0).abs() < 1e-9 && (y - 7.0).abs() < 1e-9);
    }

    #[test]
    fn identity_warp_keeps_pixels_and_flip_mirrors() {
        let src = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 200]));
        assert_eq!(augment_rgb(&src, &draw(), (7, 5)), src);
        let f = augment_rgb(&src, &Draw { flip_h: true, ..draw() }, (7, 5));
        assert_eq!(f.get_pixel(0, 2), src.get_pixel(6, 2));
        let mask = GrayImage::from_fn(7, 5, |x, _| image::Luma([x as u8]));
        let fm = augment_mask(&mask, &Draw { flip_h: true, ..draw() }, (7, 5));
        assert_eq!(fm.get_pixel(0, 0).0[0], 6);
    }

    #[test]
    fn colour_round_trips() {
        // Hue by 360 degrees and saturation 1 is the identity; hue +a then -a too.
        let id = color_matrix(360.0, 1.0);
        let a = color_matrix(40.0, 1.0);
        let b = color_matrix(-40.0, 1.0);
        let px = [200.0, 30.0, 90.0];
        let apply = |m: [[f64; 3]; 3], p: [f64; 3]| [0, 1, 2].map(|i| m[i][0] * p[0] + m[i][1] * p[1] + m[i][2] * p[2]);
        let r = apply(id, px);
        let r2 = apply(b, apply(a, px));
        for c in 0..3 {
            assert!((r[c] - px[c]).abs() < 0.05, "{r:?}");
            assert!((r2[c] - px[c]).abs() < 0.05, "{r2:?}");
        }
        // Saturation 0 gives grey (all channels equal luma).
        let g = apply(color_matrix(0.0, 0.0), px);
        assert!((g[0] - g[1]).abs() < 0.01 && (g[1] - g[2]).abs() < 0.01);
        // Contrast 1 and brightness 0 leave pixels alone; brightness shifts every channel.
        let src = RgbImage::from_fn(3, 3, |x, _| image::Rgb([x as u8 * 50, 100, 20]));
        let br = augment_rgb(&src, &Draw { brightness: 10.0, ..draw() }, (3, 3));
        assert_eq!(br.get_pixel(1, 1).0, [60, 110, 30]);
    }

    #[test]
    fn draws_are_deterministic_per_key_and_copy() {
        let spec = AugmentSpec { rotation: Param::Range(-0.3, 0.3), zoom: Param::Range(0.8, 1.2), flip_horizontal: 0.5, ..Default::default() };
        assert_eq!(spec.draw(1, "a", 0), spec.draw(1, "a", 0));
        assert_ne!(spec.draw(1, "a", 0), spec.draw(1, "a", 1));
        assert_ne!(spec.draw(1, "a", 0), spec.draw(1, "b", 0));
        assert_ne!(spec.draw(1, "a", 0), spec.draw(2, "a", 0));
        let d = spec.draw(9, "k", 3);
        assert!((-0.3..=0.3).contains(&d.rotation) && (0.8..=1.2).contains(&d.zoom));
    }
}
