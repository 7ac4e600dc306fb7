//! Architectures as layer graphs, named like torchvision's modules so that its ImageNet
//! weights load by name.

use super::graph::{Layer, ModelGraph, Op};
use crate::data::image_io::InputSpec;

struct B {
    layers: Vec<Layer>,
}

impl B {
    fn add(&mut self, name: impl Into<String>, op: Op, inputs: &[&str]) -> String {
        let name = name.into();
        self.layers.push(Layer { name: name.clone(), op, inputs: inputs.iter().map(|s| s.to_string()).collect() });
        name
    }
    #[allow(clippy::too_many_arguments)]
    fn conv(&mut self, name: &str, x: &str, cin: usize, cout: usize, k: usize, s: usize, p: usize, groups: usize, bias: bool) -> String {
        self.add(name, Op::Conv2d { in_channels: cin, out_channels: cout, kernel: [k, k], stride: [s, s], padding: [p, p, p, p], groups, bias }, &[x])
    }
    fn bn(&mut self, name: &str, x: &str, c: usize) -> String {
        self.add(name, Op::BatchNorm { channels: c, eps: 1e-5 }, &[x])
    }
    /// TensorFlow's "same" padding for a square input of `size`: the output is
    /// `ceil(size / stride)` and odd totals pad one more at the end. Returns the output size.
    #[allow(clippy::too_many_arguments)]
    fn conv_same(&mut self, name: &str, x: &str, cin: usize, cout: usize, k: usize, s: usize, groups: usize, size: [usize; 2]) -> (String, [usize; 2]) {
        let mut pads = [0; 4];
        let mut out = [0; 2];
        for d in 0..2 {
            out[d] = size[d].div_ceil(s);
            let total = ((out[d] - 1) * s + k).saturating_sub(size[d]);
            pads[d] = total / 2;
            pads[d + 2] = total - total / 2;
        }
        let n = self.add(name, Op::Conv2d { in_channels: cin, out_channels: cout, kernel: [k, k], stride: [s, s], padding: pads, groups, bias: false }, &[x]);
        (n, out)
    }
}

/// torchvision's `_make_divisible`.
fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let new_v = ((v + d / 2.0) / d).floor() * d;
    let new_v = new_v.max(d);
    (if new_v < 0.9 * v { new_v + d } else { new_v }) as usize
}

/// The architecture named `arch` (`mobilenet_v2`, `resnet18|34|50`, `efficientnet_lite0`)
/// with one output per class of `classes`.
pub fn by_name(arch: &str, width_mult: f64, input: InputSpec, classes: Vec<String>) -> Result<ModelGraph, String> {
    let n = classes.len();
    match arch {
        "mobilenet_v2" => Ok(mobilenet_v2(n, width_mult, input, classes)),
        "resnet18" => resnet(18, n, width_mult, input, classes),
        "resnet34" => resnet(34, n, width_mult, input, classes),
        "resnet50" => resnet(50, n, width_mult, input, classes),
        "efficientnet_lite0" => Ok(efficientnet_lite0(n, width_mult, input, classes)),
        other => Err(format!("unknown architecture `{other}`")),
    }
}

/// MobileNetV2 (torchvision layout): inverted residual blocks with depthwise convolutions.
pub fn mobilenet_v2(num_classes: usize, width_mult: f64, input: InputSpec, classes: Vec<String>) -> ModelGraph {
    let mut b = B { layers: Vec::new() };
    let (x, cin) = mobilenet_v2_blocks(&mut b, width_mult, &input, false);
    let idx = 18;
    let last = make_divisible(1280.0 * width_mult.max(1.0), 8);
    let y = b.conv(&format!("features.{idx}.0"), &x, cin, last, 1, 1, 0, 1, false);
    let y = b.bn(&format!("features.{idx}.1"), &y, last);
    let y = b.add(format!("features.{idx}.2"), Op::Relu6, &[&y]);
    let y = b.add("pool", Op::GlobalAvgPool, &[&y]);
    let y = b.add("classifier.0", Op::Dropout { p: 0.2 }, &[&y]);
    let out = b.add("classifier.1", Op::Linear { in_features: last, out_features: num_classes, bias: true }, &[&y]);
    ModelGraph::classifier(format!("mobilenet_v2_w{width_mult}"), input, classes, b.layers, out)
}

