//! The `augment` stage end to end: labels follow the image, results are deterministic,
//! bad specs get clear errors.

mod common;

use common::fixtures;
use common::{text, Project};
use taoflow::data::loader::Dataset;
use taoflow::data::shards::ShardReader;
use taoflow::data::{DatasetManifest, DetectionTarget};

fn manifest(p: &Project, stage: &str) -> DatasetManifest {
    serde_json::from_str(&p.read(&format!("outputs/t/{stage}/dataset/dataset.json"))).unwrap()
}

fn run_ok(p: &Project, extra: &[&str]) -> String {
    let mut args = vec!["run", "p.toml"];
    args.extend_from_slice(extra);
    let out = p.run(&args);
    let t = text(&out);
    assert!(out.status.success() && !t.contains("panicked"), "{t}");
    t
}

/// One solid white rectangle per image on black: after any warp, the box must enclose the
/// white pixels tightly.
fn rectangles(p: &Project, n: usize) {
    for i in 0..n {
        let (x1, y1, x2, y2) = (10 + i as u32 * 3, 8 + i as u32, 40 + i as u32 * 2, 30 + i as u32);
        let img = image::RgbImage::from_fn(80, 48, |x, y| if x >= x1 && x < x2 && y >= y1 && y < y2 { image::Rgb([255, 255, 255]) } else { image::Rgb([0, 0, 0]) });
        fixtures::save(&image::DynamicImage::ImageRgb8(img), &p.path(&format!("rect/image_2/{i:03}.png")), image::ImageFormat::Png);
        p.write(&format!("rect/label_2/{i:03}.txt"), &fixtures::kitti_line("Car", [x1 as f32, y1 as f32, x2 as f32, y2 as f32]));
    }
}

const RECT_PIPELINE: &str = r#"[pipeline]
name = "t"
seed = 11
[stages.convert]
kind = "convert"
format = "kitti"
source = "rect"
val_fraction = 0.0
[stages.augment]
kind = "augment"
dataset = "convert"
copies = 3
output_width = 120
output_height = 60
min_box_size = 1
[stages.augment.spatial]
translate_x = [-10, 10]
translate_y = [-5, 5]
flip_horizontal = 0.5
flip_vertical = 0.3
zoom = [0.8, 1.2]
[stages.augment.color]
brightness = [-10, 0]
"#;

