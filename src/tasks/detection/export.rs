//! What a detector's export carries for DeepStream: `labels.txt` (one class a line, in the
//! model's order) and an `nvinfer` config (`config_infer_primary.txt`) whose
//! pre-processing, tensor names, class count and clustering come from the model artifact.
//!
//! DeepStream's own DBSCAN is not TAO's 1 − IoU DBSCAN (its `eps` is on another distance;
//! tao-reference A6), so DBSCAN settings are carried over by name only and a comment says so.

use super::postprocess::Clustering;
use crate::model::graph::ModelGraph;

/// `labels.txt` and `config_infer_primary.txt` for `onnx_file` (in the same folder).
pub fn deepstream(g: &ModelGraph, onnx_file: &str, int8_cache: Option<&str>) -> Vec<(String, String)> {
    let labels: String = g.classes.iter().map(|c| format!("{c}\n")).collect();
    let s = &g.input;
    // nvinfer computes y = net-scale-factor * (x - offsets[c]) on 0..255 pixels; ours is
    // (x / 255 - mean) / std: exact when the channels share one std (a detector: 1).
    let std = s.std.first().copied().unwrap_or(1.0) as f64;
    let scale = 1.0 / (255.0 * std);
    let offsets: Vec<String> = s.mean.iter().map(|m| format!("{:.4}", *m as f64 * 255.0)).collect();
    let head = g.detection.as_ref();
    let clustering = head.map(|h| h.clustering.clone()).unwrap_or_default();
    let mode = match clustering.first().map(|c| c.algorithm) {
        Some(Clustering::Nms) => 2,
        _ => 1,
    };
    let mut c = String::new();
    c.push_str("# DeepStream Gst-nvinfer config written by taoflow for a DetectNet_v2 model.\n");
    c.push_str("# Outputs and pre-processing follow the model artifact; DeepStream's DBSCAN (cluster-mode=1)\n");
    c.push_str("# is not TAO's 1 - IoU DBSCAN, so eps and minimum scores are a starting point there.\n");
    c.push_str("[property]\n");
    c.push_str(&format!("net-scale-factor={scale}\n"));
    c.push_str(&format!("offsets={}\n", offsets.join(";")));
    c.push_str(&format!("model-color-format={}\n", if s.channels == 1 { 2 } else { 0 }));
    c.push_str(&format!("onnx-file={onnx_file}\n"));
    c.push_str("labelfile-path=labels.txt\n");
    if let Some(cache) = int8_cache {
        c.push_str(&format!("int8-calib-file={cache}\n"));
    }
    c.push_str(&format!("infer-dims={};{};{}\n", s.channels, s.height, s.width));
    c.push_str("uff-input-blob-name=input_1\n");
    c.push_str("batch-size=1\n");
    c.push_str(&format!("network-mode={}\n", if int8_cache.is_some() { 1 } else { 0 }));
    c.push_str("network-type=0\n");
    c.push_str(&format!("num-detected-classes={}\n", g.classes.len()));
    c.push_str(&format!("cluster-mode={mode}\n"));
    c.push_str("maintain-aspect-ratio=0\n");
    c.push_str(&format!("output-blob-names={}\n", ["output_cov/Sigmoid", "output_bbox/BiasAdd"].join(";")));
    c.push_str("gie-unique-id=1\n");
    for (k, cc) in clustering.iter().enumerate() {
        c.push_str(&format!("\n# {}\n[class-attrs-{k}]\n", g.classes.get(k).map(|s| s.as_str()).unwrap_or("?")));
        c.push_str(&format!("pre-cluster-threshold={}\n", cc.coverage_threshold));
        match cc.algorithm {
            Clustering::Nms => {
                c.push_str(&format!("nms-iou-threshold={}\n", cc.nms_iou_threshold));
                c.push_str(&format!("post-cluster-threshold={}\n", cc.nms_confidence_threshold));
            }
            Clustering::Dbscan => {
                c.push_str(&format!("eps={}\n", cc.dbscan_eps));
                c.push_str(&format!("dbscan-min-score={}\n", cc.dbscan_confidence_threshold));
            }
        }
        c.push_str(&format!("detected-min-h={}\n", cc.minimum_bounding_box_height.ceil() as i64));
    }
    vec![("labels.txt".into(), labels), ("config_infer_primary.txt".into(), c)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_tensors_classes_and_thresholds() {
        let mut g = crate::model::builders::detectnet_v2("resnet18", 0.25, crate::data::image_io::InputSpec::plain(960, 544, 3), vec!["car".into(), "person".into()]).unwrap();
        let h = g.detection.as_mut().unwrap();
        h.clustering[1].algorithm = Clustering::Nms;
        h.clustering[0].coverage_threshold = 0.3;
        let files = deepstream(&g, "model.onnx", Some("calibration.cache"));
        assert_eq!(files[0], ("labels.txt".to_string(), "car\nperson\n".to_string()));
        let c = &files[1].1;
        for line in ["net-scale-factor=0.00392156862745098", "offsets=0.0000;0.0000;0.0000", "infer-dims=3;544;960", "num-detected-classes=2", "output-blob-names=output_cov/Sigmoid;output_bbox/BiasAdd", "cluster-mode=1", "network-mode=1", "int8-calib-file=calibration.cache", "[class-attrs-0]\npre-cluster-threshold=0.3", "[class-attrs-1]\npre-cluster-threshold=0.005\nnms-iou-threshold=0.2"] {
            assert!(c.contains(line), "missing `{line}` in\n{c}");
        }
    }
}
