//! GPU training benchmark of the libtorch engine (bench/gpu/train_resnet18.sh runs it next to
//! PyTorch). Prints one JSON object per line.
//!
//! ```text
//! train_bench speed  ARCH SIZE BATCH PRECISION   # first step, train and infer img/s on cuda:0
//! train_bench dwbench BATCH                      # MobileNetV2's depthwise convolutions (224²):
//!                     # ms of forward and forward+backward, our kernels vs cuDNN, f32 and bf16
//! train_bench curve  ARCH SIZE BATCH STEPS SEEDS ENGINES [PTH]   # SEEDS: 3 | 0-7 | 1,4
//!                     # loss per step of each engine (burn,torch_cpu,fp32,tf32,bf16) from the
//!                     # same weights on the same batches (PTH: torchvision weights, fine-tuning)
//! ```
//! ARCH: resnet18 | resnet50 | mobilenet_v2 | efficientnet_lite0; PRECISION: fp32 | tf32 | bf16.
//! `speed` trains on synthetic images already on the GPU (as the PyTorch peer does), with
//! Adam, 1000 classes; `curve` trains each engine from the same weights on the same
//! learnable synthetic batches with SGD (momentum 0.9) and prints its loss curve; SEED picks
//! the initial weights and the batches. `bench/gpu/curve_stats.py` compares them.

use std::collections::HashMap;
use std::time::Instant;

use taoflow::data::image_io::InputSpec;
use taoflow::data::loader::Batch;
use taoflow::model::builders;
use taoflow::model::graph::{ModelGraph, Op};
use taoflow::model::net::{GraphNet, WeightData};
use taoflow::model::optim::{OptimConfig, OptimKind};
use taoflow::model::torch::{Precision, Runtime, TorchEngine, TorchNet};
use taoflow::model::train::{BurnEngine, Engine, TrainConfig};

type B = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

fn graph(arch: &str, size: u32, classes: usize) -> ModelGraph {
    builders::by_name(arch, 1.0, InputSpec::imagenet(size, size), (0..classes).map(|i| format!("c{i}")).collect()).unwrap()
}

fn init_weights(g: &ModelGraph, seed: u64) -> HashMap<String, WeightData> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    GraphNet::<B>::new(g, &device).unwrap().export_weights().unwrap().into_iter().collect()
}

fn cfg(kind: OptimKind, lr: f64) -> TrainConfig {
    TrainConfig::synthetic(OptimConfig { kind, weight_decay: 0.0, l1: 0.0 }, lr, 0)
}

fn sync() {
    tch::Cuda::synchronize(0);
}

