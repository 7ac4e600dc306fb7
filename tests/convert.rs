//! The `convert` stage on every source format, made in the tests, and the loader and
//! Python's `webdataset` reading what it wrote.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::fixtures;
use common::{text, Project};
use taoflow::data::image_io::InputSpec;
use taoflow::data::loader::{Dataset, LoaderOptions};
use taoflow::data::shards::ShardReader;
use taoflow::data::DatasetManifest;

fn manifest(p: &Project, pipeline: &str, stage: &str) -> DatasetManifest {
    let path = p.path(&format!("outputs/{pipeline}/{stage}/dataset/dataset.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn run_ok(p: &Project) -> String {
    let out = p.run(&["run", "p.toml"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    t
}

/// Every (key, label member) in a split, read with our shard reader.
fn samples(p: &Project, pipeline: &str, split: &str) -> BTreeMap<String, Vec<String>> {
    let root = p.path(&format!("outputs/{pipeline}/convert/dataset"));
    let m = manifest(p, pipeline, "convert");
    let mut out = BTreeMap::new();
    for sh in &m.splits[split].shards {
        ShardReader::open(&root.join(sh))
            .unwrap()
            .for_each(|s| {
                let mut exts: Vec<String> = s.members.iter().map(|(e, _)| e.clone()).collect();
                exts.sort();
                if let Some(c) = s.member("cls") {
                    exts.push(format!("cls={}", String::from_utf8_lossy(c)));
                }
                out.insert(s.key.clone(), exts);
                Ok(())
            })
            .unwrap();
    }
    out
}

#[test]
fn image_folder_all_encodings_stratified_split() {
    let p = Project::new();
    fixtures::image_folder(&p.path("src"));
    std::fs::write(p.path("src/cat/notes.txt"), "not an image").unwrap();
    p.write("p.toml", "[pipeline]\nname = \"t\"\nseed = 5\n[stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"src\"\nval_fraction = 0.34\n");
    let t = run_ok(&p);
    assert!(t.contains("1 file(s) without an image extension"), "{t}");
    let m = manifest(&p, "t", "convert");
    assert_eq!(m.task, "classification");
    assert_eq!(m.classes, ["bird", "cat", "dog"]);
    assert_eq!(m.splits["train"].count + m.splits["val"].count, 18);
    for c in ["bird", "cat", "dog"] {
        assert_eq!(m.splits["val"].per_class[c], 2, "stratified: 2 of 6 per class");
        assert_eq!(m.splits["train"].per_class[c], 4);
    }
    assert_eq!(m.image.encodings["png"], 18 - 3, "JPEGs are kept as JPEG, BMP/TIFF become PNG: {:?}", m.image.encodings);
    assert_eq!(m.image.channels["1"], 3, "grey images counted: {:?}", m.image.channels);
    assert_eq!(m.image.width.min, 20);
    assert_eq!(m.image.width.max, 40);
    let s = samples(&p, "t", "train");
    assert!(s.values().all(|v| v.iter().any(|e| e == "png" || e == "jpg") && v.iter().any(|e| e.starts_with("cls="))));
}

#[test]
fn same_input_same_bytes_and_seed_changes_split() {
    let a = Project::new();
    let b = Project::new();
    for p in [&a, &b] {
        fixtures::image_folder(&p.path("src"));
        p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"src\"\nshard_max_samples = 4\n");
        run_ok(p);
    }
    let la: serde_json::Value = serde_json::from_str(&a.read("p.lock")).unwrap();
    let lb: serde_json::Value = serde_json::from_str(&b.read("p.lock")).unwrap();
    let da = &la["stages"]["convert"]["outs"]["dataset"]["digest"];
    assert_eq!(da, &lb["stages"]["convert"]["outs"]["dataset"]["digest"], "two runs, same digest");
    assert!(manifest(&a, "t", "convert").splits["train"].shards.len() >= 3, "shard_max_samples bounds shards");
    // Another seed: another split, another digest.
    let out = a.run(&["run", "p.toml", "-S", "pipeline.seed=99", "--json"]);
    assert!(out.status.success());
    let l2: serde_json::Value = serde_json::from_str(&a.read("p.lock")).unwrap();
    assert_ne!(da, &l2["stages"]["convert"]["outs"]["dataset"]["digest"]);
}

#[test]
fn idx_gzip_and_raw_with_given_val_files_and_class_names() {
    let p = Project::new();
    fixtures::idx(&p.path("mnist"), "train", 50, 8, 6, 5, true);
    fixtures::idx(&p.path("mnist"), "t10k", 20, 8, 6, 5, false);
    p.write(
        "p.toml",
        r#"[pipeline]
name = "t"
[stages.convert]
kind = "convert"
format = "idx"
source = "mnist"
val_images = "t10k-images-idx3-ubyte"
val_labels = "t10k-labels-idx1-ubyte"
classes = ["zero", "one", "two", "three", "four"]
"#,
    );
    run_ok(&p);
    let m = manifest(&p, "t", "convert");
    assert_eq!(m.classes, ["zero", "one", "two", "three", "four"]);
    assert_eq!(m.splits["train"].count, 50);
    assert_eq!(m.splits["val"].count, 20);
    assert_eq!(m.splits["val"].per_class["three"], 4);
    assert_eq!(m.image.width.max, 8);
    assert_eq!(m.image.height.max, 6);
    let s = samples(&p, "t", "val");
    assert_eq!(s["val-000003"], vec!["cls".to_string(), "png".into(), "cls=3".into()]);
}

#[test]
fn committed_fashion_mnist_subset() {
    let p = Project::new();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-mini");
    p.write(
        "p.toml",
        &format!(
            "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"idx\"\nsource = \"{}\"\nval_images = \"t10k-images-idx3-ubyte.gz\"\nval_labels = \"t10k-labels-idx1-ubyte.gz\"\n",
            data.display()
        ),
    );
    run_ok(&p);
    let m = manifest(&p, "t", "convert");
    assert_eq!(m.splits["train"].count, 3000);
    assert_eq!(m.splits["val"].count, 1000);
    assert!(m.splits["train"].per_class.values().all(|&n| n == 300));
    assert_eq!(m.classes.len(), 10);
}

#[test]
fn kitti_class_map_ignore_and_box_counts() {
    let p = Project::new();
    let l = fixtures::kitti_line;
    let labels = [
        format!("{}{}", l("Car", [1.0, 2.0, 30.0, 20.0]), l("Pedestrian", [40.0, 5.0, 50.0, 35.0])),
        format!("{}{}", l("Van", [0.0, 0.0, 64.0, 48.0]), l("DontCare", [3.0, 3.0, 9.0, 9.0])),
        l("cyclist", [10.0, 10.0, 20.0, 30.0]),
        String::new(),
    ];
    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    fixtures::kitti(&p.path("kitti"), &refs, 64, 48);
    p.write(
        "p.toml",
        r#"[pipeline]
name = "t"
[stages.convert]
kind = "convert"
format = "kitti"
source = "kitti"
class_map = { car = "vehicle", VAN = "vehicle", pedestrian = "person", Cyclist = "person", Truck = "vehicle" }
val_fraction = 0.0
"#,
    );
    let t = run_ok(&p);
    assert!(t.contains("class_map maps `Truck` -> `vehicle`, but no sample has class `Truck`"), "{t}");
    let m = manifest(&p, "t", "convert");
    assert_eq!(m.task, "detection");
    assert_eq!(m.classes, ["vehicle", "person"]);
    assert_eq!(m.splits["train"].count, 4, "an image without boxes is kept");
    assert_eq!(m.splits["train"].boxes_per_class["vehicle"], 2);
    assert_eq!(m.splits["train"].boxes_per_class["person"], 2);
    // Synthetic KITTI through the CLI converts cleanly too.
    let out = p.run(&["synth", "kitti", "syn", "--count", "12", "--width", "96", "--height", "64"]);
    assert!(out.status.success(), "{}", text(&out));
    p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"kitti\"\nsource = \"syn\"\n");
    run_ok(&p);
    let m = manifest(&p, "t", "convert");
    assert_eq!(m.classes, ["car", "cyclist", "pedestrian"]);
    assert_eq!(m.splits["train"].count + m.splits["val"].count, 12);
}

#[test]
fn segmentation_palette_and_grey_masks() {
    let p = Project::new();
    fixtures::segmentation(&p.path("seg"), 6);
    p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"segmentation\"\nsource = \"seg\"\nclasses = [\"background\", \"road\", \"car\"]\nval_fraction = 0.0\n");
    run_ok(&p);
    let m = manifest(&p, "t", "convert");
    assert_eq!(m.task, "segmentation");
    assert_eq!(m.splits["train"].per_class["background"], 6);
    assert_eq!(m.splits["train"].per_class["road"], 6);
    assert_eq!(m.splits["train"].per_class["car"], 3, "only palette masks use index 2");
    // The loader resizes masks with nearest sampling: indices stay indices.
    let ds = Dataset::open(&p.path("outputs/t/convert/dataset")).unwrap();
    let ml = ds.in_memory("train", &InputSpec::plain(16, 12, 3)).unwrap();
    let b = &ml.epoch(&LoaderOptions { batch_size: 6, shuffle: false, ..Default::default() }).unwrap()[0];
    for (k, mask) in b.keys.iter().zip(&b.masks) {
        let mask = mask.as_ref().unwrap();
        assert_eq!(mask.len(), 16 * 12);
        assert!(mask.iter().all(|v| *v <= 2), "{k}");
        if k.ends_with('0') {
            assert_eq!((mask[0], mask[15]), (0, 2), "palette mask {k}: left 0, right 2");
        }
    }
}

#[test]
fn coco_boxes() {
    let p = Project::new();
    fixtures::coco(&p.path("coco"));
    p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"coco\"\nsource = \"coco\"\nimages_dir = \"images\"\nval_fraction = 0.0\n");
    run_ok(&p);
    let m = manifest(&p, "t", "convert");
    assert_eq!(m.classes, ["bicycle", "person"]);
    assert_eq!(m.splits["train"].count, 6);
    assert_eq!(m.splits["train"].boxes_per_class["bicycle"], 9);
    assert_eq!(m.splits["train"].boxes_per_class["person"], 3);
    let ds = Dataset::open(&p.path("outputs/t/convert/dataset")).unwrap();
    let b = ds.in_memory("train", &InputSpec::plain(25, 20, 3)).unwrap().epoch(&LoaderOptions { batch_size: 6, shuffle: false, ..Default::default() }).unwrap();
    let t = b[0].targets[0].as_ref().unwrap();
    assert_eq!((t.width, t.height), (50, 40));
    assert!(t.boxes.iter().any(|x| x.bbox == [10.0, 12.0, 40.0, 32.0]), "COCO xywh -> x1y1x2y2: {:?}", t.boxes);
    // the same boxes in the model input's pixels (50×40 stored, 25×20 input: halved)
    assert!(b[0].boxes[0].iter().any(|x| x.bbox == [5.0, 6.0, 20.0, 16.0]), "{:?}", b[0].boxes[0]);
    assert_eq!(b[0].boxes.len(), 6);
}