#[test]
fn boxes_follow_the_pixels() {
    let p = Project::new();
    rectangles(&p, 6);
    p.write("p.toml", RECT_PIPELINE);
    let t = run_ok(&p, &[]);
    assert!(t.contains("6 -> 24 images"), "{t}");
    let m = manifest(&p, "augment");
    assert_eq!(m.splits["train"].count, 24);
    assert_eq!(m.image.width.max, 120);
    let root = p.path("outputs/t/augment/dataset");
    let mut checked = 0;
    for sh in &m.splits["train"].shards {
        ShardReader::open(&root.join(sh))
            .unwrap()
            .for_each(|s| {
                let img = image::load_from_memory(s.member("png").unwrap()).unwrap().to_rgb8();
                let t: DetectionTarget = serde_json::from_slice(s.member("json").unwrap()).unwrap();
                assert_eq!((t.width, t.height), img.dimensions());
                assert_eq!(t.boxes.len(), 1, "{}", s.key);
                // Tight box of bright pixels.
                let (mut x1, mut y1, mut x2, mut y2) = (u32::MAX, u32::MAX, 0, 0);
                for (x, y, px) in img.enumerate_pixels() {
                    if px.0[0] > 128 {
                        x1 = x1.min(x);
                        y1 = y1.min(y);
                        x2 = x2.max(x + 1);
                        y2 = y2.max(y + 1);
                    }
                }
                let b = t.boxes[0].bbox;
                for (got, want) in [(b[0], x1), (b[1], y1), (b[2], x2), (b[3], y2)] {
                    assert!((got - want as f32).abs() <= 1.5, "{}: box {b:?} vs pixels [{x1}, {y1}, {x2}, {y2}]", s.key);
                }
                checked += 1;
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(checked, 24);
}

#[test]
fn deterministic_and_only_augment_reruns_on_a_colour_change() {
    let digests: Vec<String> = (0..2)
        .map(|_| {
            let p = Project::new();
            rectangles(&p, 4);
            p.write("p.toml", RECT_PIPELINE);
            run_ok(&p, &[]);
            let l: serde_json::Value = serde_json::from_str(&p.read("p.lock")).unwrap();
            l["stages"]["augment"]["outs"]["dataset"]["digest"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(digests[0], digests[1], "same seed, same bytes");
    let p = Project::new();
    rectangles(&p, 4);
    p.write("p.toml", RECT_PIPELINE);
    run_ok(&p, &[]);
    let (code, m, _) = p.run_json(&["-S", "augment.color.brightness=[-30, -20]"]);
    assert_eq!(code, 0);
    assert_eq!(m["convert"]["status"], "cached");
    assert_eq!(m["augment"]["status"], "ran");
    assert!(m["augment"]["reasons"].to_string().contains("brightness"), "{}", m["augment"]["reasons"]);
}

#[test]
fn masks_and_classes_follow() {
    let p = Project::new();
    fixtures::segmentation(&p.path("seg"), 4);
    fixtures::image_folder(&p.path("cls"));
    p.write(
        "p.toml",
        r#"[pipeline]
name = "t"
[stages.seg]
kind = "convert"
format = "segmentation"
source = "seg"
classes = ["bg", "road", "car"]
val_fraction = 0.0
[stages.segaug]
kind = "augment"
dataset = "seg"
copies = 2
[stages.segaug.spatial]
rotation = [-20, 20]
flip_horizontal = 0.5
[stages.cls]
kind = "convert"
format = "image_folder"
source = "cls"
[stages.clsaug]
kind = "augment"
dataset = "cls"
copies = 1
keep_originals = false
output_width = 32
output_height = 32
[stages.clsaug.color]
hue = [-30, 30]
saturation = [0.5, 1.5]
[stages.greyaug]
kind = "augment"
dataset = "cls"
output_channels = 1
[stages.greyaug.spatial]
flip_horizontal = 1.0
"#,
    );
    run_ok(&p, &[]);
    let seg = Dataset::open(&p.path("outputs/t/segaug/dataset")).unwrap();
    assert_eq!(seg.manifest.splits["train"].count, 12);
    for sh in &seg.manifest.splits["train"].shards {
        ShardReader::open(&p.path("outputs/t/segaug/dataset").join(sh))
            .unwrap()
            .for_each(|s| {
                let m = image::load_from_memory(s.member("mask.png").unwrap()).unwrap().to_luma8();
                let img = image::load_from_memory(s.member("png").or(s.member("jpg")).unwrap()).unwrap();
                assert_eq!(m.dimensions(), (img.width(), img.height()));
                assert!(m.pixels().all(|v| v.0[0] <= 2 || v.0[0] == 255), "{}: mask indices stay indices", s.key);
                Ok(())
            })
            .unwrap();
    }
    let cls = Dataset::open(&p.path("outputs/t/clsaug/dataset")).unwrap();
    let orig = Dataset::open(&p.path("outputs/t/cls/dataset")).unwrap();
    assert_eq!(cls.manifest.splits["train"].count, orig.manifest.splits["train"].count, "keep_originals = false, one copy");
    assert_eq!(cls.manifest.splits["train"].per_class, orig.manifest.splits["train"].per_class, "classes pass through");
    assert_eq!(cls.manifest.splits["val"].count, orig.manifest.splits["val"].count, "val is copied unchanged");
    // output_channels = 1 writes grey images.
    let grey = Dataset::open(&p.path("outputs/t/greyaug/dataset")).unwrap();
    let sh = &grey.manifest.splits["train"].shards[0];
    ShardReader::open(&p.path("outputs/t/greyaug/dataset").join(sh))
        .unwrap()
        .for_each(|s| {
            let img = image::load_from_memory(s.member("png").unwrap()).unwrap();
            assert_eq!(img.color().channel_count(), 1, "{}", s.key);
            Ok(())
        })
        .unwrap();
    // The preview command draws the labels for a person to look at.
    let out = p.run(&["preview", "outputs/t/segaug/dataset", "prev", "--count", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_dir(p.path("prev")).unwrap().count(), 3);
}

#[test]
fn bad_specs_get_clear_errors() {
    let cases: &[(&str, &[&str])] = &[
        ("[stages.a.spatial]\nrotation = 270", &["`rotation` = 270 is out of range", "[-180, 180]", "p.toml:10:12"]),
        ("[stages.a.spatial]\nrotation = 4\nrotation_units = \"radians\"", &["`rotation` = 4 is out of range"]),
        ("[stages.a.spatial]\nshear_x = [-2, 0.1]", &["`shear_x` = -2 is out of range", "a shear ratio"]),
        ("[stages.a.spatial]\nzoom = [1.2, 0.8]", &["range [1.2, 0.8] is reversed", "write [0.8, 1.2]"]),
        ("[stages.a.spatial]\nflip_horizontal = [0, 1]", &["`flip_horizontal` is a probability, not a range"]),
        ("[stages.a.spatial]\nhflip_probability = 0.5", &["unknown key `hflip_probability`", "TAO spec key", "flip_horizontal"]),
        ("rotate_rad_max = 0.1", &["`rotate_rad_max` is a TAO spec key", "rotation_units"]),
        ("[stages.a.color]\nsaturaton = 1.1", &["unknown key `saturaton`", "did you mean `saturation`?"]),
        ("[stages.a.color]\ncolor_shift_stddev = 0.1", &["`color_shift_stddev` is a TAO spec key", "not supported"]),
        ("output_width = 0\noutput_height = 10", &["`output_width` must be between 1 and 16384, not 0"]),
        ("output_width = 64", &["`output_width` and `output_height` go together"]),
        ("[stages.a.blur]\nsize = 4", &["blur `size` must be an odd integer"]),
        ("copies = 0\nkeep_originals = false", &["the output would be empty"]),
        ("[stages.a.color]\nhue = \"lots\"", &["`hue` must be a number or [min, max], found a string"]),
    ];
    let p = Project::new();
    for (extra, expect) in cases {
        // Top-level keys must come before the sub-tables.
        let body = if extra.starts_with('[') { format!("dataset = \"x\"\n{extra}") } else { format!("{extra}\ndataset = \"x\"") };
        p.write("p.toml", &format!("[pipeline]\nname = \"t\"\n[stages.x]\nkind = \"exec\"\ncmd = \"true\"\n[stages.a]\nkind = \"augment\"\n{body}\n"));
        let out = p.run(&["dag", "p.toml"]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{extra}: {t}");
        assert!(!t.contains("panicked"), "{t}");
        for e in *expect {
            assert!(t.contains(e), "{extra}: missing `{e}` in\n{t}");
        }
    }
    // A split that does not exist fails the stage with a clear message.
    let q = Project::new();
    fixtures::image_folder(&q.path("src"));
    q.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.c]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"src\"\n[stages.a]\nkind = \"augment\"\ndataset = \"c\"\nsplits = [\"training\"]\n");
    let out = q.run(&["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no split `training` to augment (it has: train, val)"), "{}", text(&out));
}
