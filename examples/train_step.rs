//! Time training steps of a builder's network on the CPU backend:
//! `cargo run --release --example train_step -- mobilenet_v2 32 32 [steps]`.
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Distribution, Tensor};
use taoflow::data::image_io::InputSpec;
use taoflow::model::net::GraphNet;

fn main() {
    type B = Autodiff<NdArray<f32>>;
    let a: Vec<String> = std::env::args().collect();
    let arch = a.get(1).map(|s| s.as_str()).unwrap_or("mobilenet_v2");
    let size: u32 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let batch: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let steps: usize = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(3);
    let spec = InputSpec::imagenet(size, size);
    let classes: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let g = match arch {
        "mobilenet_v2" => taoflow::model::builders::mobilenet_v2(10, 1.0, spec, classes),
        "efficientnet_lite0" => taoflow::model::builders::efficientnet_lite0(10, 1.0, spec, classes),
        "resnet18" => taoflow::model::builders::resnet(18, 10, 1.0, spec, classes).unwrap(),
        _ => panic!("arch"),
    };
    let device = Default::default();
    let net = GraphNet::<B>::new(&g, &device).unwrap();
    for s in 0..steps {
        let x: Tensor<B, 4> = Tensor::random([batch, 3, size as usize, size as usize], Distribution::Normal(0.0, 1.0), &device);
        let t0 = Instant::now();
        let y = net.forward(x);
        let loss = y.powi_scalar(2).mean();
        let _ = loss.clone().into_data();
        let t1 = Instant::now();
        let _g = loss.backward();
        let t2 = Instant::now();
        println!("step {s}: forward {:.3}s backward {:.3}s -> {:.1} img/s", (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64(), batch as f64 / (t2 - t0).as_secs_f64());
    }
}
