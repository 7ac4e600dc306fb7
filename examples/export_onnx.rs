//! Export a built architecture at any input size to FP32 ONNX and to an INT8 QDQ model, for
//! throughput benchmarks at sizes the CPU quickstart does not train at (e.g. 224×224 on the
//! GPU machine). The QDQ model is calibrated on random images: its *speed* is representative,
//! its accuracy is not (use the `quantize` stage with real data for that).
//!
//!   cargo run --release --example export_onnx -- ARCH SIZE OUT_DIR [WEIGHTS.pth]
//!
//! ARCH: mobilenet_v2 | resnet18 | resnet34 | resnet50 | efficientnet_lite0 (1000 classes).
//! Writes OUT_DIR/ARCH-SIZE.onnx, ARCH-SIZE.fp16.onnx and ARCH-SIZE.int8.onnx.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::backend::NdArray;
use prost::Message;
use taoflow::data::image_io::InputSpec;
use taoflow::model::graph::ModelGraph;
use taoflow::model::net::{GraphNet, WeightData};
use taoflow::model::onnx::{export, ActType, ExportOptions, Lowering};

type B = NdArray<f32>;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [arch, size, out, rest @ ..] = args.as_slice() else {
        return Err("usage: export_onnx ARCH SIZE OUT_DIR [WEIGHTS]".into());
    };
    let size: u32 = size.parse().map_err(|_| "SIZE must be an integer")?;
    let spec = InputSpec::imagenet(size, size);
    let g: ModelGraph = match arch.as_str() {
        "mobilenet_v2" => taoflow::model::builders::mobilenet_v2(1000, 1.0, spec, vec![]),
        "efficientnet_lite0" => taoflow::model::builders::efficientnet_lite0(1000, 1.0, spec, vec![]),
        a if a.starts_with("resnet") => taoflow::model::builders::resnet(a[6..].parse().map_err(|_| format!("unknown architecture {a}"))?, 1000, 1.0, spec, vec![])?,
        a => return Err(format!("unknown architecture {a}")),
    };
    let device = Default::default();
    let mut net = GraphNet::<B>::new(&g, &device)?;
    if let Some(w) = rest.first() {
        let weights = taoflow::model::import::read_weights(&PathBuf::from(w))?;
        let (n, missing) = net.load_weights(&weights, &device)?;
        if !missing.is_empty() {
            return Err(format!("missing weights: {missing:?}"));
        }
        net = n;
    }
    let w: HashMap<String, WeightData> = net.export_weights()?.into_iter().collect();
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let stem = format!("{arch}-{size}");
    let fp32 = export(&g, &w, &ExportOptions::default(), None)?;
    std::fs::write(out.join(format!("{stem}.onnx")), fp32.encode_to_vec()).map_err(|e| e.to_string())?;
    let fp16 = export(&g, &w, &ExportOptions { precision: taoflow::model::onnx::Precision::Fp16, ..Default::default() }, None)?;
    std::fs::write(out.join(format!("{stem}.fp16.onnx")), fp16.encode_to_vec()).map_err(|e| e.to_string())?;
    let low = Lowering::new(&g, true);
    let batches: Vec<(Vec<f32>, usize)> = (0..2).map(|k| (taoflow::stages::export::probe_images(4, g.input.len(), 90 + k), 4)).collect();
    let stats = taoflow::model::calibrate::collect(&g, &net, &low, &batches, &device)?;
    let mut r = taoflow::model::calibrate::ranges(&stats, taoflow::model::calibrate::Method::Percentile { percentile: 99.99 });
    r.insert("input".into(), taoflow::model::calibrate::input_range(&g.input));
    let spec = taoflow::model::calibrate::quant_spec(&r, &low.quantized_tensors(&g), ActType::Uint8)?;
    let q = export(&g, &w, &ExportOptions::default(), Some(&spec))?;
    std::fs::write(out.join(format!("{stem}.int8.onnx")), q.encode_to_vec()).map_err(|e| e.to_string())?;
    eprintln!("wrote {}/{stem}.onnx, {stem}.fp16.onnx and {stem}.int8.onnx", out.display());
    Ok(())
}
