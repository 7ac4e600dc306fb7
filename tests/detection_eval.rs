//! `taoflow eval-detections` against pycocotools (`scripts/test.sh` installs it;
//! TAOFLOW_REQUIRE_PYTHON=1 makes its absence a failure), and its handling of bad input.

mod common;

use common::Project;
use serde_json::{Value, json};
use taoflow::data::rng::Rng;

const PYCOCO: &str = r#"
import contextlib, io, json, sys
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1]); dt = gt.loadRes(sys.argv[2])
    e = COCOeval(gt, dt, "bbox"); e.evaluate(); e.accumulate(); e.summarize()
per = {}
for k, cid in enumerate(e.params.catIds):
    p = e.eval["precision"][:, :, k, 0, 2]; p = p[p > -1]
    per[gt.cats[cid]["name"]] = float(np.mean(p)) if p.size else -1.0
print(json.dumps({"stats": [float(s) for s in e.stats], "per_class": per}))
"#;

fn have_pycocotools() -> bool {
    let ok = std::process::Command::new("python3").args(["-c", "import pycocotools.cocoeval"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        assert!(std::env::var_os("TAOFLOW_REQUIRE_PYTHON").is_none(), "pycocotools is required (scripts/test.sh installs it)");
        eprintln!("skipping: python3 -c 'import pycocotools' failed");
    }
    ok
}

fn pycocotools(p: &Project, gt: &str, dt: &str) -> Value {
    let o = std::process::Command::new("python3").args(["-c", PYCOCO, p.path(gt).to_str().unwrap(), p.path(dt).to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "pycocotools: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn ours(p: &Project, gt: &str, dt: &str) -> Value {
    let o = p.run(&["eval-detections", gt, dt, "--json"]);
    assert!(o.status.success(), "{}", common::text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

const STATS: [&str; 12] = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"];

fn assert_same(ours: &Value, reference: &Value, what: &str) {
    for (i, k) in STATS.iter().enumerate() {
        let (a, b) = (ours["coco"][k].as_f64().unwrap(), reference["stats"][i].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6, "{what}: {k}: ours {a}, pycocotools {b}");
    }
    for c in ours["coco_per_class"].as_array().unwrap() {
        let name = c["class"].as_str().unwrap();
        let (a, b) = (c["ap"].as_f64().unwrap(), reference["per_class"][name].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6, "{what}: AP of `{name}`: ours {a}, pycocotools {b}");
    }
}

/// A detection near `b` ([x, y, w, h]): each coordinate moved by up to `jitter` of the size.
fn near(r: &mut Rng, b: [f64; 4], jitter: f64) -> [f64; 4] {
    let j = |r: &mut Rng, s: f64| (r.f64() * 2.0 - 1.0) * jitter * s;
    let x = b[0] + j(r, b[2]);
    let y = b[1] + j(r, b[3]);
    [x, y, (b[2] + j(r, b[2])).max(1.0), (b[3] + j(r, b[3])).max(1.0)]
}

/// Crowded small boxes: many 6–40 px objects per image, empty images (with and without
/// detections), crowd regions, one image with more than 100 detections, scores rounded to
/// two decimals so that ties must break as pycocotools breaks them.
fn crowded(seed: u64) -> (Value, Value) {
    let mut r = Rng::new(seed);
    let (mut images, mut anns, mut dets) = (Vec::new(), Vec::new(), Vec::new());
    let mut id = 1;
    for img in 1..=24u64 {
        images.push(json!({"id": img * 3, "file_name": format!("{img:06}.png"), "width": 640, "height": 480}));
        let n = if img % 5 == 0 { 0 } else { 5 + r.below(40) };
        for _ in 0..n {
            let (w, h) = (6.0 + r.f64() * 34.0, 6.0 + r.f64() * 34.0);
            let b = [r.f64() * 600.0, r.f64() * 440.0, w, h];
            anns.push(json!({"id": id, "image_id": img * 3, "category_id": 1, "bbox": b, "area": w * h, "iscrowd": 0}));
            id += 1;
            let found = r.f64();
            if found < 0.8 {
                let s = (r.f64() * 100.0).round() / 100.0;
                dets.push(json!({"image_id": img * 3, "category_id": 1, "bbox": near(&mut r, b, 0.25), "score": s}));
            }
            if found < 0.15 {
                dets.push(json!({"image_id": img * 3, "category_id": 1, "bbox": near(&mut r, b, 0.1), "score": (r.f64() * 100.0).round() / 100.0}));
            }
        }
        if img % 7 == 3 {
            let b = [r.f64() * 300.0, r.f64() * 200.0, 200.0, 150.0];
            anns.push(json!({"id": id, "image_id": img * 3, "category_id": 1, "bbox": b, "area": 20000.0, "iscrowd": 1}));
            id += 1;
            for _ in 0..6 {
                let d = [b[0] + r.f64() * 150.0, b[1] + r.f64() * 100.0, 10.0 + r.f64() * 20.0, 10.0 + r.f64() * 20.0];
                dets.push(json!({"image_id": img * 3, "category_id": 1, "bbox": d, "score": (r.f64() * 100.0).round() / 100.0}));
            }
        }
        let fp = if img == 4 { 130 } else if img % 5 == 0 && img % 10 != 0 { 0 } else { r.below(6) };
        for _ in 0..fp {
            let d = [r.f64() * 620.0, r.f64() * 460.0, 4.0 + r.f64() * 30.0, 4.0 + r.f64() * 30.0];
            dets.push(json!({"image_id": img * 3, "category_id": 1, "bbox": d, "score": (r.f64() * 100.0).round() / 100.0}));
        }
    }
    let gt = json!({"info": {}, "images": images, "annotations": anns, "categories": [{"id": 1, "name": "tree"}]});
    (gt, Value::Array(dets))
}

/// Three classes of every size (small, medium, large), a category with no ground truth,
/// detections of a category the ground truth lacks, areas that differ from w·h, boxes
/// partly outside their image.
fn multiclass(seed: u64, crowd: bool) -> (Value, Value) {
    let mut r = Rng::new(seed);
    let (mut images, mut anns, mut dets) = (Vec::new(), Vec::new(), Vec::new());
    let mut id = 1;
    for img in 1..=30u64 {
        images.push(json!({"id": img, "file_name": format!("{img:06}.png")}));
        for _ in 0..r.below(8) {
            let cat = [1, 2, 4][r.below(3) as usize];
            let s = [8.0, 30.0, 90.0, 200.0][r.below(4) as usize] * (0.7 + r.f64() * 0.6);
            let (w, h) = (s * (0.5 + r.f64()), s * (0.5 + r.f64()));
            let b = [r.f64() * 1000.0 - 20.0, r.f64() * 300.0 - 10.0, w, h];
            let area = if crowd { w * h * (0.6 + r.f64() * 0.4) } else { w * h };
            let is_crowd = crowd && r.f64() < 0.05;
            anns.push(json!({"id": id, "image_id": img, "category_id": cat, "bbox": b, "area": area, "iscrowd": is_crowd as u8}));
            id += 1;
            if r.f64() < 0.85 {
                // sometimes the right box with the wrong class
                let dc = if r.f64() < 0.1 { [1, 2, 4][r.below(3) as usize] } else { cat };
                dets.push(json!({"image_id": img, "category_id": dc, "bbox": near(&mut r, b, 0.2), "score": r.f64()}));
            }
        }
        for _ in 0..r.below(5) {
            let cat = [1, 2, 4, 7][r.below(4) as usize];
            let s = 10.0 + r.f64() * 150.0;
            dets.push(json!({"image_id": img, "category_id": cat, "bbox": [r.f64() * 1000.0, r.f64() * 300.0, s, s * 0.8], "score": r.f64() * 0.7}));
        }
    }
    let cats = json!([{"id": 1, "name": "car"}, {"id": 2, "name": "pedestrian"}, {"id": 3, "name": "truck"}, {"id": 4, "name": "cyclist"}]);
    (json!({"info": {}, "images": images, "annotations": anns, "categories": cats}), Value::Array(dets))
}

#[test]
fn coco_metrics_equal_pycocotools() {
    if !have_pycocotools() {
        return;
    }
    let p = Project::new();
    let mut cases = Vec::new();
    for seed in 0..3 {
        cases.push((format!("crowded{seed}"), crowded(seed)));
        cases.push((format!("multiclass{seed}"), multiclass(100 + seed, true)));
    }
    for (name, (gt, dt)) in &cases {
        p.write(&format!("{name}/gt.json"), &gt.to_string());
        p.write(&format!("{name}/dt.json"), &dt.to_string());
        let (g, d) = (format!("{name}/gt.json"), format!("{name}/dt.json"));
        let a = ours(&p, &g, &d);
        let b = pycocotools(&p, &g, &d);
        assert_same(&a, &b, name);
        // the fixtures really exercise what they claim
        assert!(a["coco"]["AP"].as_f64().unwrap() > 0.05 && a["coco"]["AP"].as_f64().unwrap() < 0.95, "{name}: {}", a["coco"]);
    }
    // the category the detections invent is reported, not evaluated
    let a = ours(&p, "multiclass0/gt.json", "multiclass0/dt.json");
    assert!(a["skipped"].to_string().contains("category id 7"), "{}", a["skipped"]);
    let truck = a["coco_per_class"].as_array().unwrap().iter().find(|c| c["class"] == "truck").unwrap();
    assert_eq!(truck["ap"], json!(-1.0));
}

/// The same data as COCO JSON and as KITTI label folders gives the same numbers.
#[test]
fn kitti_folders_equal_coco_json() {
    let p = Project::new();
    let (gt, dt) = multiclass(7, false);
    p.write("gt.json", &gt.to_string());
    p.write("dt.json", &dt.to_string());
    let names = [(1, "Car"), (2, "Pedestrian"), (4, "Cyclist"), (7, "bus")];
    let name = |c: &Value| names.iter().find(|(i, _)| *i == c.as_i64().unwrap()).unwrap().1;
    let line = |cls: &str, b: &Value, score: Option<f64>| {
        let b: Vec<f64> = b.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let s = score.map_or(String::new(), |s| format!(" {s}"));
        format!("{cls} 0.00 0 0.00 {} {} {} {} 1.5 1.6 3.9 1.0 1.0 20.0 0.0{s}\n", b[0], b[1], b[0] + b[2], b[1] + b[3])
    };
    for img in gt["images"].as_array().unwrap() {
        let id = img["id"].as_i64().unwrap();
        let mut g = String::new();
        for a in gt["annotations"].as_array().unwrap().iter().filter(|a| a["image_id"] == id) {
            g.push_str(&line(name(&a["category_id"]), &a["bbox"], None));
        }
        if id == 3 {
            g.push_str("DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n");
        }
        p.write(&format!("gt/{id:06}.txt"), &g);
        let mut d = String::new();
        for x in dt.as_array().unwrap().iter().filter(|a| a["image_id"] == id) {
            d.push_str(&line(name(&x["category_id"]), &x["bbox"], x["score"].as_f64()));
        }
        if id != 5 {
            // no file at all for image 5: no detections there
            p.write(&format!("dt/{id:06}.txt"), &d);
        }
    }
    let coco = ours(&p, "gt.json", "dt.json");
    let kitti = ours(&p, "gt", "dt");
    // image 5's detections are absent from the KITTI form: take them out of the COCO one too
    let dt5: Vec<Value> = dt.as_array().unwrap().iter().filter(|a| a["image_id"] != 5).cloned().collect();
    p.write("dt5.json", &Value::Array(dt5).to_string());
    let coco5 = ours(&p, "gt.json", "dt5.json");
    for k in STATS {
        let (a, b) = (coco5["coco"][k].as_f64().unwrap(), kitti["coco"][k].as_f64().unwrap());
        // the KITTI files hold the coordinates in decimal text: equal within rounding
        assert!((a - b).abs() < 1e-9, "{k}: COCO {a}, KITTI {b}");
    }
    assert_ne!(coco["coco"]["AP"], coco5["coco"]["AP"], "image 5's detections matter");
    // KITTI class names are lower-cased and sorted; `truck` (no boxes) does not exist there
    let classes: Vec<&str> = kitti["coco_per_class"].as_array().unwrap().iter().map(|c| c["class"].as_str().unwrap()).collect();
    assert_eq!(classes, ["car", "cyclist", "pedestrian"]);
    assert!(kitti["skipped"].to_string().contains("bus"), "{}", kitti["skipped"]);
    // COCO ground truth with KITTI detections (images by file-name stem, classes by name)
    let mixed = ours(&p, "gt.json", "dt");
    for k in STATS {
        let (a, b) = (mixed["coco"][k].as_f64().unwrap(), kitti["coco"][k].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{k}: COCO GT + KITTI detections {a}, KITTI {b}");
    }
    // the TAO metric with per-class settings, and the text report
    let o = p.run(&["eval-detections", "gt", "dt", "--iou", "0.5", "--iou", "car=0.7", "--min-height", "20", "--ap-mode", "sample", "--out", "report"]);
    assert!(o.status.success(), "{}", common::text(&o));
    let t = common::text(&o);
    for want in ["Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]", "TAO mAP (11-point sample): 0.", "cyclist", "0.70"] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    let m: Value = serde_json::from_str(&p.read("report/metrics.json")).unwrap();
    assert_eq!(m["tao"]["mode"], "sample");
    assert_eq!(m["tao_settings"][0][1]["iou"], json!(0.7));
    let png = image::open(p.path("report/pr_curves.png")).unwrap().to_rgb8();
    assert!(png.pixels().any(|px| px.0 == [31, 119, 180]), "the first class's curve is drawn");
    // the picture of predictions vs ground truth, from the images' folder
    for id in 1..=4 {
        let img = image::RgbImage::from_pixel(1000, 300, image::Rgb([90, 90, 90]));
        img.save(p.path(&format!("imgs/{id:06}.png"))).unwrap_or_else(|_| {
            std::fs::create_dir_all(p.path("imgs")).unwrap();
            img.save(p.path(&format!("imgs/{id:06}.png"))).unwrap()
        });
    }
    let o = p.run(&["eval-detections", "gt", "dt", "-o", "report2", "--images", "imgs", "--grid", "3", "--grid-score", "0.0"]);
    assert!(o.status.success(), "{}", common::text(&o));
    let g = image::open(p.path("report2/predictions.png")).unwrap().to_rgb8();
    assert_eq!(g.width(), 3 * 324 + 4, "three cells in a row");
    assert!(g.pixels().any(|px| px.0 == [40, 200, 60]) && g.pixels().any(|px| px.0 == [230, 40, 40]), "ground truth and detections drawn");
    let o = p.run(&["eval-detections", "gt", "dt", "-o", "report3", "--images", "nowhere"]);
    assert_eq!(o.status.code(), Some(3), "{}", common::text(&o));
    assert!(common::text(&o).contains("none of the images was found"), "{}", common::text(&o));
    assert!(!p.path("report3").exists(), "nothing written when the picture cannot be made");
}

#[test]
fn bad_input_is_a_clear_error() {
    let p = Project::new();
    let (gt, dt) = multiclass(1, false);
    p.write("gt.json", &gt.to_string());
    p.write("dt.json", &dt.to_string());
    let check = |args: &[&str], wants: &[&str]| {
        let o = p.run(args);
        let t = common::text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(!t.contains("panicked"), "{t}");
        for w in wants {
            assert!(t.contains(w), "{args:?}: missing {w:?} in\n{t}");
        }
        assert!(!p.path("out").exists(), "nothing is written on failure");
    };
    // detections of images the ground truth does not have
    let mut bad = dt.clone();
    bad.as_array_mut().unwrap().push(json!({"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}));
    p.write("bad_img.json", &bad.to_string());
    check(&["eval-detections", "gt.json", "bad_img.json", "-o", "out"], &["bad_img.json", "not in the ground truth", "999"]);
    // malformed JSON names the line
    p.write("broken.json", "[\n{\"image_id\": 1,\n \"bbox\": [1, 2, 3]\n");
    check(&["eval-detections", "gt.json", "broken.json"], &["broken.json:4:", "not valid JSON"]);
    // a box of three numbers, a negative width, a missing score
    p.write("short.json", r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.4}]"#);
    check(&["eval-detections", "gt.json", "short.json"], &["short.json: [0]", "4 numbers"]);
    p.write("neg.json", r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, -3, 4], "score": 0.4}]"#);
    check(&["eval-detections", "gt.json", "neg.json"], &["negative width"]);
    p.write("noscore.json", r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]"#);
    check(&["eval-detections", "gt.json", "noscore.json"], &["`score`"]);
    // the files the wrong way round
    check(&["eval-detections", "dt.json", "gt.json"], &["dt.json", "detections file"]);
    // thresholds outside [0, 1], an unknown class, an unknown AP mode
    check(&["eval-detections", "gt.json", "dt.json", "--iou", "1.2"], &["outside [0, 1]"]);
    check(&["eval-detections", "gt.json", "dt.json", "--iou", "bus=0.5"], &["no class `bus`"]);
    check(&["eval-detections", "gt.json", "dt.json", "--ap-mode", "voc"], &["sample", "integrate"]);
    // KITTI: a short line names file and line; a detection file for an unknown image
    p.write("kgt/a.txt", "Car 0 0 0 10 10 50 50 1 1 1 1 1 1 1\n");
    p.write("kdt/a.txt", "Car 0 0 0 10 10 50 50 1 1 1 1 1 1 1 0.9\nCar 0 0 0 10 10 50 50 1 1 1 1 1 1 1\n");
    check(&["eval-detections", "kgt", "kdt"], &["a.txt:2", "16"]);
    p.write("kdt/a.txt", "Car 0 0 0 10 10 50 50 1 1 1 1 1 1 1 0.9\n");
    p.write("kdt/b.txt", "Car 0 0 0 10 10 50 50 1 1 1 1 1 1 1 0.9\n");
    check(&["eval-detections", "kgt", "kdt"], &["b.txt", "no image of the ground truth"]);
    // COCO detections need COCO ground truth
    check(&["eval-detections", "kgt", "dt.json"], &["COCO detections", "KITTI"]);
    check(&["eval-detections", "nothing.json", "dt.json"], &["nothing.json", "does not exist"]);
}