/// MobileNetV2's stem and inverted residual blocks (`features.0`–`features.17`); with
/// `stride16`, block 14 keeps stride 1 so that the output is at stride 16, not 32. Returns
/// the last layer and its channels.
fn mobilenet_v2_blocks(b: &mut B, width_mult: f64, input: &InputSpec, stride16: bool) -> (String, usize) {
    let settings: [(usize, usize, usize, usize); 7] = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
    let mut cin = make_divisible(32.0 * width_mult, 8);
    let x = b.conv("features.0.0", "input", input.channels as usize, cin, 3, 2, 1, 1, false);
    let x = b.bn("features.0.1", &x, cin);
    let mut x = b.add("features.0.2", Op::Relu6, &[&x]);
    let mut idx = 1;
    for (t, c, n, s) in settings {
        let cout = make_divisible(c as f64 * width_mult, 8);
        for i in 0..n {
            let stride = if i == 0 && !(stride16 && idx == 14) { s } else { 1 };
            let hidden = (cin as f64 * t as f64).round() as usize;
            let p = format!("features.{idx}.conv");
            let block_in = x.clone();
            let mut y = x.clone();
            let mut j = 0;
            if t != 1 {
                y = b.conv(&format!("{p}.{j}.0"), &y, cin, hidden, 1, 1, 0, 1, false);
                y = b.bn(&format!("{p}.{j}.1"), &y, hidden);
                y = b.add(format!("{p}.{j}.2"), Op::Relu6, &[&y]);
                j += 1;
            }
            y = b.conv(&format!("{p}.{j}.0"), &y, hidden, hidden, 3, stride, 1, hidden, false);
            y = b.bn(&format!("{p}.{j}.1"), &y, hidden);
            y = b.add(format!("{p}.{j}.2"), Op::Relu6, &[&y]);
            y = b.conv(&format!("{p}.{}", j + 1), &y, hidden, cout, 1, 1, 0, 1, false);
            y = b.bn(&format!("{p}.{}", j + 2), &y, cout);
            x = if stride == 1 && cin == cout { b.add(format!("features.{idx}.add"), Op::Add, &[&block_in, &y]) } else { y };
            cin = cout;
            idx += 1;
        }
    }
    (x, cin)
}

/// EfficientNet-Lite0 (the TF-Lite variant of EfficientNet-B0: ReLU6, no squeeze-excite,
/// TF "same" padding, batch-norm eps 1e-3), named like the `efficientnet_lite0` PyTorch port
/// (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`). `width_mult` scales channels as
/// EfficientNet does (multiples of 8; the stem and head stay fixed as in Lite).
pub fn efficientnet_lite0(num_classes: usize, width_mult: f64, input: InputSpec, classes: Vec<String>) -> ModelGraph {
    let mut b = B { layers: Vec::new() };
    // (repeats, kernel, stride, expand, in, out) of EfficientNet-B0.
    let blocks: [(usize, usize, usize, usize, usize, usize); 7] = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)];
    let f = |c: usize| make_divisible(c as f64 * width_mult, 8);
    let bn = |b: &mut B, name: &str, x: &str, c: usize| b.add(name, Op::BatchNorm { channels: c, eps: 1e-3 }, &[x]);
    let mut size = [input.height as usize, input.width as usize];
    let stem = 32;
    let (x, s) = b.conv_same("_conv_stem", "input", input.channels as usize, stem, 3, 2, 1, size);
    size = s;
    let x = bn(&mut b, "_bn0", &x, stem);
    let mut x = b.add("_relu0", Op::Relu6, &[&x]);
    let mut cin = stem;
    let mut idx = 0;
    for (bi, (repeats, k, stride, expand, _i, o)) in blocks.into_iter().enumerate() {
        let cout = if bi == 0 { f(o).max(8) } else { f(o) };
        for r in 0..repeats {
            let s = if r == 0 { stride } else { 1 };
            let p = format!("_blocks.{idx}");
            let block_in = x.clone();
            let hidden = cin * expand;
            let mut y = x.clone();
            if expand != 1 {
                let (c, _) = b.conv_same(&format!("{p}._expand_conv"), &y, cin, hidden, 1, 1, 1, size);
                y = bn(&mut b, &format!("{p}._bn0"), &c, hidden);
                y = b.add(format!("{p}._relu0"), Op::Relu6, &[&y]);
            }
            let (c, out) = b.conv_same(&format!("{p}._depthwise_conv"), &y, hidden, hidden, k, s, hidden, size);
            y = bn(&mut b, &format!("{p}._bn1"), &c, hidden);
            y = b.add(format!("{p}._relu1"), Op::Relu6, &[&y]);
            let (c, _) = b.conv_same(&format!("{p}._project_conv"), &y, hidden, cout, 1, 1, 1, out);
            y = bn(&mut b, &format!("{p}._bn2"), &c, cout);
            x = if s == 1 && cin == cout { b.add(format!("{p}._add"), Op::Add, &[&block_in, &y]) } else { y };
            size = out;
            cin = cout;
            idx += 1;
        }
    }
    let head = 1280;
    let (y, _) = b.conv_same("_conv_head", &x, cin, head, 1, 1, 1, size);
    let y = bn(&mut b, "_bn1", &y, head);
    let y = b.add("_relu1", Op::Relu6, &[&y]);
    let y = b.add("_avg_pooling", Op::GlobalAvgPool, &[&y]);
    let y = b.add("_dropout", Op::Dropout { p: 0.2 }, &[&y]);
    let out = b.add("_fc", Op::Linear { in_features: head, out_features: num_classes, bias: true }, &[&y]);
    ModelGraph::classifier(format!("efficientnet_lite0_w{width_mult}"), input, classes, b.layers, out)
}

