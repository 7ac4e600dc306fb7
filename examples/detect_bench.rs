//! GPU speed of a DetectNet_v2 detector on the libtorch engine (bench/gpu/detect.sh runs it
//! next to the PyTorch peer, bench/gpu/detect_torch.py). Prints one JSON line.
//!
//! ```text
//! detect_bench BACKBONE WIDTH HEIGHT BATCH PRECISION STEPS
//! ```
//! Trains on synthetic images with 2-6 boxes each of 3 classes (TAO's cost; SGD with
//! momentum): `train_img_s` with images and targets already on the GPU, as the PyTorch peer
//! does; `train_from_host_img_s` as the train stage does (f32 images copied and targets
//! rasterised on the CPU at every step; issue #27 is about closing that gap). Then times
//! inference (both outputs, no post-processing, the engine's precision) at the same batch.

use std::time::Instant;

use taoflow::data::image_io::InputSpec;
use taoflow::data::loader::Batch;
use taoflow::data::BoxLabel;
use taoflow::model::net::{GraphNet, WeightData};
use taoflow::model::optim::{OptimConfig, OptimKind};
use taoflow::model::torch::{Precision, Runtime, TorchEngine, TorchNet};
use taoflow::model::train::{Engine, TrainConfig};

type B = burn::backend::NdArray<f32>;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (backbone, w, h, batch, prec, steps) = (a[1].as_str(), a[2].parse::<u32>().unwrap(), a[3].parse::<u32>().unwrap(), a[4].parse::<usize>().unwrap(), a[5].as_str(), a[6].parse::<usize>().unwrap());
    let classes: Vec<String> = ["car", "pedestrian", "cyclist"].iter().map(|s| s.to_string()).collect();
    let g = taoflow::model::builders::detectnet_v2(backbone, 1.0, InputSpec::plain(w, h, 3), classes.clone()).unwrap();
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 1);
    let weights: std::collections::HashMap<String, WeightData> = GraphNet::<B>::new(&g, &device).unwrap().export_weights().unwrap().into_iter().collect();
    let precision = Precision::parse(prec).unwrap();
    let t0 = Instant::now();
    let rt = Runtime::cuda(0, precision, None).unwrap();
    let net = TorchNet::new(&g, &weights, &|_| false, &rt).unwrap();
    let cfg = TrainConfig::synthetic(OptimConfig { kind: OptimKind::Sgd { momentum: 0.9, nesterov: false }, weight_decay: 0.0, l1: 0.0 }, 1e-4, batch);
    let mut e = TorchEngine::new(net, &cfg, precision).unwrap().with_objective(cfg.objective(&g));
    let mut rng = taoflow::data::rng::Rng::new(7);
    let mut make = |seed: u64| {
        let images: Vec<f32> = (0..batch * g.input.len()).map(|i| ((i as u64 * 2654435761 + seed) % 255) as f32 / 255.0).collect();
        let boxes = (0..batch)
            .map(|_| {
                (0..2 + rng.below(5))
                    .map(|_| {
                        let k = rng.below(3) as u32;
                        let (x1, y1) = (rng.f64() as f32 * w as f32 * 0.8, rng.f64() as f32 * h as f32 * 0.6);
                        BoxLabel { class: classes[k as usize].clone(), class_id: k, bbox: [x1, y1, (x1 + 20.0 + rng.f64() as f32 * 200.0).min(w as f32), (y1 + 20.0 + rng.f64() as f32 * 120.0).min(h as f32)] }
                    })
                    .collect()
            })
            .collect();
        Batch { len: batch, images, labels: vec![0; batch], keys: vec![String::new(); batch], targets: vec![None; batch], boxes, masks: vec![None; batch] }
    };
    let batches: Vec<Batch> = (0..4).map(|s| make(s)).collect();
    let first = {
        e.step(&batches[0], 1e-4).unwrap();
        e.flush().unwrap();
        t0.elapsed().as_secs_f64()
    };
    // Like the PyTorch peer: images and targets already on the GPU, steps back to back.
    let dev: Vec<(tch::Tensor, [tch::Tensor; 4])> = batches.iter().map(|b| (e.net.input(&b.images, batch).unwrap(), e.detection_batch_targets(b).unwrap())).collect();
    let mut run = |n: usize| {
        let mut last = None;
        for i in 0..n {
            let (x, t) = &dev[i % dev.len()];
            last = Some(e.step_detection_tensors(x, t, 1e-4).unwrap().0);
        }
        tch::Cuda::synchronize(0);
        last.map(|l| l.double_value(&[]))
    };
    run(3);
    let t = Instant::now();
    let last_loss = run(steps);
    let train_ips = (steps * batch) as f64 / t.elapsed().as_secs_f64();
    // What the train stage does: host batches (f32 images copied, targets built on the CPU).
    for b in batches.iter().take(3) {
        e.step(b, 1e-4).unwrap();
    }
    e.flush().unwrap();
    tch::Cuda::synchronize(0);
    let t = Instant::now();
    for i in 0..steps {
        e.step(&batches[i % batches.len()], 1e-4).unwrap();
    }
    e.flush().unwrap();
    tch::Cuda::synchronize(0);
    let host_train_ips = (steps * batch) as f64 / t.elapsed().as_secs_f64();
    // inference: both outputs of a device batch, no gradient, at the engine's precision
    let x = &dev[0].0;
    let infer = |n: usize| {
        for _ in 0..n {
            let _ = e.infer_outputs(x).unwrap();
        }
        tch::Cuda::synchronize(0);
    };
    infer(5);
    let t = Instant::now();
    let n = (steps * 2).max(20);
    infer(n);
    let infer_ips = (n * batch) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"engine": "taoflow", "backbone": backbone, "width": w, "height": h, "batch": batch, "precision": prec, "params": g.param_count(), "first_step_s": first, "train_img_s": train_ips, "train_from_host_img_s": host_train_ips, "infer_img_s": infer_ips, "last_loss": last_loss})
    );
}
