//! The `voc` and `csv` detection formats and tiling in `convert`.

mod common;

use std::collections::BTreeMap;

use common::{Project, fixtures, text};
use taoflow::data::shards::ShardReader;
use taoflow::data::{DatasetManifest, DetectionTarget};

fn manifest(p: &Project) -> DatasetManifest {
    serde_json::from_str(&p.read("outputs/t/convert/dataset/dataset.json")).unwrap()
}

/// key -> (image width, height, target) of every sample of every split.
fn samples(p: &Project) -> BTreeMap<String, (u32, u32, DetectionTarget)> {
    let root = p.path("outputs/t/convert/dataset");
    let mut out = BTreeMap::new();
    for s in manifest(p).splits.values() {
        for sh in &s.shards {
            ShardReader::open(&root.join(sh))
                .unwrap()
                .for_each(|x| {
                    let img = image::load_from_memory(x.member("png").or(x.member("jpg")).unwrap()).unwrap();
                    let t: DetectionTarget = serde_json::from_slice(x.member("json").unwrap()).unwrap();
                    out.insert(x.key.clone(), (img.width(), img.height(), t));
                    Ok(())
                })
                .unwrap();
        }
    }
    out
}

/// The decoded image of sample `key` (any split); panics when there is none.
fn sample_image(p: &Project, key: &str) -> image::RgbImage {
    let root = p.path("outputs/t/convert/dataset");
    let mut found = None;
    for s in manifest(p).splits.values() {
        for sh in &s.shards {
            ShardReader::open(&root.join(sh))
                .unwrap()
                .for_each(|x| {
                    if x.key == key {
                        found = Some(image::load_from_memory(x.member("png").unwrap()).unwrap().to_rgb8());
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
    found.unwrap_or_else(|| panic!("no sample `{key}`"))
}

fn run(p: &Project, toml: &str) -> (bool, String) {
    p.write("p.toml", &format!("[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\n{toml}"));
    let o = p.run(&["run", "p.toml"]);
    let t = text(&o);
    assert!(!t.contains("panicked"), "{t}");
    (o.status.success(), t)
}

fn voc_xml(file: &str, objects: &[(&str, [i32; 4])]) -> String {
    let mut s = format!("<annotation>\n  <folder>x</folder>\n  <filename>{file}</filename>\n  <size><width>64</width><height>48</height><depth>3</depth></size>\n");
    for (n, b) in objects {
        s.push_str(&format!(
            "  <object>\n    <name>{n}</name>\n    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{}</xmin>\n      <ymin>{}</ymin>\n      <xmax>{}</xmax>\n      <ymax>{}</ymax>\n    </bndbox>\n  </object>\n",
            b[0], b[1], b[2], b[3]
        ));
    }
    s.push_str("</annotation>\n");
    s
}

#[test]
fn voc_both_layouts_and_its_errors() {
    let p = Project::new();
    // DeepForest's layout: the XML beside its image
    fixtures::save(&fixtures::rgb(64, 48, 1), &p.path("flat/a.png"), image::ImageFormat::Png);
    fixtures::save(&fixtures::rgb(64, 48, 2), &p.path("flat/b.jpg"), image::ImageFormat::Jpeg);
    p.write("flat/a.xml", &voc_xml("a.png", &[("Tree", [1, 2, 30, 20]), ("tree", [40, 5, 50, 35])]));
    p.write("flat/b.xml", &voc_xml("b.jpg", &[("Dead", [0, 0, 64, 48])]));
    let (ok, t) = run(&p, "format = \"voc\"\nsource = \"flat\"\nval_fraction = 0.0\nclass_map = { tree = \"tree\", dead = \"tree\" }\n");
    assert!(ok, "{t}");
    let m = manifest(&p);
    assert_eq!((m.task.as_str(), m.source_format.as_str()), ("detection", "voc"));
    assert_eq!(m.classes, ["tree"]);
    assert_eq!(m.splits["train"].boxes_per_class["tree"], 3);
    let s = samples(&p);
    assert_eq!(s["a"].2.boxes[0].bbox, [1.0, 2.0, 30.0, 20.0]);
    assert_eq!(s["b"].2.boxes.len(), 1);

    // Pascal's own layout
    fixtures::save(&fixtures::rgb(64, 48, 3), &p.path("voc/JPEGImages/c.png"), image::ImageFormat::Png);
    p.write("voc/Annotations/c.xml", &voc_xml("c.png", &[("car", [3, 4, 20, 30])]));
    let (ok, t) = run(&p, "format = \"voc\"\nsource = \"voc\"\nval_fraction = 0.0\n");
    assert!(ok, "{t}");
    assert_eq!(samples(&p)["c"].2.boxes[0].class, "car");

    // errors name the file and line
    fixtures::save(&fixtures::rgb(64, 48, 4), &p.path("voc/JPEGImages/d.png"), image::ImageFormat::Png);
    p.write("voc/Annotations/d.xml", "<annotation>\n  <filename>d.png</filename>\n  <object>\n    <name>car</name>\n    <bndbox><xmin>3</xmin><ymin>x</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>\n  </object>\n</annotation>\n");
    let (ok, t) = run(&p, "format = \"voc\"\nsource = \"voc\"\n");
    assert!(!ok);
    assert!(t.contains("d.xml:5") && t.contains("<ymin> `x` is not a number"), "{t}");
    p.write("voc/Annotations/d.xml", "<annotation>\n  <filename>missing.png</filename>\n</annotation>\n");
    let (ok, t) = run(&p, "format = \"voc\"\nsource = \"voc\"\n");
    assert!(!ok);
    assert!(t.contains("d.xml:2") && t.contains("missing.png") && t.contains("does not exist"), "{t}");
    p.write("voc/Annotations/d.xml", "<annotation>\n  <filename>d.png</filename>\n  <object>\n");
    let (ok, t) = run(&p, "format = \"voc\"\nsource = \"voc\"\n");
    assert!(!ok);
    assert!(t.contains("d.xml:") && t.contains("not valid XML"), "{t}");
    // a box outside its image is the same error as for every format
    p.write("voc/Annotations/d.xml", &voc_xml("d.png", &[("car", [3, 4, 200, 30])]));
    let (ok, t) = run(&p, "format = \"voc\"\nsource = \"voc\"\n");
    assert!(!ok);
    assert!(t.contains("d.xml:") && t.contains("outside the 64x48 image"), "{t}");
    // on_bad_sample = "skip" converts the rest
    let (ok, t) = run(&p, "format = \"voc\"\nsource = \"voc\"\non_bad_sample = \"skip\"\nval_fraction = 0.0\n");
    assert!(ok, "{t}");
    assert_eq!(manifest(&p).splits["train"].count, 1);
}

#[test]
fn csv_deepforest_layout_and_its_errors() {
    let p = Project::new();
    fixtures::save(&fixtures::rgb(64, 48, 1), &p.path("d/img/a.png"), image::ImageFormat::Png);
    fixtures::save(&fixtures::rgb(64, 48, 2), &p.path("d/img/b c.png"), image::ImageFormat::Png);
    fixtures::save(&fixtures::rgb(64, 48, 3), &p.path("d/img/empty.png"), image::ImageFormat::Png);
    p.write(
        "d/boxes.csv",
        "image_path,xmin,ymin,xmax,ymax,label,score\na.png,1,2,30,20,Tree,1\na.png,40,5,50,35,Tree,1\n\"b c.png\",0,0,64,48,Dead,1\nempty.png,0,0,0,0,Tree,1\n",
    );
    let (ok, t) = run(&p, "format = \"csv\"\nsource = \"d\"\nannotations = \"boxes.csv\"\nimages_dir = \"img\"\nval_fraction = 0.0\n");
    assert!(ok, "{t}");
    let m = manifest(&p);
    assert_eq!(m.classes, ["Dead", "Tree"]);
    assert_eq!(m.splits["train"].count, 3, "the all-zero row lists an image without boxes");
    let s = samples(&p);
    assert_eq!(s["a"].2.boxes.len(), 2);
    assert!(s["empty"].2.boxes.is_empty());
    assert_eq!(s["b_c"].2.boxes[0].bbox, [0.0, 0.0, 64.0, 48.0]);

    p.write("d/boxes.csv", "image_path,xmin,ymin,xmax,label\na.png,1,2,30,Tree\n");
    let (ok, t) = run(&p, "format = \"csv\"\nsource = \"d\"\nannotations = \"boxes.csv\"\nimages_dir = \"img\"\n");
    assert!(!ok);
    assert!(t.contains("boxes.csv:1") && t.contains("`ymax`"), "{t}");
    p.write("d/boxes.csv", "image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,30,20,Tree\na.png,1,two,30,20,Tree\n");
    let (ok, t) = run(&p, "format = \"csv\"\nsource = \"d\"\nannotations = \"boxes.csv\"\nimages_dir = \"img\"\n");
    assert!(!ok);
    assert!(t.contains("boxes.csv:3") && t.contains("`ymin` = `two`"), "{t}");
    p.write("d/boxes.csv", "image_path,xmin,ymin,xmax,ymax,label\nnope.png,1,2,30,20,Tree\na.png,1,2,30,20,Tree\n");
    let (ok, t) = run(&p, "format = \"csv\"\nsource = \"d\"\nannotations = \"boxes.csv\"\nimages_dir = \"img\"\n");
    assert!(!ok);
    assert!(t.contains("boxes.csv:2") && t.contains("nope.png") && t.contains("does not exist"), "{t}");
    let (ok, t) = run(&p, "format = \"csv\"\nsource = \"d\"\n");
    assert!(!ok);
    assert!(t.contains("annotations.csv") && t.contains("annotations"), "{t}");
}

#[test]
fn tiling_cuts_images_and_boxes() {
    let p = Project::new();
    // a 100×60 image, tiles of 48×32 without overlap: x at 0, 48, 52; y at 0, 28
    fixtures::save(&fixtures::rgb(100, 60, 1), &p.path("d/big.png"), image::ImageFormat::Png);
    p.write(
        "d/boxes.csv",
        "image_path,xmin,ymin,xmax,ymax,label\n\
         big.png,2,2,12,12,tree\n\
         big.png,40,4,60,14,tree\n\
         big.png,96,40,100,60,tree\n",
    );
    let base = "format = \"csv\"\nsource = \"d\"\nannotations = \"boxes.csv\"\nval_fraction = 0.0\n";
    let (ok, t) = run(&p, &format!("{base}tile = {{ size = [48, 32], min_visible = 0.5 }}\n"));
    assert!(ok, "{t}");
    let s = samples(&p);
    let keys: Vec<&str> = s.keys().map(String::as_str).collect();
    assert_eq!(keys, ["big_x0_y0", "big_x0_y28", "big_x48_y0", "big_x48_y28", "big_x52_y0", "big_x52_y28"]);
    for (w, h, t) in s.values() {
        assert_eq!((*w, *h, t.width, t.height), (48, 32, 48, 32));
    }
    // box 1 lies in the first tile; box 2 (x 40..60) is 8/20 in tile x0 (dropped at 0.5),
    // 12/20 in x48 (kept, cut to 0..12) and 8/20 in x52 (dropped)
    let b = |k: &str| s[k].2.boxes.iter().map(|b| b.bbox).collect::<Vec<_>>();
    assert_eq!(b("big_x0_y0"), vec![[2.0, 2.0, 12.0, 12.0]]);
    assert_eq!(b("big_x48_y0"), vec![[0.0, 4.0, 12.0, 14.0]]);
    assert!(b("big_x52_y0").is_empty());
    // box 3 (96..100 × 40..60) is whole in the last tile (52, 28) and touches x48's edge only
    assert_eq!(b("big_x52_y28"), vec![[44.0, 12.0, 48.0, 32.0]]);
    assert!(b("big_x48_y28").is_empty());
    // the tile's pixels are the image's
    let img = image::open(p.path("d/big.png")).unwrap().to_rgb8();
    let t = sample_image(&p, "big_x52_y28");
    assert_eq!(t.get_pixel(0, 0), img.get_pixel(52, 28));
    assert_eq!(t.get_pixel(47, 31), img.get_pixel(99, 59));
    assert_eq!(manifest(&p).splits["train"].boxes_per_class["tree"], 3);
    // a lower threshold keeps box 2 in all three tiles; keep_empty = false drops box-less tiles
    let (ok, t) = run(&p, &format!("{base}tile = {{ size = [48, 32], min_visible = 0.3, keep_empty = false }}\n"));
    assert!(ok, "{t}");
    let s = samples(&p);
    assert_eq!(s.keys().map(String::as_str).collect::<Vec<_>>(), ["big_x0_y0", "big_x48_y0", "big_x52_y0", "big_x52_y28"]);
    // edge = "pad": the stride is kept (x 0, 48, 96; y 0, 32), every tile 48×32, what lies
    // past the image black, boxes cut to the image
    let (ok, t) = run(&p, &format!("{base}tile = {{ size = [48, 32], min_visible = 0.5, edge = \"pad\" }}\n"));
    assert!(ok, "{t}");
    let s = samples(&p);
    assert_eq!(s.keys().map(String::as_str).collect::<Vec<_>>(), ["big_x0_y0", "big_x0_y32", "big_x48_y0", "big_x48_y32", "big_x96_y0", "big_x96_y32"]);
    for (w, h, t) in s.values() {
        assert_eq!((*w, *h, t.width, t.height), (48, 32, 48, 32));
    }
    let b = |k: &str| s[k].2.boxes.iter().map(|b| b.bbox).collect::<Vec<_>>();
    assert_eq!(b("big_x96_y32"), vec![[0.0, 8.0, 4.0, 28.0]]);
    assert_eq!(b("big_x48_y0"), vec![[0.0, 4.0, 12.0, 14.0]]);
    let t = sample_image(&p, "big_x96_y32");
    assert_eq!((t.width(), t.height()), (48, 32));
    assert_eq!(t.get_pixel(0, 0), img.get_pixel(96, 32));
    assert_eq!(t.get_pixel(3, 27), img.get_pixel(99, 59));
    assert_eq!(t.get_pixel(4, 0), &image::Rgb([0, 0, 0]));
    assert_eq!(t.get_pixel(0, 28), &image::Rgb([0, 0, 0]));
    // edge = "drop": only whole tiles (x 0, 48; y 0)
    let (ok, t) = run(&p, &format!("{base}tile = {{ size = [48, 32], edge = \"drop\" }}\n"));
    assert!(ok, "{t}");
    assert_eq!(samples(&p).keys().map(String::as_str).collect::<Vec<_>>(), ["big_x0_y0", "big_x48_y0"]);
    // bad settings are pipeline errors with a caret
    for (bad, want) in [
        ("tile = { size = 8 }", "whole number of pixels"),
        ("tile = { size = 64, overlap = 64 }", "smaller than the tile"),
        ("tile = { size = 64, min_visible = 0 }", "(0, 1]"),
        ("tile = { overlap = 4 }", "missing the required key `size`"),
        ("tile = { size = 64, keep = true }", "did you mean `keep_empty`"),
        ("tile = { size = 64, edge = \"wrap\" }", "choose one of: shift, pad, drop"),
    ] {
        let (ok, t) = run(&p, &format!("{base}{bad}\n"));
        assert!(!ok, "{bad}");
        assert!(t.contains(want) && t.contains("p.toml:"), "{bad}: {t}");
    }
    p.write("p.toml", "[pipeline]\nname = \"t\"\n[stages.convert]\nkind = \"convert\"\nformat = \"image_folder\"\nsource = \"d\"\ntile = { size = 64 }\n");
    let o = p.run(&["run", "p.toml"]);
    assert!(text(&o).contains("`tile` does not apply to format `image_folder`"), "{}", text(&o));
}