fn speed(arch: &str, size: u32, batch: usize, precision: Precision, t_main: Instant) {
    let g = graph(arch, size, 1000);
    let w = init_weights(&g, 1);
    let t_init = Instant::now();
    let rt = Runtime::cuda(0, precision, kernel_cache().as_deref()).unwrap();
    let init_s = t_init.elapsed().as_secs_f64();
    let net = TorchNet::new(&g, &w, &|_| false, &rt).unwrap();
    let mut eng = TorchEngine::new(net, &cfg(OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 1e-3), precision).unwrap();
    // PLAN_STEPS: the run's planned length, which the automatic depthwise policy weighs
    // (TAOFLOW_DEPTHWISE=auto); warm-up then covers its timing window and any move to cuDNN.
    let plan: Option<u64> = std::env::var("PLAN_STEPS").ok().and_then(|v| v.parse().ok());
    if let Some(p) = plan {
        eng.set_plan(p);
    }
    let n = batch * g.input.len();
    let images: Vec<f32> = (0..n).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect();
    let x = eng.net.input(&images, batch).unwrap();
    let labels: Vec<i64> = (0..batch as i64).map(|i| (i * 37) % 1000).collect();
    let y = tch::Tensor::from_slice(&labels).to_device(tch::Device::Cuda(0));
    let t_first = Instant::now();
    let (loss, _) = eng.step_tensors(&x, &y, 1e-3).unwrap();
    let first_loss = loss.double_value(&[]);
    sync();
    let first_step_s = t_first.elapsed().as_secs_f64();
    let to_first_step_s = t_main.elapsed().as_secs_f64();
    let t_warm = Instant::now();
    for _ in 0..if plan.is_some() { 20 } else { 10 } {
        let _ = eng.step_tensors(&x, &y, 1e-3).unwrap();
    }
    sync();
    let warmup_s = t_warm.elapsed().as_secs_f64();
    let steps = 40;
    let t = Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(eng.step_tensors(&x, &y, 1e-3).unwrap().0);
    }
    let last_loss = last.unwrap().double_value(&[]);
    sync();
    let train_ips = (steps * batch) as f64 / t.elapsed().as_secs_f64();
    // INFER_BATCH: the inference batch (256 by default; small ones show per-call overheads).
    let ib: usize = std::env::var("INFER_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let images: Vec<f32> = (0..ib * g.input.len()).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect();
    let xi = eng.net.input(&images, ib).unwrap();
    for _ in 0..5 {
        let _ = eng.infer(&xi).unwrap();
    }
    sync();
    // Five rounds of 20 batches; the median round is the figure (one round is noisy).
    let reps = 20;
    let rounds = |eng: &mut TorchEngine, cached: bool| -> Vec<f64> {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    let _ = if cached { eng.infer(&xi) } else { eng.infer_uncached(&xi) }.unwrap();
                }
                sync();
                (reps * ib) as f64 / t.elapsed().as_secs_f64()
            })
            .collect()
    };
    let median = |mut r: Vec<f64>| {
        r.sort_by(f64::total_cmp);
        r[2]
    };
    let infer_rounds = rounds(&mut eng, true);
    let infer_ips = median(infer_rounds.clone());
    // The same without the inference cache (bf16 casts and batch-norm folds at every call).
    let uncached_rounds = rounds(&mut eng, false);
    let infer_uncached_ips = median(uncached_rounds.clone());
    // The inference cache (bf16 kernels, folded batch norms) must not change a logit.
    let cached = eng.infer(&xi).unwrap();
    let plain = eng.infer_uncached(&xi).unwrap();
    let cache_max_abs_diff = (cached - plain).abs().max().double_value(&[]);
    println!(
        "{}",
        serde_json::json!({"impl": "taoflow", "arch": arch, "size": size, "batch": batch, "precision": format!("{precision:?}").to_lowercase(),
            "init_s": init_s, "first_step_s": first_step_s, "process_to_first_step_s": to_first_step_s,
            "train_img_s": train_ips, "infer_img_s": infer_ips, "infer_rounds": infer_rounds, "infer_batch": ib, "infer_uncached_img_s": infer_uncached_ips, "infer_uncached_rounds": uncached_rounds, "infer_cache_max_abs_diff": cache_max_abs_diff, "first_loss": first_loss, "last_loss": last_loss,
            "depthwise": std::env::var("TAOFLOW_DEPTHWISE").unwrap_or_else(|_| "auto".into()), "plan_steps": plan, "dw_switched_at": eng.dw_switched_at, "warmup_s": warmup_s})
    );
}

/// Images whose class shows as a per-class pattern under noise, so the loss can fall. The
/// stream of batches is a function of (seed, step).
fn learnable_batch(g: &ModelGraph, n: usize, seed: u64, step: u64) -> Batch {
    let mut rng = taoflow::data::rng::Rng::new(1000 + step + seed * 1_000_003);
    let classes = g.classes.len();
    let (c, h, w) = (g.input.channels as usize, g.input.height as usize, g.input.width as usize);
    let mut images = vec![0f32; n * c * h * w];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = rng.below(classes as u64) as usize;
        labels.push(k as u32);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let pattern = (((x * (k + 1) + y * (ch + 1)) % 7) as f32 / 3.0) - 1.0;
                    images[((i * c + ch) * h + y) * w + x] = pattern + (rng.f64() as f32 - 0.5);
                }
            }
        }
    }
    Batch { len: n, images, labels, keys: vec![String::new(); n], targets: vec![None; n], boxes: vec![Vec::new(); n], masks: vec![None; n] }
}

