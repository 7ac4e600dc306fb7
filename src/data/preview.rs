//! Draw the labels of a few samples onto their images, so a person can check them: boxes
//! as coloured outlines with the class colour, masks as a tint.

use std::path::Path;

use image::{DynamicImage, Rgb, RgbImage};

use super::image_io;
use super::loader::Dataset;
use super::shards::ShardReader;
use super::{DataError, DetectionTarget};

const COLOURS: [[u8; 3]; 8] = [[255, 60, 60], [60, 220, 60], [60, 120, 255], [255, 220, 0], [255, 0, 255], [0, 255, 255], [255, 140, 0], [160, 255, 160]];

pub(crate) fn outline(img: &mut RgbImage, b: [f32; 4], c: [u8; 3]) {
    let (w, h) = img.dimensions();
    let x1 = (b[0].floor().max(0.0) as u32).min(w - 1);
    let y1 = (b[1].floor().max(0.0) as u32).min(h - 1);
    let x2 = (b[2].ceil() as u32).clamp(1, w) - 1;
    let y2 = (b[3].ceil() as u32).clamp(1, h) - 1;
    for x in x1..=x2 {
        img.put_pixel(x, y1, Rgb(c));
        img.put_pixel(x, y2, Rgb(c));
    }
    for y in y1..=y2 {
        img.put_pixel(x1, y, Rgb(c));
        img.put_pixel(x2, y, Rgb(c));
    }
}

/// Write `count` PNGs of `split` with their labels drawn into `out`. Returns the file names.
pub fn preview(dataset: &Path, split: &str, count: usize, out: &Path) -> Result<Vec<String>, DataError> {
    let ds = Dataset::open(dataset)?;
    let info = ds.manifest.splits.get(split).ok_or_else(|| DataError::Invalid(format!("the dataset has no split `{split}`")))?;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(format!("cannot create `{}`", out.display()), e))?;
    let mut written = Vec::new();
    for sh in &info.shards {
        if written.len() >= count {
            break;
        }
        ShardReader::open(&dataset.join(sh))?.for_each(|s| {
            if written.len() >= count {
                return Ok(());
            }
            let bytes = s.member("png").or_else(|| s.member("jpg")).ok_or_else(|| DataError::Invalid(format!("sample `{}` has no image", s.key)))?;
            let mut img = image_io::decode(bytes).map_err(DataError::Invalid)?.to_rgb8();
            if let Some(m) = s.member("mask.png") {
                let mask = image_io::decode(m).map_err(DataError::Invalid)?.to_luma8();
                for (x, y, p) in img.enumerate_pixels_mut() {
                    let v = mask.get_pixel(x.min(mask.width() - 1), y.min(mask.height() - 1)).0[0];
                    if v != 255 && v > 0 {
                        let c = COLOURS[v as usize % COLOURS.len()];
                        p.0 = [0, 1, 2].map(|i| ((p.0[i] as u16 + c[i] as u16) / 2) as u8);
                    }
                }
            }
            if let Some(j) = s.member("json") {
                let t: DetectionTarget = serde_json::from_slice(j).map_err(|e| DataError::Invalid(format!("sample `{}`: {e}", s.key)))?;
                for b in &t.boxes {
                    outline(&mut img, b.bbox, COLOURS[b.class_id as usize % COLOURS.len()]);
                }
            }
            let name = format!("{}.png", s.key.replace('/', "_"));
            DynamicImage::ImageRgb8(img).save(out.join(&name)).map_err(|e| DataError::Invalid(format!("cannot write `{name}`: {e}")))?;
            written.push(name);
            Ok(())
        })?;
    }
    Ok(written)
}