/// ResNet-18/34 (basic blocks) and ResNet-50 (bottlenecks), torchvision layout.
pub fn resnet(depth: usize, num_classes: usize, width_mult: f64, input: InputSpec, classes: Vec<String>) -> Result<ModelGraph, String> {
    let mut b = B { layers: Vec::new() };
    let (x, cin) = resnet_blocks(&mut b, depth, width_mult, &input, false)?;
    let y = b.add("avgpool", Op::GlobalAvgPool, &[&x]);
    let out = b.add("fc", Op::Linear { in_features: cin, out_features: num_classes, bias: true }, &[&y]);
    Ok(ModelGraph::classifier(format!("resnet{depth}_w{width_mult}"), input, classes, b.layers, out))
}

/// ResNet's stem and four stages. With `stride16` (TAO's `use_pooling = false` layout for
/// DetectNet_v2) there is no max pool, stages 1-3 have stride 2 and stage 4 stride 1: the
/// output is at stride 16. Returns the last layer and its channels.
fn resnet_blocks(b: &mut B, depth: usize, width_mult: f64, input: &InputSpec, stride16: bool) -> Result<(String, usize), String> {
    let (blocks, bottleneck): ([usize; 4], bool) = match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        50 => ([3, 4, 6, 3], true),
        _ => return Err(format!("ResNet-{depth} is not built here; choose 18, 34 or 50")),
    };
    let w = |c: usize| ((c as f64 * width_mult).round() as usize).max(8);
    let expansion = if bottleneck { 4 } else { 1 };
    let c0 = w(64);
    let x = b.conv("conv1", "input", input.channels as usize, c0, 7, 2, 3, 1, false);
    let x = b.bn("bn1", &x, c0);
    let mut x = b.add("relu", Op::Relu, &[&x]);
    if !stride16 {
        x = b.add("maxpool", Op::MaxPool { kernel: [3, 3], stride: [2, 2], padding: [1, 1] }, &[&x]);
    }
    let mut cin = c0;
    for (li, n) in blocks.iter().enumerate() {
        let planes = w(64 << li);
        for bi in 0..*n {
            let first_stride = if stride16 { [2, 2, 2, 1][li] } else if li > 0 { 2 } else { 1 };
            let stride = if bi == 0 { first_stride } else { 1 };
            let p = format!("layer{}.{bi}", li + 1);
            let cout = planes * expansion;
            let mut y;
            if bottleneck {
                y = b.conv(&format!("{p}.conv1"), &x, cin, planes, 1, 1, 0, 1, false);
                y = b.bn(&format!("{p}.bn1"), &y, planes);
                y = b.add(format!("{p}.relu1"), Op::Relu, &[&y]);
                y = b.conv(&format!("{p}.conv2"), &y, planes, planes, 3, stride, 1, 1, false);
                y = b.bn(&format!("{p}.bn2"), &y, planes);
                y = b.add(format!("{p}.relu2"), Op::Relu, &[&y]);
                y = b.conv(&format!("{p}.conv3"), &y, planes, cout, 1, 1, 0, 1, false);
                y = b.bn(&format!("{p}.bn3"), &y, cout);
            } else {
                y = b.conv(&format!("{p}.conv1"), &x, cin, planes, 3, stride, 1, 1, false);
                y = b.bn(&format!("{p}.bn1"), &y, planes);
                y = b.add(format!("{p}.relu1"), Op::Relu, &[&y]);
                y = b.conv(&format!("{p}.conv2"), &y, planes, cout, 3, 1, 1, 1, false);
                y = b.bn(&format!("{p}.bn2"), &y, cout);
            }
            let shortcut = if stride != 1 || cin != cout {
                let s = b.conv(&format!("{p}.downsample.0"), &x, cin, cout, 1, stride, 0, 1, false);
                b.bn(&format!("{p}.downsample.1"), &s, cout)
            } else {
                x.clone()
            };
            let sum = b.add(format!("{p}.add"), Op::Add, &[&shortcut, &y]);
            x = b.add(format!("{p}.relu"), Op::Relu, &[&sum]);
            cin = cout;
        }
    }
    Ok((x, cin))
}

