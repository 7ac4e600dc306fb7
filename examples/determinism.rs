//! Are two identically seeded networks and their gradients bit-identical?
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use taoflow::data::image_io::InputSpec;
use taoflow::model::net::GraphNet;

fn main() {
    type B = Autodiff<NdArray<f32>>;
    let device = Default::default();
    let g = taoflow::model::builders::resnet(18, 3, 0.125, InputSpec::imagenet(16, 16), vec!["a".into(), "b".into(), "c".into()]).unwrap();
    let mut outs = Vec::new();
    for _ in 0..2 {
        B::seed(&device, 3);
        let net = GraphNet::<B>::new(&g, &device).unwrap();
        let w: Vec<f32> = net.export_weights().unwrap().into_iter().flat_map(|(_, w)| w.data).collect();
        B::seed(&device, 99);
        let x: Tensor<B, 4> = Tensor::random([16, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let mut st = Vec::new();
        let y = net.forward_train(x, &mut st).swap_remove(0);
        let yv = y.clone().into_data().to_vec::<f32>().unwrap();
        let grads = y.powi_scalar(2).sum().backward();
        let gs: Vec<(String, Vec<f32>)> = net.gradients(&grads).into_iter().map(|(n, t)| (n, t.into_data().to_vec::<f32>().unwrap())).collect();
        outs.push((w, yv, gs));
    }
    println!("weights equal {}", outs[0].0 == outs[1].0);
    println!("forward equal {}", outs[0].1 == outs[1].1);
    for (a, b) in outs[0].2.iter().zip(&outs[1].2) {
        if a.1 != b.1 {
            let d = a.1.iter().zip(&b.1).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            println!("grad of {} differs (max {d:e})", a.0);
        }
    }
}
