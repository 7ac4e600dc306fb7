//! Shared helpers for the model tests: the test architectures and random weights.

use std::collections::HashMap;

use burn::backend::NdArray;
use burn::tensor::Tensor;

use crate::data::image_io::InputSpec;
use crate::model::builders;
use crate::model::graph::{ModelGraph, Op};
use crate::model::net::{GraphNet, WeightData};

type B = NdArray<f32>;

/// Random weights with non-trivial batch-norm statistics, as a name -> tensor map.
pub fn random_weights(g: &ModelGraph, seed: u64) -> HashMap<String, WeightData> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    let net = GraphNet::<B>::new(g, &device).unwrap();
    let mut w: HashMap<String, WeightData> = net.export_weights().unwrap().into_iter().collect();
    let mut rng = crate::data::rng::Rng::new(seed);
    // In name order, and every value from `rng`: a HashMap's order (and Burn's lazy parameter
    // initialisation) differ from process to process, and the weights must not.
    let mut keys: Vec<String> = w.keys().cloned().collect();
    keys.sort();
    for k in &keys {
        let v = w.get_mut(k).expect("a key of the map");
        if v.shape.len() >= 2 {
            // Burn's default: uniform in ±1/sqrt(fan_in).
            let bound = (1.0 / (v.data.len() / v.shape[0]) as f64).sqrt();
            v.data.iter_mut().for_each(|x| *x = ((rng.f64() * 2.0 - 1.0) * bound) as f32);
        } else if !k.ends_with("running_var") && !k.ends_with("running_mean") {
            v.data.iter_mut().for_each(|x| *x = ((rng.f64() * 2.0 - 1.0) * 0.1) as f32);
        }
    }
    for k in &keys {
        let (k, v) = (k.as_str(), w.get_mut(k).expect("a key of the map"));
        if v.shape.len() == 4 {
            // Channels of varied importance, as after training.
            let per = v.data.len() / v.shape[0];
            for c in 0..v.shape[0] {
                let f = 0.05 + rng.f64() as f32;
                v.data[c * per..(c + 1) * per].iter_mut().for_each(|x| *x *= f);
            }
        } else if k.ends_with("running_var") {
            v.data.iter_mut().for_each(|x| *x = 0.5 + rng.f64() as f32);
        } else if k.ends_with("running_mean") || (g.layers.iter().any(|l| matches!(l.op, Op::BatchNorm { .. }) && k.starts_with(&format!("{}.", l.name)))) {
            v.data.iter_mut().for_each(|x| *x = rng.f64() as f32 - 0.3);
        }
    }
    w
}

pub fn forward(g: &ModelGraph, w: &HashMap<String, WeightData>, x: Tensor<B, 4>) -> Vec<f32> {
    let device = Default::default();
    let (net, missing) = GraphNet::<B>::new(g, &device).unwrap().load_weights(w, &device).unwrap();
    assert!(missing.is_empty(), "{missing:?}");
    net.forward(x).into_data().to_vec::<f32>().unwrap()
}

pub fn graphs() -> Vec<ModelGraph> {
    let spec = InputSpec::imagenet(32, 32);
    let c: Vec<String> = (0..7).map(|i| i.to_string()).collect();
    vec![
        builders::resnet(18, 7, 0.25, spec.clone(), c.clone()).unwrap(),
        builders::resnet(50, 7, 0.125, spec.clone(), c.clone()).unwrap(),
        builders::mobilenet_v2(7, 0.5, spec.clone(), c.clone()),
        builders::efficientnet_lite0(7, 0.5, spec, c),
    ]
}


/// Every output of the Burn network for `n` images, each flat.
pub fn forward_all(g: &ModelGraph, w: &HashMap<String, WeightData>, x: &[f32], n: usize) -> Vec<Vec<f32>> {
    let device = Default::default();
    let net = crate::model::artifact::build::<B>(g, w, &device).unwrap();
    let s = &g.input;
    let t = Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(x.to_vec(), [n, s.channels as usize, s.height as usize, s.width as usize]), &device);
    net.forward_outputs(t).into_iter().map(|t| t.into_data().to_vec::<f32>().unwrap()).collect()
}
