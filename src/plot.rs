//! PNG plots without a font dependency: the training curves (loss and accuracy per epoch,
//! train in blue, validation in orange), drawn with the `image` crate and a 3×5 pixel font.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::model::train::EpochRecord;

const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);
const GREY: Rgb<u8> = Rgb([220, 220, 220]);
const BLACK: Rgb<u8> = Rgb([40, 40, 40]);

/// 3×5 glyphs, one row per 3-bit number (top to bottom).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'A' => [2, 5, 7, 5, 5],
        'C' => [7, 4, 4, 4, 7],
        'E' => [7, 4, 6, 4, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'L' => [4, 4, 4, 4, 7],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'Y' => [5, 5, 2, 2, 2],
        'B' => [6, 5, 6, 5, 6],
        'D' => [6, 5, 5, 5, 6],
        'F' => [7, 4, 6, 4, 4],
        'G' => [7, 4, 5, 5, 7],
        'J' => [1, 1, 1, 5, 7],
        'K' => [5, 5, 6, 5, 5],
        'M' => [5, 7, 7, 5, 5],
        'Q' => [7, 5, 5, 6, 3],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Z' => [7, 1, 2, 4, 7],
        '_' => [0, 0, 0, 0, 7],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '=' => [0, 7, 0, 7, 0],
        _ => return None,
    })
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64, color: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let Some(g) = glyph(c.to_ascii_uppercase()) else { continue };
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(img, x + (i as i64 * 4 + col) * scale + dx, y + row as i64 * scale + dy, color);
                        }
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(img, x as i64 + dx, y as i64 + dy, c);
        }
    }
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// Points of one line and its colour.
type Series = (Vec<(f64, f64)>, Rgb<u8>);

/// The x axis of a panel: its range, the labels at its ends and its name.
struct XAxis<'a> {
    lo: f64,
    hi: f64,
    lo_label: String,
    hi_label: String,
    name: &'a str,
}

impl XAxis<'_> {
    fn epochs(epochs: usize) -> XAxis<'static> {
        XAxis { lo: 1.0, hi: epochs as f64, lo_label: "1".into(), hi_label: epochs.to_string(), name: "EPOCH" }
    }
}

/// One panel: a title, y ticks, and series of (x, value).
fn panel(img: &mut RgbImage, x0: i64, title: &str, series: &[Series], xa: &XAxis, fixed: Option<(f64, f64)>) {
    let (w, h) = (360i64, 300i64);
    let (left, top, pw, ph) = (x0 + 50, 30i64, w - 70, h - 70);
    text(img, x0 + 50, 8, title, 2, BLACK);
    let vals: Vec<f64> = series.iter().flat_map(|(s, _)| s.iter().map(|p| p.1)).filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = fixed.unwrap_or_else(|| (vals.iter().cloned().fold(f64::INFINITY, f64::min), vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)));
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let y = top + ph - (ph as f64 * k as f64 / 4.0) as i64;
        line(img, (left as f64, y as f64), ((left + pw) as f64, y as f64), GREY);
        text(img, x0 + 4, y - 5, &fmt_tick(v), 2, BLACK);
    }
    line(img, (left as f64, top as f64), (left as f64, (top + ph) as f64), BLACK);
    line(img, (left as f64, (top + ph) as f64), ((left + pw) as f64, (top + ph) as f64), BLACK);
    let ex = |e: f64| left as f64 + pw as f64 * if xa.hi > xa.lo { (e - xa.lo) / (xa.hi - xa.lo) } else { 0.5 };
    let ey = |v: f64| (top + ph) as f64 - ph as f64 * ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    text(img, left, top + ph + 8, &xa.lo_label, 2, BLACK);
    text(img, left + pw - 8 * xa.hi_label.len() as i64, top + ph + 8, &xa.hi_label, 2, BLACK);
    text(img, left + pw / 2 - 4 * xa.name.len() as i64, top + ph + 24, xa.name, 2, BLACK);
    for (s, c) in series {
        for win in s.windows(2) {
            line(img, (ex(win[0].0), ey(win[0].1)), (ex(win[1].0), ey(win[1].1)), *c);
        }
        for p in s {
            let (x, y) = (ex(p.0) as i64, ey(p.1) as i64);
            for dy in -2..=2 {
                for dx in -2..=2 {
                    put(img, x + dx, y + dy, *c);
                }
            }
        }
    }
}

/// Loss (left) and accuracy (right) per epoch; train blue, validation orange.
pub fn training_curves(h: &[EpochRecord], path: &Path) -> Result<(), String> {
    let mut img = RgbImage::from_pixel(740, 330, Rgb([255, 255, 255]));
    let epochs = h.last().map(|r| r.epoch).unwrap_or(1);
    let tl: Vec<(f64, f64)> = h.iter().map(|r| (r.epoch as f64, r.train_loss)).collect();
    let vl: Vec<(f64, f64)> = h.iter().filter_map(|r| r.val_loss.map(|v| (r.epoch as f64, v))).collect();
    let ta: Vec<(f64, f64)> = h.iter().filter_map(|r| r.train_accuracy.map(|v| (r.epoch as f64, v))).collect();
    let va: Vec<(f64, f64)> = h.iter().filter_map(|r| r.val_accuracy.map(|v| (r.epoch as f64, v))).collect();
    panel(&mut img, 0, "LOSS", &[(tl, BLUE), (vl, ORANGE)], &XAxis::epochs(epochs), None);
    panel(&mut img, 370, "ACCURACY", &[(ta, BLUE), (va, ORANGE)], &XAxis::epochs(epochs), Some((0.0, 1.0)));
    text(&mut img, 560, 8, "TRAIN", 2, BLUE);
    text(&mut img, 640, 8, "VAL", 2, ORANGE);
    img.save(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Ten distinguishable colours (matplotlib's tab10), for one series per class.
pub const PALETTE: [Rgb<u8>; 10] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
];

/// Precision-recall curves, one per class (name with its AP in the legend), over `recall`.
pub fn pr_curves(title: &str, recall: &[f64], curves: &[(String, f64, Vec<f64>)], path: &Path) -> Result<(), String> {
    let rows = curves.len().max(1) as u32;
    let mut img = RgbImage::from_pixel(740, 330.max(40 + 16 * rows), Rgb([255, 255, 255]));
    let series: Vec<Series> = curves.iter().enumerate().map(|(i, (_, _, p))| (recall.iter().cloned().zip(p.iter().cloned()).collect(), PALETTE[i % PALETTE.len()])).collect();
    let xa = XAxis { lo: 0.0, hi: 1.0, lo_label: "0".into(), hi_label: "1".into(), name: "RECALL" };
    panel(&mut img, 0, title, &series, &xa, Some((0.0, 1.0)));
    for (i, (name, ap, _)) in curves.iter().enumerate() {
        let label = format!("{name} {ap:.3}");
        text(&mut img, 370, 30 + 16 * i as i64, &label, 2, PALETTE[i % PALETTE.len()]);
    }
    let png = crate::data::image_io::encode_png(&image::DynamicImage::ImageRgb8(img))?;
    crate::store::write_atomic(path, &png).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