/// Backbones DetectNet_v2 is built on here.
pub const DETECTNET_BACKBONES: &[&str] = &["resnet18", "resnet34", "mobilenet_v2"];

/// DetectNet_v2's gridbox network: a stride-16 backbone (ResNet-18/34 without pooling,
/// MobileNetV2 with block 14 at stride 1) and two 1×1 convolutions with bias on its last
/// layer — `output_cov` (one channel per class, then a sigmoid: `output_cov/Sigmoid`) and
/// `output_bbox` (four per class, L, T, R, B, class-major). The backbone's layers keep
/// torchvision's names, so ImageNet weights load by name.
pub fn detectnet_v2(backbone: &str, width_mult: f64, input: InputSpec, classes: Vec<String>) -> Result<ModelGraph, String> {
    let mut b = B { layers: Vec::new() };
    let (x, cin) = match backbone {
        "resnet18" => resnet_blocks(&mut b, 18, width_mult, &input, true)?,
        "resnet34" => resnet_blocks(&mut b, 34, width_mult, &input, true)?,
        "mobilenet_v2" => mobilenet_v2_blocks(&mut b, width_mult, &input, true),
        other => return Err(format!("`{other}` is not a DetectNet_v2 backbone here; choose {}", DETECTNET_BACKBONES.join(", "))),
    };
    let n = classes.len();
    let cov = b.conv("output_cov", &x, cin, n, 1, 1, 0, 1, true);
    let cov = b.add("output_cov/Sigmoid", Op::Sigmoid, &[&cov]);
    let bbox = b.conv("output_bbox", &x, cin, 4 * n, 1, 1, 0, 1, true);
    let g = ModelGraph {
        version: 1,
        arch: format!("detectnet_v2_{backbone}_w{width_mult}"),
        task: super::graph::TaskKind::Detection,
        input,
        layers: b.layers,
        outputs: vec![cov, bbox],
        detection: Some(crate::tasks::detection::DetectionHead::detectnet(n)),
        classes,
    };
    g.validate()?;
    Ok(g)
}

/// A detector's layers that a classifier's ImageNet weights lack: the two heads, and in the
/// stride-16 ResNets the first stage's projection shortcut (stride 2 here, none in
/// torchvision's layout).
pub fn detectnet_new_layers(g: &ModelGraph) -> Vec<String> {
    g.layers.iter().filter(|l| matches!(l.op, Op::Conv2d { .. } | Op::BatchNorm { .. }) && (l.name.starts_with("output_") || l.name.starts_with("layer1.0.downsample."))).map(|l| l.name.clone()).collect()
}

