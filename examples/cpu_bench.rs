//! CPU speed of taoflow's engines (issue #29; `bench/cpu.sh` runs it beside PyTorch):
//! `cargo run --release --example cpu_bench -- ARCH SIZE [SECONDS] [infer,train]`. Prints one JSON object per
//! line: inference img/s at batch 1 and 64 on the CPU inference engine (the model's ONNX
//! export in onnxruntime where it loads, as `evaluate`/`infer`/`quantize` run it) and on the
//! Burn forward pass, and training img/s at batch 32 (the `train` stage's Burn engine: SGD
//! with Nesterov momentum, chunked batch norm, all threads), 10 classes, synthetic images.
//! Each measurement runs for at least SECONDS (default 3) after one warm-up call.

use std::collections::HashMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use taoflow::data::image_io::InputSpec;
use taoflow::data::loader::Batch;
use taoflow::model::graph::ModelGraph;
use taoflow::model::net::{GraphNet, WeightData};
use taoflow::model::optim::{OptimConfig, OptimKind};
use taoflow::model::train::{BurnEngine, Engine, TrainConfig};

type I = burn::backend::NdArray<f32>;
type A = burn::backend::Autodiff<I>;

/// Calls of `f` (each processing `per_call` images) for at least `secs`, after one warm-up.
fn rate(per_call: usize, secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let (t0, mut n) = (Instant::now(), 0usize);
    while n == 0 || t0.elapsed().as_secs_f64() < secs {
        f();
        n += per_call;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn images(g: &ModelGraph, n: usize) -> Vec<f32> {
    (0..n * g.input.len()).map(|i| ((i.wrapping_mul(2654435761)) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arch = a.get(1).map(String::as_str).unwrap_or("mobilenet_v2");
    let size: u32 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let secs: f64 = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let modes = a.get(4).map(String::as_str).unwrap_or("infer,train");
    let g = taoflow::model::builders::by_name(arch, 1.0, InputSpec::imagenet(size, size), (0..10).map(|i| format!("c{i}")).collect()).expect("arch");
    let device = Default::default();
    let net = GraphNet::<A>::new(&g, &device).unwrap();
    let w: HashMap<String, WeightData> = net.export_weights().unwrap().into_iter().collect();
    let threads = rayon::current_num_threads();
    let s = &g.input;
    let emit = |engine: &str, mode: &str, batch: usize, ips: f64| {
        println!("{}", serde_json::json!({"who": "taoflow", "engine": engine, "arch": arch, "size": size, "mode": mode, "batch": batch, "img_s": (ips * 10.0).round() / 10.0, "threads": threads}));
    };

    // Inference: the CPU inference engine and the Burn forward pass.
    let proto = taoflow::model::onnx::export(&g, &w, &Default::default(), None).unwrap();
    let onnx = taoflow::model::onnx_run::OnnxModel::from_bytes(&prost::Message::encode_to_vec(&proto), arch).unwrap();
    let valid = net.valid();
    for batch in [1usize, 64].into_iter().filter(|_| modes.contains("infer")) {
        let x = images(&g, batch);
        let ips = rate(batch, secs, || {
            onnx.run_all(&x, batch).unwrap();
        });
        emit(&onnx.engine(), "infer", batch, ips);
        let ips = rate(batch, secs, || {
            let t: Tensor<I, 4> = Tensor::from_data(TensorData::new(x.clone(), [batch, s.channels as usize, s.height as usize, s.width as usize]), &device);
            for o in valid.forward_outputs(t) {
                let _ = o.into_data();
            }
        });
        emit("burn-ndarray", "infer", batch, ips);
    }

    if !modes.contains("train") {
        return;
    }
    // Training: the train stage's Burn engine, SGD + Nesterov.
    let cfg = TrainConfig::synthetic(OptimConfig { kind: OptimKind::Sgd { momentum: 0.9, nesterov: true }, weight_decay: 0.0, l1: 0.0 }, 0.01, 32);
    let mut eng = BurnEngine::<A>::new(&g, net, &cfg, &device);
    let n = 32;
    let b = Batch { len: n, images: images(&g, n), labels: (0..n as u32).map(|i| i % 10).collect(), keys: vec![String::new(); n], targets: vec![None; n], boxes: vec![Vec::new(); n], masks: vec![None; n] };
    let ips = rate(n, secs, || {
        eng.step(&b, 0.01).unwrap();
    });
    emit("burn-ndarray", "train", n, ips);
}