/// Held-out batches after a `curve` run: 16 x BATCH images, their step indices far past any run's.
const HELD_OUT_BATCHES: u64 = 16;
const HELD_OUT_FROM: u64 = 1 << 20;

/// Loss per step of `engine` over `steps` learnable batches.
fn losses(engine: &mut dyn Engine, g: &ModelGraph, batch: usize, seed: u64, steps: usize, lr: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for s in 0..steps {
        let b = learnable_batch(g, batch, seed, s as u64);
        out.extend(engine.step(&b, lr).unwrap().into_iter().map(|d| d.loss));
    }
    out.extend(engine.flush().unwrap().into_iter().map(|d| d.loss));
    out
}

/// One training run per engine from the same weights on the same batches; one JSON line each.
/// ENGINES: comma-separated `burn` (Burn on the CPU: the reference), `torch_cpu` (this engine
/// on libtorch's CPU kernels, f32), `fp32`, `tf32`, `bf16` (this engine on cuda:0), and
/// `torch64` (this engine on the CPU in f64), which shows how far f32 rounding alone moves a
/// curve. (Burn has no f64 counterpart here: NdArray's default float type is a per-device
/// setting, fixed at f32 by the first tensor this process makes.) `ENGINE+ulp` starts ENGINE from the
/// weights moved by one ulp.
fn curve(arch: &str, size: u32, batch: usize, steps: usize, seed: u64, engines: &str, pretrained: Option<&str>) {
    let mut g = graph(arch, size, 10);
    // Dropout draws differ between engines: off for this comparison.
    for l in g.layers.iter_mut() {
        if let Op::Dropout { p } = &mut l.op {
            *p = 0.0;
        }
    }
    let mut w = init_weights(&g, 7 + seed);
    // Fine-tuning (taoflow's use): every pretrained tensor whose shape fits replaces the
    // random one (all but the 10-class head).
    let mut loaded = 0;
    if let Some(p) = pretrained {
        for (k, v) in taoflow::model::import::read_weights(std::path::Path::new(p)).unwrap() {
            if w.get(&k).is_some_and(|old| old.shape == v.shape) {
                w.insert(k, v);
                loaded += 1;
            }
        }
        assert!(loaded > 100, "only {loaded} tensors of {p} fit {arch}");
    }
    let lr = 0.002;
    let c = cfg(OptimKind::Sgd { momentum: 0.9, nesterov: false }, lr);
    for engine in engines.split(',') {
        let t = Instant::now();
        // `ENGINE+ulp`: the same run from weights moved by one unit in the last place (each
        // nonzero value to its next f32 away from zero): how far f32 rounding alone moves the
        // curve, the noise floor of any two engines' comparison.
        let (name, ulp) = match engine.strip_suffix("+ulp") {
            Some(e) => (e, true),
            None => (engine, false),
        };
        let moved;
        let w = if ulp {
            let mut m = w.clone();
            for v in m.values_mut() {
                v.data.iter_mut().filter(|x| **x != 0.0).for_each(|x| *x = f32::from_bits(x.to_bits() + 1));
            }
            moved = m;
            &moved
        } else {
            &w
        };
        let mut eng: Box<dyn Engine> = match name {
            "burn" => {
                let device = Default::default();
                let (net, _) = GraphNet::<B>::new(&g, &device).unwrap().load_weights(w, &device).unwrap();
                Box::new(BurnEngine::<B>::new(&g, net, &c, &device).with_chunks(1))
            }
            "torch64" => Box::new(TorchEngine::new(TorchNet::new(&g, w, &|_| false, &Runtime::cpu()).unwrap().into_double().unwrap(), &c, Precision::Fp32).unwrap()),
            "torch_cpu" => Box::new(TorchEngine::new(TorchNet::new(&g, w, &|_| false, &Runtime::cpu()).unwrap(), &c, Precision::Fp32).unwrap()),
            p => {
                let p = Precision::parse(p).unwrap_or_else(|| panic!("unknown engine `{p}`: burn, torch_cpu, fp32, tf32 or bf16"));
                let rt = Runtime::cuda(0, p, kernel_cache().as_deref()).unwrap();
                Box::new(TorchEngine::new(TorchNet::new(&g, w, &|_| false, &rt).unwrap(), &c, p).unwrap())
            }
        };
        let curve = losses(eng.as_mut(), &g, batch, seed, steps, lr);
        let train_s = t.elapsed().as_secs_f64();
        // The model after the last step, judged on held-out batches (the same generator, step
        // indices far past the run's) in inference mode: once by the engine itself, once by
        // one common judge (this engine in f64 on cuda:0 where there is a GPU, else on
        // libtorch's CPU kernels: the same within f64 rounding; from the weights and
        // running statistics the engine exports), so that only the trained model differs.
        let held_out = || (0..HELD_OUT_BATCHES).map(|i| Ok(learnable_batch(&g, batch, seed, HELD_OUT_FROM + i)));
        let (sl, sh, n) = eng.validate(&mut held_out()).unwrap();
        let trained: HashMap<String, WeightData> = eng.weights().unwrap().into_iter().collect();
        drop(eng);
        let judge_rt = if tch::Cuda::is_available() { Runtime::cuda(0, Precision::Fp32, kernel_cache().as_deref()).unwrap() } else { Runtime::cpu() };
        let mut judge = TorchEngine::new(TorchNet::new(&g, &trained, &|_| false, &judge_rt).unwrap().into_double().unwrap(), &c, Precision::Fp32).unwrap();
        let (jl, jh, jn) = judge.validate(&mut held_out()).unwrap();
        // ... and with each batch's own batch-norm statistics (as the training loss is taken),
        // which does not depend on the running statistics' lag behind the weights.
        let mut bl = 0.0;
        for b in held_out() {
            let b = b.unwrap();
            let _g = tch::no_grad_guard();
            let x = judge.net.input(&b.images, b.len).unwrap();
            let y = tch::Tensor::from_slice(&b.labels.iter().map(|&l| l as i64).collect::<Vec<_>>()).to_device(x.device());
            bl += judge.net.forward(&x, true).unwrap().cross_entropy_loss::<tch::Tensor>(&y, None, tch::Reduction::Sum, -100, 0.0).double_value(&[]);
        }
        println!(
            "{}",
            serde_json::json!({"arch": arch, "size": size, "batch": batch, "steps": steps, "seed": seed, "lr": lr, "optimizer": "sgd momentum 0.9",
                "pretrained": pretrained.map(|p| std::path::Path::new(p).file_name().unwrap().to_string_lossy().to_string()), "pretrained_tensors": loaded,
                "engine": engine, "losses": curve, "seconds": train_s,
                "held_out": {"images": n, "loss": sl / n as f64, "top1": sh as f64 / n as f64, "judge_f64_loss": jl / jn as f64, "judge_f64_top1": jh as f64 / jn as f64, "judge_f64_batch_stats_loss": bl / jn as f64}})
        );
    }
}

