//! Issue #8's candidate "Burn's LibTorch backend": the layer graph as a Burn module
//! (`GraphNet`, the CPU reference's code) on `Autodiff<LibTorch<f32>>` on cuda:0, trained with
//! the CPU path's optimizer code, on synthetic images already on the GPU — the same
//! measurement as `train_bench speed` so the two print comparable JSON lines.
//!
//! ```text
//! burn_tch_bench ARCH SIZE BATCH fp32|tf32
//! ```
//! Burn runs libtorch's kernels one Burn op at a time and differentiates with its own autodiff
//! (not libtorch's autograd): batch norm is a chain of element-wise ops, and the convolution
//! backward is the one `model::conv` builds from forward convolutions. bf16 is not offered:
//! Burn has no autocast (a `LibTorch<bf16>` model would train entirely in bf16, another
//! numeric regime).

use std::collections::HashMap;
use std::time::Instant;

use burn::backend::libtorch::{LibTorch, LibTorchDevice};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use taoflow::data::image_io::InputSpec;
use taoflow::model::builders;
use taoflow::model::graph::ModelGraph;
use taoflow::model::net::{BnStats, GraphNet};
use taoflow::model::optim::{OptimConfig, OptimKind, Optimizer};
use taoflow::model::torch::{Precision, Runtime};

type TB = LibTorch<f32>;
type AB = Autodiff<TB>;

fn graph(arch: &str, size: u32, classes: usize) -> ModelGraph {
    builders::by_name(arch, 1.0, InputSpec::imagenet(size, size), (0..classes).map(|i| format!("c{i}")).collect()).unwrap()
}

fn sync(device: &LibTorchDevice) {
    TB::sync(device).unwrap();
}

fn main() {
    let t_main = Instant::now();
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: burn_tch_bench ARCH SIZE BATCH fp32|tf32");
        std::process::exit(2);
    }
    let (arch, size, batch): (&str, u32, usize) = (&a[1], a[2].parse().unwrap(), a[3].parse().unwrap());
    let precision = Precision::parse(&a[4]).expect("precision");
    assert!(precision != Precision::Bf16, "bf16: Burn has no autocast (see the header)");
    let g = graph(arch, size, 1000);
    let t_init = Instant::now();
    // Loads libtorch_cuda and sets the TF32 switches, which Burn's tensors then obey too.
    let _rt = Runtime::cuda(0, precision, None).unwrap();
    let device = LibTorchDevice::Cuda(0);
    let init_s = t_init.elapsed().as_secs_f64();
    <AB as Backend>::seed(&device, 1);
    let mut net = GraphNet::<AB>::new(&g, &device).unwrap();
    let mut opt = Optimizer::<TB>::new(OptimConfig { kind: OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, weight_decay: 0.0, l1: 0.0 });
    let n = batch * g.input.len();
    let images: Vec<f32> = (0..n).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect();
    let s = &g.input;
    let x: Tensor<AB, 4> = Tensor::from_data(TensorData::new(images, [batch, s.channels as usize, s.height as usize, s.width as usize]), &device);
    let mut onehot = vec![0f32; batch * 1000];
    for i in 0..batch {
        onehot[i * 1000 + (i * 37) % 1000] = 1.0;
    }
    let t: Tensor<AB, 2> = Tensor::from_data(TensorData::new(onehot, [batch, 1000]), &device);
    let lr = 1e-3;
    let mut step = |net: GraphNet<AB>| -> (GraphNet<AB>, Tensor<TB, 1>) {
        let mut stats = Vec::new();
        let logits = net.forward_train(x.clone(), &mut stats);
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        let loss = (logp * t.clone()).sum().neg() / batch as f64;
        let grads = loss.backward();
        let gr: HashMap<String, Tensor<TB, 1>> = net.gradients(&grads).into_iter().collect();
        opt.begin_step();
        let o = &mut opt;
        let mut net = net.update(&gr, &mut |name, kernel, w, g| o.step(name, kernel, w, g, lr));
        let stats: Vec<BnStats<TB>> = stats.into_iter().map(|st| BnStats { index: st.index, mean: st.mean.inner(), var: st.var.inner(), count: st.count }).collect();
        net.update_running_stats(&stats, 0.1);
        (net, loss.inner())
    };
    let loss_of = |l: &Tensor<TB, 1>| l.clone().into_data().to_vec::<f32>().unwrap()[0] as f64;
    let t_first = Instant::now();
    let (n1, l) = step(net);
    net = n1;
    let first_loss = loss_of(&l);
    sync(&device);
    let first_step_s = t_first.elapsed().as_secs_f64();
    let to_first_step_s = t_main.elapsed().as_secs_f64();
    for _ in 0..5 {
        net = step(net).0;
    }
    sync(&device);
    let steps = 20;
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..steps {
        let (n1, l) = step(net);
        net = n1;
        last = Some(l);
    }
    let last_loss = loss_of(&last.unwrap());
    sync(&device);
    let train_ips = (steps * batch) as f64 / t0.elapsed().as_secs_f64();
    // Inference: the inner (non-autodiff) module, batch 256, median of five rounds of 10.
    let inner = net.valid();
    let ib = 256;
    let xi: Tensor<TB, 4> = Tensor::from_data(TensorData::new(vec![0.5f32; ib * g.input.len()], [ib, s.channels as usize, s.height as usize, s.width as usize]), &device);
    for _ in 0..3 {
        let _ = inner.forward(xi.clone());
    }
    sync(&device);
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..10 {
                let _ = inner.forward(xi.clone());
            }
            sync(&device);
            (10 * ib) as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    let infer_rounds = rounds.clone();
    rounds.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"impl": "burn-tch", "arch": arch, "size": size, "batch": batch, "precision": a[4],
            "init_s": init_s, "first_step_s": first_step_s, "process_to_first_step_s": to_first_step_s,
            "train_img_s": train_ips, "infer_img_s": rounds[2], "infer_rounds": infer_rounds, "first_loss": first_loss, "last_loss": last_loss})
    );
}
