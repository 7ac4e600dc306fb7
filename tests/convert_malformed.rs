//! Bad input to `convert`: each case gets a clear message that names the file (and line)
//! and what is wrong, or a counted skip; never a panic, never a half-written artifact.

mod common;

use common::fixtures;
use common::{text, Project};

struct Case {
    name: &'static str,
    setup: fn(&Project),
    /// The convert stage's keys (after `kind = "convert"`).
    stage: &'static str,
    code: i32,
    expect: &'static [&'static str],
}

fn folder(p: &Project) {
    fixtures::image_folder(&p.path("src"));
}

fn kitti_with(p: &Project, label: &str) {
    let good = fixtures::kitti_line("Car", [1.0, 2.0, 30.0, 20.0]);
    fixtures::kitti(&p.path("kitti"), &[good.as_str(), label], 64, 48);
}

fn seg(p: &Project) {
    fixtures::segmentation(&p.path("seg"), 2);
}

fn idx_ok(p: &Project) {
    fixtures::idx(&p.path("mnist"), "train", 10, 4, 4, 3, true);
}

const IMAGE_FOLDER: &str = "format = \"image_folder\"\nsource = \"src\"";
const KITTI: &str = "format = \"kitti\"\nsource = \"kitti\"\nval_fraction = 0.0";
const SEG: &str = "format = \"segmentation\"\nsource = \"seg\"\nclasses = [\"bg\", \"road\", \"car\"]\nval_fraction = 0.0";
const IDX: &str = "format = \"idx\"\nsource = \"mnist\"";
const COCO: &str = "format = \"coco\"\nsource = \"coco\"\nimages_dir = \"images\"\nval_fraction = 0.0";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "truncated_png",
            setup: |p| {
                folder(p);
                let f = p.path("src/cat/img0.png");
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() / 2]).unwrap();
            },
            stage: IMAGE_FOLDER,
            code: 1,
            expect: &["src/cat/img0.png", "cannot decode Png image", "on_bad_sample = \"skip\""],
        },
        Case {
            name: "truncated_png_skipped",
            setup: |p| {
                folder(p);
                let f = p.path("src/cat/img0.png");
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() / 2]).unwrap();
            },
            stage: "format = \"image_folder\"\nsource = \"src\"\non_bad_sample = \"skip\"",
            code: 0,
            expect: &["skipped 1 bad sample(s)", "src/cat/img0.png"],
        },
        Case {
            name: "text_file_named_jpg",
            setup: |p| {
                folder(p);
                p.write("src/dog/fake.jpg", "hello, I am not a JPEG");
            },
            stage: IMAGE_FOLDER,
            code: 1,
            expect: &["src/dog/fake.jpg", "not a PNG, JPEG, BMP or TIFF image"],
        },
        Case {
            name: "empty_file",
            setup: |p| {
                folder(p);
                p.write("src/dog/empty.png", "");
            },
            stage: IMAGE_FOLDER,
            code: 1,
            expect: &["src/dog/empty.png", "empty file"],
        },
        Case {
            name: "no_class_folders",
            setup: |p| std::fs::create_dir_all(p.path("src")).unwrap(),
            stage: IMAGE_FOLDER,
            code: 1,
            expect: &["no images found under", "one sub-folder per class"],
        },
        Case {
            name: "empty_class_folder_warns",
            setup: |p| {
                folder(p);
                std::fs::create_dir_all(p.path("src/fish")).unwrap();
            },
            stage: IMAGE_FOLDER,
            code: 0,
            expect: &["class folder", "src/fish` has no images"],
        },
        Case {
            name: "duplicate_keys",
            setup: |p| {
                folder(p);
                fixtures::save(&fixtures::rgb(8, 8, 1), &p.path("src/cat/img0.jpg"), image::ImageFormat::Jpeg);
            },
            stage: IMAGE_FOLDER,
            code: 1,
            expect: &["same key `cat/img0`", "img0.jpg", "img0.png"],
        },
        Case {
            name: "unknown_class_in_folder_with_class_map",
            setup: folder,
            stage: "format = \"image_folder\"\nsource = \"src\"\nclass_map = { cat = \"feline\", dog = \"canine\" }",
            code: 1,
            expect: &["unknown class `bird`", "class_map"],
        },
        Case {
            name: "kitti_wrong_field_count",
            setup: |p| kitti_with(p, "Car 0.00 0 -10 1 2 3 4 -1 -1 -1 -1000 -1000 -1000\n"),
            stage: KITTI,
            code: 1,
            expect: &["label_2/000001.txt:1", "15 fields", "this one has 14"],
        },
        Case {
            name: "kitti_box_not_a_number",
            setup: |p| kitti_with(p, "Car 0.00 0 -10 1 two 3 4 -1 -1 -1 -1000 -1000 -1000 -10\n"),
            stage: KITTI,
            code: 1,
            expect: &["label_2/000001.txt:1", "`two`", "not a number"],
        },
        Case {
            name: "kitti_box_outside_image",
            setup: |p| kitti_with(p, &fixtures::kitti_line("Car", [10.0, 10.0, 200.0, 20.0])),
            stage: KITTI,
            code: 1,
            expect: &["label_2/000001.txt:1", "outside the 64x48 image"],
        },
        Case {
            name: "kitti_negative_size_box",
            setup: |p| kitti_with(p, &format!("\n{}", fixtures::kitti_line("Car", [30.0, 10.0, 20.0, 20.0]))),
            stage: KITTI,
            code: 1,
            expect: &["label_2/000001.txt:2", "negative or zero size"],
        },
        Case {
            name: "kitti_unknown_class_capitalised",
            setup: |p| kitti_with(p, &fixtures::kitti_line("Cyclist", [1.0, 1.0, 5.0, 5.0])),
            stage: "format = \"kitti\"\nsource = \"kitti\"\nval_fraction = 0.0\nclasses = [\"car\", \"cyclists\"]",
            code: 1,
            expect: &["label_2/000001.txt:1", "unknown class `Cyclist`", "did you mean `cyclists`?"],
        },
        Case {
            name: "kitti_missing_label_file",
            setup: |p| {
                kitti_with(p, "");
                std::fs::remove_file(p.path("kitti/label_2/000001.txt")).unwrap();
            },
            stage: KITTI,
            code: 1,
            expect: &["image_2/000001.png", "no label file", "label_2/000001.txt"],
        },
        Case {
            name: "kitti_bad_lines_skipped",
            setup: |p| kitti_with(p, "Car 1 2 3\n"),
            stage: "format = \"kitti\"\nsource = \"kitti\"\nval_fraction = 0.0\non_bad_sample = \"skip\"",
            code: 0,
            expect: &["skipped 1 bad sample(s)", "label_2/000001.txt:1"],
        },
        Case {
            name: "kitti_no_image_folder",
            setup: |p| std::fs::create_dir_all(p.path("kitti/label_2")).unwrap(),
            stage: KITTI,
            code: 1,
            expect: &["KITTI image folder", "kitti/image_2` is not a folder", "images_dir"],
        },
        Case {
            name: "mask_size_differs",
            setup: |p| {
                seg(p);
                fixtures::palette_mask(&p.path("seg/masks/s0.png"), 10, 10, |_, _| 0);
            },
            stage: SEG,
            code: 1,
            expect: &["seg/masks/s0.png", "mask is 10x10 but its image", "is 32x24"],
        },
        Case {
            name: "mask_index_beyond_classes",
            setup: |p| {
                seg(p);
                fixtures::palette_mask(&p.path("seg/masks/s0.png"), 32, 24, |_, _| 7);
            },
            stage: SEG,
            code: 1,
            expect: &["seg/masks/s0.png", "class index 7 but there are 3 classes"],
        },
        Case {
            name: "mask_is_rgb",
            setup: |p| {
                seg(p);
                fixtures::save(&fixtures::rgb(32, 24, 3), &p.path("seg/masks/s0.png"), image::ImageFormat::Png);
            },
            stage: SEG,
            code: 1,
            expect: &["seg/masks/s0.png", "not class indices"],
        },
        Case {
            name: "mask_missing",
            setup: |p| {
                seg(p);
                std::fs::remove_file(p.path("seg/masks/s1.png")).unwrap();
            },
            stage: SEG,
            code: 1,
            expect: &["seg/images/s1.jpg", "no mask", "masks/s1.png"],
        },
        Case {
            name: "idx_bad_magic",
            setup: |p| {
                idx_ok(p);
                std::fs::write(p.path("mnist/train-images-idx3-ubyte.gz"), b"\x01\x02\x03\x04garbage").unwrap();
            },
            stage: IDX,
            code: 1,
            expect: &["mnist/train-images-idx3-ubyte.gz", "not a valid IDX file", "bad magic"],
        },
        Case {
            name: "idx_truncated",
            setup: |p| {
                fixtures::idx(&p.path("mnist"), "train", 10, 4, 4, 3, false);
                let f = p.path("mnist/train-images-idx3-ubyte");
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() - 20]).unwrap();
            },
            stage: "format = \"idx\"\nsource = \"mnist\"\nimages = \"train-images-idx3-ubyte\"\nlabels = \"train-labels-idx1-ubyte\"",
            code: 1,
            expect: &["train-images-idx3-ubyte", "truncated: 160 bytes of data expected, 140 found"],
        },
        Case {
            name: "idx_count_mismatch",
            setup: |p| {
                idx_ok(p);
                fixtures::idx(&p.path("other"), "train", 7, 4, 4, 3, true);
                std::fs::copy(p.path("other/train-labels-idx1-ubyte.gz"), p.path("mnist/train-labels-idx1-ubyte.gz")).unwrap();
            },
            stage: IDX,
            code: 1,
            expect: &["has 10 images but", "has 7 labels"],
        },
        Case {
            name: "idx_corrupt_gzip",
            setup: |p| {
                idx_ok(p);
                let f = p.path("mnist/train-labels-idx1-ubyte.gz");
                let mut b = std::fs::read(&f).unwrap();
                let n = b.len();
                b.truncate(n - 8);
                b.extend_from_slice(b"\x00\x00");
                std::fs::write(&f, b).unwrap();
            },
            stage: IDX,
            code: 1,
            expect: &["train-labels-idx1-ubyte.gz", "not a valid gzip file"],
        },
        Case {
            name: "idx_label_beyond_class_names",
            setup: idx_ok,
            stage: "format = \"idx\"\nsource = \"mnist\"\nclasses = [\"a\", \"b\"]",
            code: 1,
            expect: &["train-images-idx3-ubyte.gz#", "label 2 but only 2 class name(s)"],
        },
        Case {
            name: "coco_not_json",
            setup: |p| {
                fixtures::coco(&p.path("coco"));
                p.write("coco/annotations.json", "{\"images\": [ oops");
            },
            stage: COCO,
            code: 1,
            expect: &["coco/annotations.json", "is not COCO JSON", "line 1"],
        },
        Case {
            name: "coco_unknown_image_id",
            setup: |p| {
                fixtures::coco(&p.path("coco"));
                let f = p.path("coco/annotations.json");
                let t = std::fs::read_to_string(&f).unwrap().replacen("\"image_id\": 100", "\"image_id\": 999", 1);
                std::fs::write(&f, t).unwrap();
            },
            stage: COCO,
            code: 1,
            expect: &["annotation #0 (image_id 999)", "not in `images`"],
        },
        Case {
            name: "coco_negative_box",
            setup: |p| {
                fixtures::coco(&p.path("coco"));
                let f = p.path("coco/annotations.json");
                let t = std::fs::read_to_string(&f).unwrap().replacen("20.0,\n        10.0", "-20.0,\n        10.0", 1);
                std::fs::write(&f, t).unwrap();
            },
            stage: COCO,
            code: 1,
            expect: &["annotation #0", "negative or zero size"],
        },
        Case {
            name: "coco_missing_image_file",
            setup: |p| {
                fixtures::coco(&p.path("coco"));
                std::fs::remove_file(p.path("coco/images/im3.png")).unwrap();
            },
            stage: COCO,
            code: 1,
            expect: &["coco/images/im3.png", "cannot read image"],
        },
        Case {
            name: "split_list_twice",
            setup: |p| {
                folder(p);
                p.write("src/train.txt", "cat/img0\n");
                p.write("src/val.txt", "dog/img0\ncat/img0\n");
            },
            stage: "format = \"image_folder\"\nsource = \"src\"\nsplit_lists = { train = \"train.txt\", val = \"val.txt\" }",
            code: 1,
            expect: &["val.txt:2", "listed in more than one split"],
        },
        Case {
            name: "source_missing",
            setup: |_| {},
            stage: IMAGE_FOLDER,
            code: 1,
            expect: &["input `source` of stage `convert` does not exist", "p.toml:"],
        },
        Case {
            name: "everything_filtered_by_size",
            setup: folder,
            stage: "format = \"image_folder\"\nsource = \"src\"\nmin_size = 1000",
            code: 1,
            expect: &["no usable samples", "18 filtered by size"],
        },
        // Mistakes in the stage's parameters are pipeline errors (exit 2) with a caret.
        Case { name: "param_unknown_format", setup: |_| {}, stage: "format = \"kiti\"\nsource = \"x\"", code: 2, expect: &["unknown dataset format `kiti`", "did you mean `kitti`?", "p.toml:5:10"] },
        Case { name: "param_fraction_out_of_range", setup: |_| {}, stage: "format = \"idx\"\nsource = \"x\"\nval_fraction = 1.5", code: 2, expect: &["`val_fraction` must be at least 0 and below 1", "p.toml:7:16"] },
        Case { name: "param_wrong_format_key", setup: |_| {}, stage: "format = \"idx\"\nsource = \"x\"\nmasks_dir = \"m\"", code: 2, expect: &["`masks_dir` does not apply to format `idx`", "segmentation"] },
        Case { name: "param_bad_on_bad_sample", setup: |_| {}, stage: "format = \"idx\"\nsource = \"x\"\non_bad_sample = \"ignore\"", code: 2, expect: &["`on_bad_sample` must be \"error\" or \"skip\""] },
        Case { name: "param_missing_source", setup: |_| {}, stage: "format = \"idx\"", code: 2, expect: &["missing the required key `source`"] },
    ]
}

#[test]
fn malformed_inputs_get_clear_errors_or_counted_skips() {
    let all = cases();
    assert!(all.len() >= 20, "the corpus must have at least 20 cases");
    let mut failures = Vec::new();
    for c in &all {
        let p = Project::new();
        (c.setup)(&p);
        p.write("p.toml", &format!("[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\n{}\n", c.stage));
        let out = p.run(&["run", "p.toml"]);
        let t = text(&out);
        let code = out.status.code().unwrap_or(-1);
        let mut why = Vec::new();
        if t.contains("panicked") {
            why.push("panicked".to_string());
        }
        if code != c.code {
            why.push(format!("exit code {code}, expected {}", c.code));
        }
        for e in c.expect {
            if !t.contains(e) {
                why.push(format!("missing `{e}`"));
            }
        }
        // Nothing half-written: a failed convert leaves no dataset and no temp folder.
        if c.code != 0 {
            let dir = p.path("outputs/t/convert");
            let left: Vec<String> = std::fs::read_dir(&dir).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
            if !left.is_empty() {
                why.push(format!("left behind in outputs/t/convert: {left:?}"));
            }
        }
        if !why.is_empty() {
            failures.push(format!("case {}: {}\n{t}", c.name, why.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
