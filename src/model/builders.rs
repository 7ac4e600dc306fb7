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
    let settings: [(usize, usize, usize, usize); 7] = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
    let mut cin = make_divisible(32.0 * width_mult, 8);
    let last = make_divisible(1280.0 * width_mult.max(1.0), 8);
    let x = b.conv("features.0.0", "input", input.channels as usize, cin, 3, 2, 1, 1, false);
    let x = b.bn("features.0.1", &x, cin);
    let mut x = b.add("features.0.2", Op::Relu6, &[&x]);
    let mut idx = 1;
    for (t, c, n, s) in settings {
        let cout = make_divisible(c as f64 * width_mult, 8);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
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
    let y = b.conv(&format!("features.{idx}.0"), &x, cin, last, 1, 1, 0, 1, false);
    let y = b.bn(&format!("features.{idx}.1"), &y, last);
    let y = b.add(format!("features.{idx}.2"), Op::Relu6, &[&y]);
    let y = b.add("pool", Op::GlobalAvgPool, &[&y]);
    let y = b.add("classifier.0", Op::Dropout { p: 0.2 }, &[&y]);
    let out = b.add("classifier.1", Op::Linear { in_features: last, out_features: num_classes, bias: true }, &[&y]);
    ModelGraph { version: 1, arch: format!("mobilenet_v2_w{width_mult}"), input, classes, layers: b.layers, output: out }
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
    ModelGraph { version: 1, arch: format!("efficientnet_lite0_w{width_mult}"), input, classes, layers: b.layers, output: out }
}

/// ResNet-18/34 (basic blocks) and ResNet-50 (bottlenecks), torchvision layout.
pub fn resnet(depth: usize, num_classes: usize, width_mult: f64, input: InputSpec, classes: Vec<String>) -> Result<ModelGraph, String> {
    let (blocks, bottleneck): ([usize; 4], bool) = match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        50 => ([3, 4, 6, 3], true),
        _ => return Err(format!("ResNet-{depth} is not built here; choose 18, 34 or 50")),
    };
    let w = |c: usize| ((c as f64 * width_mult).round() as usize).max(8);
    let expansion = if bottleneck { 4 } else { 1 };
    let mut b = B { layers: Vec::new() };
    let c0 = w(64);
    let x = b.conv("conv1", "input", input.channels as usize, c0, 7, 2, 3, 1, false);
    let x = b.bn("bn1", &x, c0);
    let x = b.add("relu", Op::Relu, &[&x]);
    let mut x = b.add("maxpool", Op::MaxPool { kernel: [3, 3], stride: [2, 2], padding: [1, 1] }, &[&x]);
    let mut cin = c0;
    for (li, n) in blocks.iter().enumerate() {
        let planes = w(64 << li);
        for bi in 0..*n {
            let stride = if bi == 0 && li > 0 { 2 } else { 1 };
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
    let y = b.add("avgpool", Op::GlobalAvgPool, &[&x]);
    let out = b.add("fc", Op::Linear { in_features: cin, out_features: num_classes, bias: true }, &[&y]);
    Ok(ModelGraph { version: 1, arch: format!("resnet{depth}_w{width_mult}"), input, classes, layers: b.layers, output: out })
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

    #[test]
    fn graph_roundtrips_as_json() {
        let m = mobilenet_v2(10, 0.5, InputSpec::imagenet(64, 64), (0..10).map(|i| i.to_string()).collect());
        let j = serde_json::to_string(&m).unwrap();
        let back: ModelGraph = serde_json::from_str(&j).unwrap();
        assert_eq!(m, back);
        back.validate().unwrap();
    }
}