/// `3`, `0-7` or `1,4,6`.
fn seeds(s: &str) -> Vec<u64> {
    s.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse::<u64>().expect("SEEDS")..=b.parse().expect("SEEDS")).collect::<Vec<_>>(),
            None => vec![part.parse().expect("SEEDS")],
        })
        .collect()
}

/// Each distinct depthwise convolution of MobileNetV2 at 224² (channels, input side,
/// stride), timed alone: our kernels (kernels/depthwise.cu) against cuDNN, after warm-up
/// (backward: of sum(y * g), so two small extra kernels on both sides). `first_s`: the
/// first forward plus the first forward+backward (cuDNN compiles there).
fn dwbench(batch: i64) {
    use tch::{Device, Kind, Tensor};
    let _rt = Runtime::cuda(0, Precision::Tf32, kernel_cache().as_deref()).unwrap();
    let dev = Device::Cuda(0);
    let shapes: [(i64, i64, i64); 10] = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2), (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)];
    for kind in [Kind::Float, Kind::BFloat16] {
        for &(c, hw, s) in &shapes {
            let x0 = taoflow::model::torch::to_channels_last(&Tensor::randn([batch, c, hw, hw], (kind, dev))).unwrap();
            let w0 = taoflow::model::torch::to_channels_last(&Tensor::randn([c, 1, 3, 3], (kind, dev))).unwrap();
            let mut row = serde_json::json!({"channels": c, "side": hw, "stride": s, "batch": batch, "dtype": format!("{kind:?}")});
            for ours in [true, false] {
                let conv = |x: &Tensor, w: &Tensor| if ours { taoflow::model::torch::depthwise(x, w, [s, s], [1, 1, 1, 1]).unwrap().expect("our kernels apply") } else { x.conv2d(w, None::<Tensor>, [s, s], [1, 1], [1, 1], c) };
                let t = Instant::now();
                let _ = tch::no_grad(|| conv(&x0, &w0));
                sync();
                let first_fwd = t.elapsed().as_secs_f64();
                let x = x0.detach().set_requires_grad(true);
                let w = w0.detach().set_requires_grad(true);
                let t = Instant::now();
                let y = conv(&x, &w);
                // backward through sum(y * g): the same two extra kernels on both sides
                let g = y.rand_like();
                (&y * &g).sum(Kind::Float).backward();
                sync();
                let first_both = t.elapsed().as_secs_f64();
                let time = |f: &dyn Fn()| {
                    for _ in 0..3 {
                        f();
                    }
                    sync();
                    let t = Instant::now();
                    for _ in 0..20 {
                        f();
                    }
                    sync();
                    t.elapsed().as_secs_f64() * 1e3 / 20.0
                };
                let fwd = time(&|| {
                    let _ = tch::no_grad(|| conv(&x0, &w0));
                });
                let both = time(&|| {
                    let x = x0.detach().set_requires_grad(true);
                    let w = w0.detach().set_requires_grad(true);
                    (conv(&x, &w) * &g).sum(Kind::Float).backward();
                });
                let k = if ours { "ours" } else { "cudnn" };
                row[format!("{k}_fwd_ms")] = fwd.into();
                row[format!("{k}_fwd_bwd_ms")] = both.into();
                row[format!("{k}_first_s")] = (first_fwd + first_both).into();
            }
            println!("{row}");
        }
    }
}

