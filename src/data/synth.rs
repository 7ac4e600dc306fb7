//! Synthetic detection data: textured backgrounds with shapes of several classes, written
//! as a KITTI dataset (`image_2/*.png`, `label_2/*.txt`). Deterministic for a seed.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::rng::Rng;
use super::DataError;

#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub count: usize,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub max_objects: usize,
    /// Class names; shape and colour follow the position in this list.
    pub classes: Vec<String>,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec { count: 100, width: 320, height: 128, seed: 0, max_objects: 5, classes: vec!["car".into(), "pedestrian".into(), "cyclist".into()] }
    }
}

/// Smooth value noise on a coarse grid, bilinearly interpolated.
fn background(rng: &mut Rng, w: u32, h: u32) -> RgbImage {
    let cell = 16u32;
    let gw = w / cell + 2;
    let gh = h / cell + 2;
    let base: [f64; 3] = [rng.f64() * 120.0 + 40.0, rng.f64() * 120.0 + 40.0, rng.f64() * 120.0 + 40.0];
    let grid: Vec<f64> = (0..gw * gh).map(|_| rng.f64() * 60.0 - 30.0).collect();
    let fine: Vec<f64> = (0..w * h).map(|_| rng.f64() * 16.0 - 8.0).collect();
    let grad = rng.f64() * 60.0;
    RgbImage::from_fn(w, h, |x, y| {
        let gx = x as f64 / cell as f64;
        let gy = y as f64 / cell as f64;
        let (x0, y0) = (gx.floor() as u32, gy.floor() as u32);
        let (fx, fy) = (gx - x0 as f64, gy - y0 as f64);
        let g = |i: u32, j: u32| grid[(j * gw + i) as usize];
        let v = g(x0, y0) * (1.0 - fx) * (1.0 - fy) + g(x0 + 1, y0) * fx * (1.0 - fy) + g(x0, y0 + 1) * (1.0 - fx) * fy + g(x0 + 1, y0 + 1) * fx * fy;
        let t = v + fine[(y * w + x) as usize] + grad * y as f64 / h as f64;
        Rgb([0, 1, 2].map(|c| (base[c] + t).clamp(0.0, 255.0) as u8))
    })
}

const COLOURS: [[u8; 3]; 6] = [[30, 60, 220], [220, 40, 40], [40, 200, 60], [230, 200, 30], [200, 40, 200], [30, 200, 210]];

/// Draw a shape of class `k` inside the box; returns the box actually covered.
fn draw(img: &mut RgbImage, k: usize, b: [u32; 4], rng: &mut Rng) {
    let [x1, y1, x2, y2] = b;
    let base = COLOURS[k % COLOURS.len()];
    let jitter = |c: u8, r: &mut Rng| (c as f64 + r.f64() * 40.0 - 20.0).clamp(0.0, 255.0) as u8;
    let col = Rgb([jitter(base[0], rng), jitter(base[1], rng), jitter(base[2], rng)]);
    let (cx, cy) = ((x1 + x2) as f64 / 2.0, (y1 + y2) as f64 / 2.0);
    let (rx, ry) = ((x2 - x1) as f64 / 2.0, (y2 - y1) as f64 / 2.0);
    for y in y1..y2 {
        for x in x1..x2 {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let inside = match k % 3 {
                // Rectangle with a darker band (a "car").
                0 => true,
                // Ellipse (a "pedestrian").
                1 => ((px - cx) / rx).powi(2) + ((py - cy) / ry).powi(2) <= 1.0,
                // Triangle pointing up (a "cyclist").
                _ => {
                    let t = (py - y1 as f64) / (y2 - y1) as f64;
                    (px - cx).abs() <= rx * t
                }
            };
            if inside {
                let dark = k.is_multiple_of(3) && y > y1 + (y2 - y1) / 4 && y < y1 + (y2 - y1) / 2;
                let c = if dark { Rgb(col.0.map(|v| v / 2)) } else { col };
                img.put_pixel(x, y, c);
            }
        }
    }
}

/// Write `spec.count` images and labels under `out` (`image_2/`, `label_2/`). Returns the
/// number of boxes written.
pub fn kitti(out: &Path, spec: &SynthSpec) -> Result<usize, DataError> {
    if spec.width < 32 || spec.height < 32 {
        return Err(DataError::Invalid("synthetic images must be at least 32x32".into()));
    }
    if spec.classes.is_empty() {
        return Err(DataError::Invalid("at least one class is needed".into()));
    }
    let img_dir = out.join("image_2");
    let lab_dir = out.join("label_2");
    for d in [&img_dir, &lab_dir] {
        std::fs::create_dir_all(d).map_err(|e| DataError::io(format!("cannot create `{}`", d.display()), e))?;
    }
    let mut total = 0;
    for i in 0..spec.count {
        let mut rng = Rng::for_purpose(spec.seed.wrapping_add(i as u64), "synth/kitti");
        let mut img = background(&mut rng, spec.width, spec.height);
        let n = 1 + rng.below(spec.max_objects.max(1) as u64) as usize;
        let mut lines = String::new();
        for _ in 0..n {
            let k = rng.below(spec.classes.len() as u64) as usize;
            let (minw, minh) = (12u32, 12u32);
            let bw = minw + rng.below((spec.width / 4).max(minw) as u64) as u32;
            let bh = match k % 3 {
                1 => (bw as f64 * (1.5 + rng.f64())) as u32,
                _ => minh + rng.below((spec.height / 3).max(minh) as u64) as u32,
            }
            .min(spec.height - 2);
            let bw = bw.min(spec.width - 2);
            let x1 = rng.below((spec.width - bw) as u64) as u32;
            let y1 = rng.below((spec.height - bh) as u64) as u32;
            draw(&mut img, k, [x1, y1, x1 + bw, y1 + bh], &mut rng);
            lines.push_str(&format!(
                "{} 0.00 0 -10 {:.2} {:.2} {:.2} {:.2} -1 -1 -1 -1000 -1000 -1000 -10\n",
                spec.classes[k],
                x1 as f32,
                y1 as f32,
                (x1 + bw) as f32,
                (y1 + bh) as f32
            ));
            total += 1;
        }
        let name = format!("{i:06}");
        img.save(img_dir.join(format!("{name}.png"))).map_err(|e| DataError::Invalid(format!("cannot write image: {e}")))?;
        std::fs::write(lab_dir.join(format!("{name}.txt")), lines).map_err(|e| DataError::io("cannot write a label", e))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_valid() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let spec = SynthSpec { count: 3, width: 96, height: 64, ..Default::default() };
        let n = kitti(a.path(), &spec).unwrap();
        assert!(n >= 3);
        kitti(b.path(), &spec).unwrap();
        for f in ["image_2/000001.png", "label_2/000002.txt"] {
            assert_eq!(std::fs::read(a.path().join(f)).unwrap(), std::fs::read(b.path().join(f)).unwrap());
        }
        let text = std::fs::read_to_string(a.path().join("label_2/000000.txt")).unwrap();
        let boxes = crate::data::formats::parse_kitti_label(&text, "x").unwrap();
        for (_, bx, _) in boxes {
            assert!(bx[0] >= 0.0 && bx[2] <= 96.0 && bx[1] >= 0.0 && bx[3] <= 64.0 && bx[2] > bx[0]);
        }
    }
}
