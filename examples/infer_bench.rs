//! Forward throughput of model artifacts on the CPU backend, interleaved so that both see
//! the same machine state: `cargo run --release --example infer_bench -- BATCH ROUNDS DIR...`.
use std::time::Instant;

use burn::backend::NdArray;
use burn::tensor::{Distribution, Tensor};

fn main() {
    type B = NdArray<f32>;
    let a: Vec<String> = std::env::args().collect();
    let batch: usize = a[1].parse().expect("batch");
    let rounds: usize = a[2].parse().expect("rounds");
    let device = Default::default();
    let models: Vec<_> = a[3..].iter().map(|d| (d.clone(), taoflow::model::artifact::load::<B>(std::path::Path::new(d), &device).expect("model artifact"))).collect();
    let mut secs = vec![0f64; models.len()];
    for r in 0..=rounds {
        for (i, (_, (g, net))) in models.iter().enumerate() {
            let s = &g.input;
            let x: Tensor<B, 4> = Tensor::random([batch, s.channels as usize, s.height as usize, s.width as usize], Distribution::Normal(0.0, 1.0), &device);
            let t0 = Instant::now();
            let _ = net.forward(x).into_data();
            if r > 0 {
                secs[i] += t0.elapsed().as_secs_f64();
            }
        }
    }
    for (i, (d, (g, _))) in models.iter().enumerate() {
        println!("{d}: {} parameters, {:.0} img/s (batch {batch}, {rounds} rounds)", g.param_count(), (batch * rounds) as f64 / secs[i]);
    }
}