#[test]
fn split_lists() {
    let p = Project::new();
    fixtures::image_folder(&p.path("src"));
    p.write("src/train.txt", "cat/img0\ncat/img1.png\ndog/img0\n# comment\nbird/img9\n");
    p.write("src/val.txt", "bird/img0\n");
    p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"src\"\nsplit_lists = { train = \"train.txt\", val = \"val.txt\" }\n");
    let t = run_ok(&p);
    assert!(t.contains("1 listed sample(s) of split `train` were not found"), "{t}");
    assert!(t.contains("14 sample(s) are in no split list"), "{t}");
    let m = manifest(&p, "t", "convert");
    assert_eq!(m.splits["train"].count, 3);
    assert_eq!(m.splits["val"].count, 1);
}

#[test]
fn loader_streams_every_sample_once_shuffled_deterministically() {
    let p = Project::new();
    fixtures::idx(&p.path("mnist"), "train", 203, 10, 10, 7, true);
    p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"idx\"\nsource = \"mnist\"\nval_fraction = 0.0\nshard_max_samples = 50\n");
    run_ok(&p);
    let ds = Dataset::open(&p.path("outputs/t/convert/dataset")).unwrap();
    let spec = InputSpec { width: 16, height: 16, channels: 3, mean: vec![0.5; 3], std: vec![0.25; 3] };
    let opts = LoaderOptions { batch_size: 32, shuffle: true, seed: 1, epoch: 0, shuffle_buffer: 64, prefetch: 2, drop_last: false, augment: None, ..Default::default() };
    let keys = |o: &LoaderOptions| -> Vec<String> {
        let mut v = Vec::new();
        for b in ds.stream("train", &spec, o).unwrap() {
            let b = b.unwrap();
            assert_eq!(b.images.len(), b.len * 3 * 16 * 16);
            assert!(b.images.iter().all(|x| (-2.0..=2.0).contains(x)), "normalised range");
            v.extend(b.keys);
        }
        v
    };
    let a = keys(&opts);
    assert_eq!(a.len(), 203);
    let mut sorted = a.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 203, "every sample exactly once");
    assert_eq!(a, keys(&opts), "same seed and epoch, same order");
    let b = keys(&LoaderOptions { epoch: 1, ..opts.clone() });
    assert_ne!(a, b, "another epoch, another order");
    let unshuffled = keys(&LoaderOptions { shuffle: false, ..opts.clone() });
    assert_ne!(a, unshuffled);
    let n: usize = ds.stream("train", &spec, &LoaderOptions { drop_last: true, ..opts.clone() }).unwrap().map(|b| b.unwrap().len).sum();
    assert_eq!(n, 192, "drop_last");
    // In-memory mode sees the same samples; labels match the .cls members.
    let ml = ds.in_memory("train", &spec).unwrap();
    let batches = ml.epoch(&opts).unwrap();
    let mut mk: Vec<String> = batches.iter().flat_map(|b| b.keys.clone()).collect();
    mk.sort();
    assert_eq!(mk, sorted);
    for b in &batches {
        for (k, l) in b.keys.iter().zip(&b.labels) {
            let i: usize = k.trim_start_matches("img-").parse().unwrap();
            assert_eq!(*l as usize, i % 7, "{k}");
        }
    }
    assert!(ds.stream("nope", &spec, &opts).is_err());
    // Online flips/crops: the same samples, other pixels, reproducible per epoch.
    let aug = LoaderOptions { augment: Some(taoflow::data::loader::OnlineAugment { hflip: true, crop_padding: 2 }), ..opts.clone() };
    let plain: Vec<f32> = ds.stream("train", &spec, &LoaderOptions { shuffle: false, ..opts.clone() }).unwrap().flat_map(|b| b.unwrap().images).collect();
    let a1: Vec<f32> = ds.stream("train", &spec, &LoaderOptions { shuffle: false, ..aug.clone() }).unwrap().flat_map(|b| b.unwrap().images).collect();
    let a2: Vec<f32> = ds.stream("train", &spec, &LoaderOptions { shuffle: false, ..aug.clone() }).unwrap().flat_map(|b| b.unwrap().images).collect();
    assert_eq!(a1.len(), plain.len());
    assert_ne!(a1, plain);
    assert_eq!(a1, a2);
    let mem: Vec<f32> = ml.epoch(&LoaderOptions { shuffle: false, ..aug.clone() }).unwrap().iter().flat_map(|b| b.images.clone()).collect();
    assert_eq!(mem, a1, "in-memory mode augments the same way");
}