/// Weights for `layers` as Keras initialises them: Glorot-uniform kernels, zero biases, and
/// identity batch norms (scale 1, shift 0, mean 0, variance 1), drawn from `seed`.
pub fn glorot_init(g: &ModelGraph, layers: &[String], seed: u64) -> std::collections::HashMap<String, super::net::WeightData> {
    let mut rng = crate::data::rng::Rng::new(seed ^ 0x6c6f_726f_6c67);
    let mut out = std::collections::HashMap::new();
    for l in g.layers.iter().filter(|l| layers.contains(&l.name)) {
        for (suffix, shape) in super::graph::weight_shapes(&l.op) {
            let n: usize = shape.iter().product();
            let data = match (&l.op, suffix) {
                (Op::Conv2d { kernel, .. }, "weight") => {
                    let rf = kernel[0] * kernel[1];
                    let (fan_in, fan_out) = (shape[1] * rf, shape[0] * rf);
                    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
                    (0..n).map(|_| ((rng.f64() * 2.0 - 1.0) * limit) as f32).collect()
                }
                (Op::BatchNorm { .. }, "weight" | "running_var") => vec![1.0; n],
                _ => vec![0.0; n],
            };
            out.insert(format!("{}.{suffix}", l.name), super::net::WeightData { shape, data });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_torchvision() {
        // torchvision: mobilenet_v2 3,504,872; resnet18 11,689,512; resnet34 21,797,672;
        // resnet50 25,557,032 parameters (1000 classes).
        let spec = InputSpec::imagenet(224, 224);
        let m = mobilenet_v2(1000, 1.0, spec.clone(), vec![]);
        m.validate().unwrap();
        assert_eq!(m.param_count(), 3_504_872);
        assert_eq!(m.weights().len(), 314 - 52, "torchvision has 314 tensors incl. 52 num_batches_tracked");
        for (d, n) in [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)] {
            let r = resnet(d, 1000, 1.0, spec.clone(), vec![]).unwrap();
            r.validate().unwrap();
            assert_eq!(r.param_count(), n, "resnet{d}");
        }
        assert!(resnet(101, 10, 1.0, spec.clone(), vec![]).is_err());
        // EfficientNet-Lite0: 4,652,008 parameters (timm's efficientnet_lite0, 1000 classes);
        // the state dict of the PyTorch port has 296 tensors incl. 49 num_batches_tracked.
        let e = efficientnet_lite0(1000, 1.0, spec, vec![]);
        e.validate().unwrap();
        assert_eq!(e.param_count(), 4_652_008);
        assert_eq!(e.weights().len(), 296 - 49);
    }

    /// DetectNet_v2's network: stride 16, C coverage and 4C box channels, and every backbone
    /// weight named as in the torchvision classifier (so ImageNet weights load), except the
    /// layers the detector adds.
    #[test]
    fn detectnet_backbones_keep_torchvision_names_at_stride_16() {
        let spec = InputSpec::plain(256, 128, 3);
        let classes: Vec<String> = vec!["car".into(), "pedestrian".into(), "cyclist".into()];
        for (backbone, classifier) in [("resnet18", resnet(18, 1000, 1.0, InputSpec::imagenet(224, 224), vec![]).unwrap()), ("resnet34", resnet(34, 1000, 1.0, InputSpec::imagenet(224, 224), vec![]).unwrap()), ("mobilenet_v2", mobilenet_v2(1000, 1.0, InputSpec::imagenet(224, 224), vec![]))] {
            let g = detectnet_v2(backbone, 1.0, spec.clone(), classes.clone()).unwrap();
            let ch = g.validate().unwrap();
            assert_eq!(g.outputs, vec!["output_cov/Sigmoid".to_string(), "output_bbox".to_string()]);
            assert_eq!((ch["output_cov/Sigmoid"], ch["output_bbox"]), (3, 12));
            let cw = classifier.weights();
            let new = detectnet_new_layers(&g);
            for (name, shape) in g.weights() {
                let layer = name.rsplit_once('.').unwrap().0;
                if new.iter().any(|l| l == layer) {
                    assert!(!cw.contains_key(&name), "{backbone}: {name} is new but the classifier has it");
                } else {
                    assert_eq!(cw.get(&name), Some(&shape), "{backbone}: {name} {shape:?} not in the classifier");
                }
            }
            let expect_new: &[&str] = if backbone == "mobilenet_v2" { &["output_cov", "output_bbox"] } else { &["layer1.0.downsample.0", "layer1.0.downsample.1", "output_cov", "output_bbox"] };
            assert_eq!(new, expect_new, "{backbone}");
            // stride 16: a 256x128 input gives a 16x8 grid
            type Nd = burn::backend::NdArray<f32>;
            let device = Default::default();
            let small = detectnet_v2(backbone, 0.25, spec.clone(), classes.clone()).unwrap();
            let net = crate::model::net::GraphNet::<Nd>::new(&small, &device).unwrap();
            let outs = net.forward_outputs(burn::tensor::Tensor::zeros([2, 3, 128, 256], &device));
            assert_eq!(outs[0].dims(), [2, 3, 8, 16], "{backbone}");
            assert_eq!(outs[1].dims(), [2, 12, 8, 16], "{backbone}");
            let cov = outs[0].clone().into_data().to_vec::<f32>().unwrap();
            assert!(cov.iter().all(|v| *v > 0.0 && *v < 1.0), "coverage goes through a sigmoid");
        }
        let e = detectnet_v2("resnet50", 1.0, spec.clone(), classes.clone()).unwrap_err();
        assert!(e.contains("not a DetectNet_v2 backbone") && e.contains("resnet18"), "{e}");
        let e = detectnet_v2("resnet18", 1.0, InputSpec::plain(250, 128, 3), classes).unwrap_err();
        assert!(e.contains("multiple of 16"), "{e}");
    }

    #[test]
    fn glorot_init_is_keras_uniform_with_zero_bias() {
        let g = detectnet_v2("resnet18", 0.25, InputSpec::plain(64, 64, 3), vec!["a".into()]).unwrap();
        let w = glorot_init(&g, &detectnet_new_layers(&g), 3);
        let k = &w["output_bbox.weight"];
        // fan_in = 128 (ResNet-18 x0.25 ends with 128 channels), fan_out = 4, 1x1 kernel
        let limit = (6.0f64 / (128.0 + 4.0)).sqrt() as f32;
        assert_eq!(k.shape, vec![4, 128, 1, 1]);
        assert!(k.data.iter().all(|v| v.abs() <= limit) && k.data.iter().any(|v| v.abs() > limit * 0.9));
        assert!(w["output_bbox.bias"].data.iter().all(|v| *v == 0.0));
        assert!(w["layer1.0.downsample.1.running_var"].data.iter().all(|v| *v == 1.0));
        assert_eq!(k.data, glorot_init(&g, &detectnet_new_layers(&g), 3)["output_bbox.weight"].data);
    }

    #[test]
    fn graph_roundtrips_as_json() {
        let m = mobilenet_v2(10, 0.5, InputSpec::imagenet(64, 64), (0..10).map(|i| i.to_string()).collect());
        let j = serde_json::to_string(&m).unwrap();
        let back: ModelGraph = serde_json::from_str(&j).unwrap();
        assert_eq!(m, back);
        back.validate().unwrap();
        // Graphs written before models had several outputs (`"output": "fc"`, no task) read
        // back as classifiers with one output.
        let old = j.replace("\"outputs\":[\"classifier.1\"]", "\"output\":\"classifier.1\"").replace("\"task\":\"classification\",", "");
        assert!(old.contains("\"output\":") && !old.contains("\"task\""));
        let back: ModelGraph = serde_json::from_str(&old).unwrap();
        assert_eq!(m, back);
        let d = detectnet_v2("mobilenet_v2", 0.5, InputSpec::plain(64, 32, 3), vec!["a".into(), "b".into()]).unwrap();
        let back: ModelGraph = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(d, back);
        let mut bad = d.clone();
        bad.detection = None;
        assert!(bad.validate().unwrap_err().contains("needs its `detection` settings"));
    }
}