fn main() {
    let t_main = Instant::now();
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: train_bench speed ARCH SIZE BATCH fp32|tf32|bf16 | curve ARCH SIZE BATCH STEPS SEEDS ENGINES [PRETRAINED.pth] | dwbench BATCH";
    if a.len() == 3 && a[1] == "dwbench" {
        dwbench(a[2].parse().expect("BATCH"));
        return;
    }
    if a.len() < 6 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let (arch, size, batch) = (a[2].as_str(), a[3].parse().expect("SIZE"), a[4].parse().expect("BATCH"));
    match a[1].as_str() {
        "speed" => speed(arch, size, batch, Precision::parse(&a[5]).expect("precision"), t_main),
        "curve" if a.len() >= 8 => {
            for seed in seeds(&a[6]) {
                curve(arch, size, batch, a[5].parse().expect("STEPS"), seed, &a[7], a.get(8).map(String::as_str));
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

/// Where our kernels' PTX is cached: beside CUDA's JIT cache when CUDA_CACHE_PATH is set
/// (the benchmarks set it per cold/warm run, as `taoflow run` points both into the store).
fn kernel_cache() -> Option<std::path::PathBuf> {
    std::env::var_os("CUDA_CACHE_PATH").map(|p| std::path::PathBuf::from(p).join("taoflow-kernels"))
}