/// Python's `webdataset` reads our shards and sees the same samples and labels.
/// `scripts/test.sh` installs it (TAOFLOW_REQUIRE_PYTHON=1 makes its absence a failure).
#[test]
fn python_webdataset_reads_the_shards() {
    let have = std::process::Command::new("python3").args(["-c", "import webdataset, PIL"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !have {
        assert!(std::env::var_os("TAOFLOW_REQUIRE_PYTHON").is_none(), "python3 with webdataset and pillow is required (scripts/test.sh installs them)");
        eprintln!("skipping: python3 -c 'import webdataset, PIL' failed");
        return;
    }
    let p = Project::new();
    fixtures::image_folder(&p.path("src"));
    let l = fixtures::kitti_line;
    let kl = [l("Car", [1.0, 2.0, 30.0, 20.0]), l("Pedestrian", [4.0, 5.0, 20.0, 35.0])];
    fixtures::kitti(&p.path("kitti"), &[kl[0].as_str(), kl[1].as_str()], 64, 48);
    p.write(
        "p.toml",
        "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"src\"\nshard_max_samples = 5\n[stages.det]\nkind = \"convert\"\nformat = \"kitti\"\nsource = \"kitti\"\nval_fraction = 0.0\n",
    );
    run_ok(&p);
    let script = r#"
import sys, json, glob, webdataset as wds
root = sys.argv[1]
m = json.load(open(root + "/dataset.json"))
out = {}
for split, info in m["splits"].items():
    urls = [root + "/" + s for s in info["shards"]]
    for s in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
        img = s.get("png", s.get("jpg"))
        rec = {"split": split, "size": list(img.size)}
        if "cls" in s: rec["cls"] = int(s["cls"])
        if "json" in s: rec["boxes"] = [b["class"] for b in s["json"]["boxes"]]
        out[s["__key__"]] = rec
print(json.dumps(out, sort_keys=True))
"#;
    for (stage, n) in [("convert", 18), ("det", 2)] {
        let root = p.path(&format!("outputs/t/{stage}/dataset"));
        let o = std::process::Command::new("python3").args(["-c", script, root.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let py: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(py.len(), n);
        // Compare with our own reader.
        let ds = Dataset::open(&root).unwrap();
        for split in ds.manifest.splits.keys() {
            for sh in &ds.manifest.splits[split].shards {
                ShardReader::open(&root.join(sh))
                    .unwrap()
                    .for_each(|s| {
                        let rec = &py[&s.key];
                        assert_eq!(rec["split"], split.as_str());
                        if let Some(c) = s.member("cls") {
                            assert_eq!(rec["cls"], String::from_utf8_lossy(c).parse::<i64>().unwrap(), "{}", s.key);
                        }
                        if let Some(j) = s.member("json") {
                            let t: taoflow::data::DetectionTarget = serde_json::from_slice(j).unwrap();
                            let names: Vec<&str> = t.boxes.iter().map(|b| b.class.as_str()).collect();
                            assert_eq!(rec["boxes"], serde_json::json!(names));
                            assert_eq!(rec["size"], serde_json::json!([t.width, t.height]));
                        }
                        Ok(())
                    })
                    .unwrap();
            }
        }
    }
}

/// Every format: two conversions in separate workspaces and stores give the same digest.
#[test]
fn every_format_is_deterministic() {
    type Setup = (&'static str, fn(&Project), &'static str);
    let setups: Vec<Setup> = vec![
        ("image_folder", |p| fixtures::image_folder(&p.path("src")), "format = \"image_folder\"\nsource = \"src\""),
        ("idx", |p| fixtures::idx(&p.path("src"), "train", 30, 6, 6, 3, true), "format = \"idx\"\nsource = \"src\""),
        (
            "kitti",
            |p| {
                let l = fixtures::kitti_line;
                let a = l("Car", [1.0, 1.0, 9.0, 9.0]);
                let b = l("Pedestrian", [2.0, 2.0, 7.0, 20.0]);
                fixtures::kitti(&p.path("src"), &[a.as_str(), b.as_str(), a.as_str()], 32, 24);
            },
            "format = \"kitti\"\nsource = \"src\"",
        ),
        ("segmentation", |p| fixtures::segmentation(&p.path("src"), 4), "format = \"segmentation\"\nsource = \"src\""),
        ("coco", |p| fixtures::coco(&p.path("src")), "format = \"coco\"\nsource = \"src\"\nimages_dir = \"images\""),
    ];
    for (name, setup, stage) in setups {
        let digests: Vec<String> = (0..2)
            .map(|_| {
                let p = Project::new();
                setup(&p);
                p.write("p.toml", &format!("[pipeline]\nname = \"t\"\nseed = 3\n[stages.convert]\nkind = \"convert\"\n{stage}\n"));
                run_ok(&p);
                let l: serde_json::Value = serde_json::from_str(&p.read("p.lock")).unwrap();
                l["stages"]["convert"]["outs"]["dataset"]["digest"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(digests[0], digests[1], "{name}");
    }
}
