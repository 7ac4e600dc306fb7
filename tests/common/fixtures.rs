//! Small datasets made in the tests, one per source format.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use image::{DynamicImage, GrayImage, Rgb, RgbImage};

pub fn rgb(w: u32, h: u32, seed: u8) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + seed as u32) as u8, (y * 5 + seed as u32 * 3) as u8, seed.wrapping_mul(11)])))
}

pub fn grey(w: u32, h: u32, seed: u8) -> DynamicImage {
    DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 9 + y * 3 + seed as u32) as u8])))
}

pub fn save(img: &DynamicImage, path: &Path, fmt: image::ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = if fmt == image::ImageFormat::Jpeg { DynamicImage::ImageRgb8(img.to_rgb8()) } else { img.clone() };
    img.save_with_format(path, fmt).unwrap();
}

/// `root/{cat,dog,bird}/…`: 6 images per class in PNG (colour and grey), JPEG, BMP, TIFF.
pub fn image_folder(root: &Path) {
    use image::ImageFormat::*;
    for (ci, class) in ["cat", "dog", "bird"].iter().enumerate() {
        for i in 0..6u8 {
            let seed = ci as u8 * 10 + i;
            let (img, ext, fmt) = match i % 5 {
                0 => (rgb(40, 30, seed), "png", Png),
                1 => (grey(24, 24, seed), "png", Png),
                2 => (rgb(32, 32, seed), "jpg", Jpeg),
                3 => (rgb(20, 28, seed), "bmp", Bmp),
                _ => (rgb(36, 20, seed), "tif", Tiff),
            };
            save(&img, &root.join(class).join(format!("img{i}.{ext}")), fmt);
        }
    }
}

/// IDX images + labels (gzip when `gz`): `n` images of `w`x`h`, labels cycle 0..classes.
pub fn idx(root: &Path, stem: &str, n: usize, w: u32, h: u32, classes: u8, gz: bool) {
    std::fs::create_dir_all(root).unwrap();
    let mut img = vec![0, 0, 8, 3];
    img.extend((n as u32).to_be_bytes());
    img.extend(h.to_be_bytes());
    img.extend(w.to_be_bytes());
    for i in 0..n {
        img.extend((0..w * h).map(|p| ((p as usize * 3 + i * 17) % 256) as u8));
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((n as u32).to_be_bytes());
    lab.extend((0..n).map(|i| (i % classes as usize) as u8));
    let write = |name: String, bytes: Vec<u8>| {
        if gz {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&bytes).unwrap();
            std::fs::write(root.join(format!("{name}.gz")), e.finish().unwrap()).unwrap();
        } else {
            std::fs::write(root.join(name), bytes).unwrap();
        }
    };
    write(format!("{stem}-images-idx3-ubyte"), img);
    write(format!("{stem}-labels-idx1-ubyte"), lab);
}

/// A KITTI dataset: `n` images with the given label lines per image.
pub fn kitti(root: &Path, labels: &[&str], w: u32, h: u32) {
    for (i, text) in labels.iter().enumerate() {
        save(&rgb(w, h, i as u8), &root.join(format!("image_2/{i:06}.png")), image::ImageFormat::Png);
        std::fs::create_dir_all(root.join("label_2")).unwrap();
        std::fs::write(root.join(format!("label_2/{i:06}.txt")), text).unwrap();
    }
}

pub fn kitti_line(class: &str, b: [f32; 4]) -> String {
    format!("{class} 0.00 0 -10 {:.2} {:.2} {:.2} {:.2} -1 -1 -1 -1000 -1000 -1000 -10\n", b[0], b[1], b[2], b[3])
}

/// A palette PNG mask of class indices.
pub fn palette_mask(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(vec![0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]);
    let mut wr = enc.write_header().unwrap();
    let data: Vec<u8> = (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect();
    wr.write_image_data(&data).unwrap();
}

/// `root/images/*.png|jpg` + `root/masks/*.png`, palette masks for some, grey for others.
pub fn segmentation(root: &Path, n: usize) {
    for i in 0..n {
        let (w, h) = (32, 24);
        let fmt = if i % 2 == 0 { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
        let ext = if i % 2 == 0 { "png" } else { "jpg" };
        save(&rgb(w, h, i as u8), &root.join(format!("images/s{i}.{ext}")), fmt);
        let m = root.join(format!("masks/s{i}.png"));
        if i % 2 == 0 {
            palette_mask(&m, w, h, |x, _| if x < 10 { 0 } else if x < 20 { 1 } else { 2 });
        } else {
            save(&DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |_, y| image::Luma([if y < 12 { 0 } else { 1 }]))), &m, image::ImageFormat::Png);
        }
    }
}

/// COCO: `images/*.png` and `annotations.json` with two categories.
pub fn coco(root: &Path) {
    let mut images = Vec::new();
    let mut anns = Vec::new();
    for i in 0..6u64 {
        let name = format!("im{i}.png");
        save(&rgb(50, 40, i as u8), &root.join("images").join(&name), image::ImageFormat::Png);
        images.push(serde_json::json!({"id": 100 + i, "file_name": name, "width": 50, "height": 40}));
        anns.push(serde_json::json!({"id": i * 2, "image_id": 100 + i, "category_id": 1 + i % 2, "bbox": [5.0, 5.0, 20.0, 10.0], "iscrowd": 0}));
        anns.push(serde_json::json!({"id": i * 2 + 1, "image_id": 100 + i, "category_id": 2, "bbox": [10.0, 12.0, 30.0, 20.0], "iscrowd": 0}));
    }
    let cats = serde_json::json!([{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]);
    let doc = serde_json::json!({"images": images, "annotations": anns, "categories": cats});
    std::fs::write(root.join("annotations.json"), serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

/// Three classes of 16×16 RGB images that a small network separates easily: a bright left
/// half, a bright right half, horizontal stripes; with per-image noise.
pub fn learnable(root: &Path, per_class: usize) {
    let mut state = 0x1234_5678u32;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 60) as u8
    };
    for (ci, class) in ["left", "right", "stripes"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                let on = match ci {
                    0 => x < 8,
                    1 => x >= 8,
                    _ => (y / 2) % 2 == 0,
                };
                let base = if on { 180 } else { 20 };
                image::Rgb([base + noise(), base + noise(), base + noise()])
            });
            img.save(root.join(class).join(format!("{i:03}.png"))).unwrap();
        }
    }
}
