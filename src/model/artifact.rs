//! The model artifact: a folder with `model.json` (the layer graph, classes, input spec)
//! and `weights.safetensors` (torchvision names), loadable from PyTorch as a state dict.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;

use super::graph::ModelGraph;
use super::net::{GraphNet, WeightData};

/// Write `model.json` and `weights.safetensors` into `dir` (which must exist).
pub fn save<B: Backend>(dir: &Path, graph: &ModelGraph, net: &GraphNet<B>) -> Result<(), String> {
    save_weights(dir, graph, net.export_weights()?)
}

/// Write `model.json` and `weights.safetensors` from weights by torchvision name.
pub fn save_weights(dir: &Path, graph: &ModelGraph, weights: Vec<(String, WeightData)>) -> Result<(), String> {
    let mut json = serde_json::to_vec_pretty(graph).map_err(|e| e.to_string())?;
    json.push(b'\n');
    std::fs::write(dir.join("model.json"), json).map_err(|e| format!("cannot write model.json: {e}"))?;
    write_safetensors(&dir.join("weights.safetensors"), weights, &[("format", "pt"), ("arch", &graph.arch)])
}

/// Write named tensors as safetensors (temp file + rename).
pub fn write_safetensors(path: &Path, tensors: Vec<(String, WeightData)>, meta: &[(&str, &str)]) -> Result<(), String> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors.into_iter().map(|(n, w)| (n, w.shape, w.data.iter().flat_map(|f| f.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, shape, b)| safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).map(|v| (n.clone(), v)).map_err(|e| format!("{e:?}")))
        .collect::<Result<_, _>>()?;
    let meta = Some(meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let out = safetensors::serialize(views, &meta).map_err(|e| format!("cannot encode tensors: {e:?}"))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// Read an artifact's graph (`model.json`).
pub fn read_graph(dir: &Path) -> Result<ModelGraph, String> {
    let p = dir.join("model.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read `{}` (is this a model artifact?): {e}", p.display()))?;
    let graph: ModelGraph = serde_json::from_str(&text).map_err(|e| {
        let mut m = format!("`{}` line {}, column {}: not a valid model graph: {e}", p.display(), e.line(), e.column());
        if e.to_string().contains("unknown variant") {
            m.push_str("\n  = hint: this build of taoflow knows the ops conv2d, batch_norm, relu, relu6, max_pool, global_avg_pool, linear, dropout and add; a model with other ops cannot be run, exported or quantized by it");
        }
        m
    })?;
    graph.validate().map_err(|e| format!("`{}`: {e}", p.display()))?;
    Ok(graph)
}

/// Read an artifact's graph and weights without building a network (export, quantize).
pub fn read_raw(dir: &Path) -> Result<(ModelGraph, HashMap<String, WeightData>), String> {
    let graph = read_graph(dir)?;
    let wpath = dir.join("weights.safetensors");
    let weights = super::import::read_weights(&wpath)?;
    let missing: Vec<String> = graph.weights().into_iter().filter(|(k, shape)| weights.get(k).map(|w| &w.shape != shape).unwrap_or(true)).map(|(k, s)| format!("{k} {s:?}")).collect();
    if !missing.is_empty() {
        return Err(format!("`{}` lacks weights (or has other shapes) for: {}", wpath.display(), missing.join(", ")));
    }
    Ok((graph, weights))
}

/// A network from a graph and weights that [`read_raw`] checked (every weight present).
pub fn build<B: Backend>(graph: &ModelGraph, weights: &HashMap<String, WeightData>, device: &B::Device) -> Result<GraphNet<B>, String> {
    let (net, missing) = GraphNet::<B>::new(graph, device)?.load_weights(weights, device)?;
    if !missing.is_empty() {
        return Err(format!("the weights lack {}", missing.join(", ")));
    }
    Ok(net)
}

/// Read a model artifact.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<(ModelGraph, GraphNet<B>), String> {
    let (graph, weights) = read_raw(dir)?;
    let net = build(&graph, &weights, device)?;
    Ok((graph, net))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tensor};

    #[test]
    fn save_load_roundtrip_gives_the_same_outputs() {
        type B = NdArray<f32>;
        let device = Default::default();
        let g = crate::model::builders::resnet(18, 5, 0.125, crate::data::image_io::InputSpec::imagenet(32, 32), (0..5).map(|i| format!("c{i}")).collect()).unwrap();
        let net = GraphNet::<B>::new(&g, &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &g, &net).unwrap();
        let (g2, net2) = load::<B>(dir.path(), &device).unwrap();
        assert_eq!(g, g2);
        let x: Tensor<B, 4> = Tensor::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let a = net.forward(x.clone()).into_data().to_vec::<f32>().unwrap();
        let b = net2.forward(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(a, b);
    }
}
