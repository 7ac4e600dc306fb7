//! Loader throughput: decode + resize + normalise, on all cores.
//!
//!   cargo bench --bench loader            (writes its data under bench/work/loader/)
//!
//! Two cases from the data issue: 28x28 grey PNGs -> 64x64x3, and KITTI-sized 1242x375
//! colour JPEGs -> 1248x384x3. Prints one JSON object per case.

use std::path::{Path, PathBuf};
use std::time::Instant;

use taoflow::data::image_io::{encode_png, InputSpec};
use taoflow::data::loader::{Dataset, LoaderOptions};
use taoflow::data::shards::{RawSample, ShardWriter};
use taoflow::data::{DatasetManifest, ImageStats, Skipped, SplitInfo};

fn make(dir: &Path, n: usize, make_one: impl Fn(usize) -> (&'static str, Vec<u8>)) {
    if dir.join("dataset.json").exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut w = ShardWriter::new(dir, "train", 256 << 20, 100_000);
    for i in 0..n {
        let (ext, bytes) = make_one(i);
        w.write(&RawSample { key: format!("{i:07}"), members: vec![(ext.into(), bytes), ("cls".into(), (i % 10).to_string().into_bytes())] }).unwrap();
    }
    let shards = w.finish().unwrap();
    let m = DatasetManifest {
        version: 1,
        task: "classification".into(),
        source_format: "bench".into(),
        classes: (0..10).map(|i| i.to_string()).collect(),
        splits: [("train".to_string(), SplitInfo { count: n, shards, ..Default::default() })].into(),
        image: ImageStats::default(),
        skipped: Skipped::default(),
        filtered: 0,
        warnings: vec![],
    };
    std::fs::write(dir.join("dataset.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn measure(name: &str, dir: &Path, spec: &InputSpec, batch: usize) {
    let ds = Dataset::open(dir).unwrap();
    let opts = LoaderOptions { batch_size: batch, shuffle: true, seed: 1, epoch: 0, shuffle_buffer: 1024, prefetch: 4, drop_last: false, augment: None, ..Default::default() };
    // Warm the page cache once, then time one full epoch (best of 3).
    let mut best = f64::MAX;
    let mut n = 0;
    for round in 0..4 {
        let t0 = Instant::now();
        n = 0;
        for b in ds.stream("train", spec, &LoaderOptions { epoch: round, ..opts.clone() }).unwrap() {
            n += b.unwrap().len;
        }
        if round > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    let threads = rayon::current_num_threads();
    println!(
        "{{\"case\": \"{name}\", \"images\": {n}, \"seconds\": {best:.3}, \"images_per_s\": {:.0}, \"threads\": {threads}, \"batch\": {batch}}}",
        n as f64 / best
    );
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/work/loader");
    let small = root.join("fmnist-28");
    make(&small, 20_000, |i| {
        let img = image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 5 + i as u32 * 7) % 256) as u8])));
        ("png", encode_png(&img).unwrap())
    });
    let kitti = root.join("kitti-1242");
    make(&kitti, 400, |i| {
        let img = image::RgbImage::from_fn(1242, 375, |x, y| {
            let v = ((x as f32 / 40.0).sin() * 60.0 + (y as f32 / 25.0).cos() * 60.0 + 120.0) as u8;
            image::Rgb([v, v.wrapping_add(i as u8 * 3), 255 - v])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
        ("jpg", out)
    });
    measure("28x28 grey PNG -> 64x64x3", &small, &InputSpec::imagenet(64, 64), 256);
    measure("1242x375 JPEG -> 1248x384x3", &kitti, &InputSpec::imagenet(1248, 384), 16);
}
