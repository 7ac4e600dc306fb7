//! A picture of what a detector did: a grid of images with their ground truth (green) and
//! the detections at or above a score (red) drawn on them.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::Detections;

const GT: [u8; 3] = [40, 200, 60];
const DET: [u8; 3] = [230, 40, 40];

/// Where the image of `name` (a COCO `file_name`, or a KITTI stem) is under `dir`.
pub fn find_image(dir: &Path, name: &str) -> Option<PathBuf> {
    let direct = dir.join(name);
    if direct.is_file() {
        return Some(direct);
    }
    ["png", "jpg", "jpeg", "bmp", "tif", "tiff"].iter().map(|e| dir.join(format!("{name}.{e}"))).find(|p| p.is_file())
}

/// Two-pixel outline of `b` (`[x1, y1, x2, y2]`).
fn thick(img: &mut RgbImage, b: [f32; 4], c: [u8; 3]) {
    crate::data::preview::outline(img, b, c);
    let (w, h) = (img.width() as f32, img.height() as f32);
    let inner = [(b[0] + 1.0).min(w - 1.0), (b[1] + 1.0).min(h - 1.0), (b[2] - 1.0).max(b[0] + 1.0), (b[3] - 1.0).max(b[1] + 1.0)];
    crate::data::preview::outline(img, inner, c);
}

/// Where the pictures of the evaluated images come from.
#[derive(Debug, Clone)]
pub enum Images {
    /// Files under a folder ([`find_image`]).
    Dir(PathBuf),
    /// Images in memory by image index, each with the factors from box coordinates to its
    /// pixels (the `evaluate` stage keeps the model-input-sized images it ran on).
    Memory(std::collections::HashMap<usize, (RgbImage, [f32; 2])>),
}

/// Up to `count` images (in evaluation order, those with ground truth or detections first)
/// in a grid of `cell`-pixel squares, 4 a row. Images that cannot be found or read are
/// skipped; `Err` when none can.
pub fn draw(d: &Detections, images: &Images, count: usize, min_score: f64, cell: u32) -> Result<RgbImage, String> {
    let mut has = vec![false; d.images.len()];
    d.gts.iter().map(|g| g.image).chain(d.dets.iter().map(|t| t.image)).for_each(|i| has[i] = true);
    let busy: Vec<usize> = (0..d.images.len()).filter(|i| has[*i]).chain((0..d.images.len()).filter(|i| !has[*i])).collect();
    let mut cells = Vec::new();
    let mut missing = Vec::new();
    for i in busy {
        if cells.len() >= count {
            break;
        }
        let (img, pre) = match images {
            Images::Dir(dir) => {
                let Some(path) = find_image(dir, &d.images[i]) else {
                    missing.push(d.images[i].clone());
                    continue;
                };
                let Ok(img) = image::open(&path) else {
                    missing.push(path.display().to_string());
                    continue;
                };
                (img.to_rgb8(), [1.0, 1.0])
            }
            Images::Memory(m) => match m.get(&i) {
                Some((img, f)) => (img.clone(), *f),
                None => continue,
            },
        };
        let s = cell as f32 / img.width().max(img.height()) as f32;
        let (w, h) = (((img.width() as f32 * s).round() as u32).max(1), ((img.height() as f32 * s).round() as u32).max(1));
        let mut small = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
        let (sx, sy) = (s * pre[0], s * pre[1]);
        let sc = |b: &[f64; 4]| [(b[0] as f32) * sx, (b[1] as f32) * sy, ((b[0] + b[2]) as f32) * sx, ((b[1] + b[3]) as f32) * sy];
        for g in d.gts.iter().filter(|g| g.image == i) {
            thick(&mut small, sc(&g.bbox), GT);
        }
        for t in d.dets.iter().filter(|t| t.image == i && t.score >= min_score) {
            thick(&mut small, sc(&t.bbox), DET);
        }
        cells.push(small);
    }
    if cells.is_empty() {
        let Images::Dir(dir) = images else { return Err("no image to draw".into()) };
        return Err(format!(
            "none of the images was found in `{}` (first looked for: {})\n  = hint: `--images` is the folder the ground truth's file names (COCO) or stems (KITTI) are relative to",
            dir.display(),
            missing.first().map_or("-".to_string(), |m| format!("`{m}`"))
        ));
    }
    let cols = cells.len().min(4) as u32;
    let rows = (cells.len() as u32).div_ceil(cols);
    let gap = 4;
    let mut out = RgbImage::from_pixel(cols * (cell + gap) + gap, rows * (cell + gap) + gap, Rgb([255, 255, 255]));
    for (k, c) in cells.iter().enumerate() {
        let (x, y) = (gap + (k as u32 % cols) * (cell + gap), gap + (k as u32 / cols) * (cell + gap));
        image::imageops::overlay(&mut out, c, x as i64, y as i64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{DetBox, GtBox};
    use super::*;

    #[test]
    fn boxes_are_drawn_scaled_into_their_cell() {
        let dir = tempfile::tempdir().unwrap();
        RgbImage::from_pixel(200, 100, Rgb([0, 0, 0])).save(dir.path().join("a.png")).unwrap();
        let d = Detections {
            images: vec!["a".into(), "gone".into()],
            classes: vec!["car".into()],
            gts: vec![GtBox { image: 0, class: 0, bbox: [20.0, 20.0, 60.0, 40.0], area: 2400.0, iscrowd: false }],
            dets: vec![DetBox { image: 0, class: 0, bbox: [120.0, 40.0, 40.0, 40.0], score: 0.9 }, DetBox { image: 0, class: 0, bbox: [0.0, 0.0, 10.0, 10.0], score: 0.1 }],
        };
        let g = draw(&d, &Images::Dir(dir.path().to_path_buf()), 8, 0.5, 100).unwrap();
        // one cell of 100 px (the image halved), 4 px margins
        assert_eq!(g.dimensions(), (108, 108));
        // ground truth at (10, 10)-(40, 30) in the cell, the 0.9 detection at (60, 20)-(80, 40)
        assert_eq!(g.get_pixel(4 + 10, 4 + 20).0, GT);
        assert_eq!(g.get_pixel(4 + 60, 4 + 30).0, DET);
        // the 0.1 detection is below the score: not drawn
        assert_eq!(g.get_pixel(4 + 2, 4 + 4).0, [0, 0, 0]);
        let e = draw(&Detections { images: vec!["gone".into()], ..d.clone() }, &Images::Dir(dir.path().to_path_buf()), 8, 0.5, 100).unwrap_err();
        assert!(e.contains("`gone`"), "{e}");
    }
}
