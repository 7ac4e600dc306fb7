//! Ground truth and detections from files, for `taoflow eval-detections` and for comparing
//! with detectors run elsewhere (DeepStream, another framework).
//!
//! - **COCO JSON**: ground truth as a COCO dataset (`images`, `annotations`, `categories`);
//!   detections as a COCO results list (`image_id`, `category_id`, `bbox` = `[x, y, w, h]`,
//!   `score`), read as pycocotools' `loadRes` reads it: a box partly outside its image
//!   counts, a category the ground truth lacks is never evaluated (a warning here), and a
//!   detection whose image id is not in the ground truth is an error.
//! - **KITTI label folders**: one `<image>.txt` per image, 15 fields per object for ground
//!   truth (`type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y`), a 16th, the
//!   score, for detections. Class names compare case-insensitively (TAO's converter
//!   lower-cases them); `DontCare` lines are skipped. An empty or missing detection file
//!   means no detections for that image.
//!
//! COCO ground truth also accepts KITTI detections: images match by the stem of
//! `file_name`, classes by name.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use super::{DetBox, Detections, GtBox};

/// What the ground truth's images and classes are called, for matching detections.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    pub data: Detections,
    pub format: Format,
    /// COCO category id → class index (COCO ground truth only).
    cat_index: HashMap<i64, usize>,
    /// COCO image id → image index (COCO ground truth only).
    img_index: HashMap<i64, usize>,
    /// Image stem → image index.
    stem_index: HashMap<String, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    CocoJson,
    KittiFolder,
}

fn format_of(path: &Path, what: &str) -> Result<Format, String> {
    if path.is_dir() {
        Ok(Format::KittiFolder)
    } else if path.is_file() {
        if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            Ok(Format::CocoJson)
        } else {
            Err(format!("{what} `{}` is neither a COCO .json file nor a folder of KITTI label files", path.display()))
        }
    } else {
        Err(format!("{what} `{}` does not exist", path.display()))
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}:{}:{}: not valid JSON: {e}", path.display(), e.line(), e.column()))
}

fn int_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.is_finite()).map(|f| f as i64))
}

/// `[x, y, w, h]`: four finite numbers, width and height not negative.
fn xywh(v: Option<&Value>, at: &str) -> Result<[f64; 4], String> {
    let arr = v.and_then(|v| v.as_array()).filter(|a| a.len() == 4).ok_or_else(|| format!("{at}: `bbox` must be 4 numbers [x, y, width, height]"))?;
    let mut b = [0f64; 4];
    for (i, x) in arr.iter().enumerate() {
        b[i] = x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| format!("{at}: `bbox` must be 4 numbers [x, y, width, height], found {x}"))?;
    }
    if b[2] < 0.0 || b[3] < 0.0 {
        return Err(format!("{at}: `bbox` [{}, {}, {}, {}] has a negative width or height (COCO boxes are [x, y, width, height])", b[0], b[1], b[2], b[3]));
    }
    Ok(b)
}

fn stem(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    match base.rfind('.') {
        Some(i) if i > 0 => base[..i].to_string(),
        _ => base.to_string(),
    }
}

/// Read ground truth: a COCO dataset JSON, or a folder of KITTI label files.
/// `classes` (KITTI only) fixes the classes and their order; by default every class found,
/// sorted by name.
pub fn load_ground_truth(path: &Path, classes: Option<&[String]>) -> Result<GroundTruth, String> {
    match format_of(path, "ground truth")? {
        Format::CocoJson => {
            if classes.is_some() {
                return Err("`--classes` applies to KITTI ground truth; a COCO file names its categories".into());
            }
            coco_gt(path)
        }
        Format::KittiFolder => kitti_gt(path, classes),
    }
}

fn coco_gt(path: &Path) -> Result<GroundTruth, String> {
    let p = path.display();
    let v = read_json(path)?;
    let obj = v.as_object().ok_or_else(|| format!("{p}: a COCO ground-truth file is an object with `images`, `annotations` and `categories`; this one is not an object (a list is a detections file: give the ground truth first)"))?;
    let list = |k: &str| obj.get(k).and_then(|x| x.as_array()).ok_or_else(|| format!("{p}: no `{k}` list (a COCO ground-truth file has `images`, `annotations` and `categories`)"));
    let (images, anns, cats) = (list("images")?, list("annotations")?, list("categories")?);
    // id -> name (the id itself where the entry has no name), sorted by id as pycocotools sorts
    let ids = |list: &[Value], section: &str, name_key: &str, what: &str| -> Result<BTreeMap<i64, String>, String> {
        let mut out = BTreeMap::new();
        for (i, e) in list.iter().enumerate() {
            let id = e.get("id").and_then(int_of).ok_or_else(|| format!("{p}: {section}[{i}] has no integer `id`"))?;
            let name = e.get(name_key).and_then(|f| f.as_str()).map(str::to_string).unwrap_or_else(|| id.to_string());
            if out.insert(id, name).is_some() {
                return Err(format!("{p}: {section}[{i}]: {what} id {id} appears twice"));
            }
        }
        Ok(out)
    };
    let img_ids = ids(images, "images", "file_name", "image")?;
    let cat_ids = ids(cats, "categories", "name", "category")?;
    let img_index: HashMap<i64, usize> = img_ids.keys().enumerate().map(|(i, id)| (*id, i)).collect();
    let cat_index: HashMap<i64, usize> = cat_ids.keys().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut gts = Vec::with_capacity(anns.len());
    for (i, a) in anns.iter().enumerate() {
        let at = format!("{p}: annotations[{i}]");
        let img = a.get("image_id").and_then(int_of).ok_or_else(|| format!("{at} has no integer `image_id`"))?;
        let cat = a.get("category_id").and_then(int_of).ok_or_else(|| format!("{at} has no integer `category_id`"))?;
        let image = *img_index.get(&img).ok_or_else(|| format!("{at}: image id {img} is not in `images`"))?;
        let class = *cat_index.get(&cat).ok_or_else(|| format!("{at}: category id {cat} is not in `categories`"))?;
        let bbox = xywh(a.get("bbox"), &at)?;
        let area = match a.get("area") {
            None | Some(Value::Null) => bbox[2] * bbox[3],
            Some(x) => x.as_f64().filter(|f| f.is_finite() && *f >= 0.0).ok_or_else(|| format!("{at}: `area` must be a non-negative number"))?,
        };
        let iscrowd = match a.get("iscrowd") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(x) => int_of(x).ok_or_else(|| format!("{at}: `iscrowd` must be 0 or 1"))? != 0,
        };
        gts.push(GtBox { image, class, bbox, area, iscrowd });
    }
    let stem_index = img_ids.values().enumerate().map(|(i, n)| (stem(n), i)).collect();
    Ok(GroundTruth {
        data: Detections { images: img_ids.into_values().collect(), classes: cat_ids.into_values().collect(), gts, dets: Vec::new() },
        format: Format::CocoJson,
        cat_index,
        img_index,
        stem_index,
    })
}

/// One KITTI line: class (lower case), `[x1, y1, x2, y2]`, and the score where `scored`.
fn kitti_line(line: &str, at: &str, scored: bool) -> Result<Option<(String, [f64; 4], f64)>, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.is_empty() {
        return Ok(None);
    }
    let want = if scored { "16 (the 15 of KITTI's label format and the score)" } else { "15 (or 16 with a score)" };
    if f.len() != 15 && f.len() != 16 || (scored && f.len() != 16) {
        return Err(format!("{at}: a KITTI line has {want} fields, this one has {}", f.len()));
    }
    let class = f[0].to_lowercase();
    if class == "dontcare" {
        return Ok(None);
    }
    let num = |i: usize| f[i].parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| format!("{at}: field {} (`{}`) is not a number", i + 1, f[i]));
    let b = [num(4)?, num(5)?, num(6)?, num(7)?];
    if b[2] < b[0] || b[3] < b[1] {
        return Err(format!("{at}: box [{}, {}, {}, {}] has x2 < x1 or y2 < y1 (KITTI boxes are x1 y1 x2 y2, fields 5-8)", b[0], b[1], b[2], b[3]));
    }
    let score = if f.len() == 16 { num(15)? } else { 0.0 };
    Ok(Some((class, b, score)))
}

/// `<stem>.txt` files of a folder, sorted by name.
fn label_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
        let path = e.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "txt") {
            v.push((stem(&e.file_name().to_string_lossy()), path));
        }
    }
    v.sort();
    Ok(v)
}

fn kitti_gt(dir: &Path, classes: Option<&[String]>) -> Result<GroundTruth, String> {
    let files = label_files(dir)?;
    if files.is_empty() {
        return Err(format!("`{}` holds no .txt label files (KITTI ground truth is one `<image>.txt` per image, 15 fields per object)", dir.display()));
    }
    let mut rows = Vec::new();
    for (img, (_, path)) in files.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            if let Some(r) = kitti_line(line, &format!("{}:{}", path.display(), i + 1), false)? {
                rows.push((img, r, format!("{}:{}", path.display(), i + 1)));
            }
        }
    }
    let names: Vec<String> = match classes {
        Some(c) => c.iter().map(|s| s.to_lowercase()).collect(),
        None => {
            let mut s: Vec<String> = rows.iter().map(|r| r.1.0.clone()).collect();
            s.sort();
            s.dedup();
            s
        }
    };
    let index: HashMap<String, usize> = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
    let mut gts = Vec::new();
    for (image, (class, b, _), _) in rows {
        // with --classes, other classes are not evaluated
        if let Some(&k) = index.get(&class) {
            let bbox = [b[0], b[1], b[2] - b[0], b[3] - b[1]];
            gts.push(GtBox { image, class: k, bbox, area: bbox[2] * bbox[3], iscrowd: false });
        }
    }
    let images: Vec<String> = files.into_iter().map(|(s, _)| s).collect();
    let stem_index = images.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
    Ok(GroundTruth { data: Detections { images, classes: names, gts, dets: Vec::new() }, format: Format::KittiFolder, cat_index: HashMap::new(), img_index: HashMap::new(), stem_index })
}

/// Detections not evaluated, with the reason (shown as warnings).
#[derive(Debug, Default, Clone)]
pub struct Skipped {
    pub unknown_classes: BTreeMap<String, usize>,
}

/// Read detections against `gt` and store them in `gt.data.dets`.
pub fn load_detections(gt: &mut GroundTruth, path: &Path) -> Result<Skipped, String> {
    let mut skipped = Skipped::default();
    let dets = match format_of(path, "detections")? {
        Format::CocoJson => {
            if gt.format != Format::CocoJson {
                return Err(format!(
                    "`{}` holds COCO detections, whose image and category ids only a COCO ground-truth file defines; the ground truth is a KITTI folder\n  = hint: write the detections as KITTI files (score as the 16th field), or give COCO ground truth",
                    path.display()
                ));
            }
            coco_dets(gt, path, &mut skipped)?
        }
        Format::KittiFolder => kitti_dets(gt, path, &mut skipped)?,
    };
    gt.data.dets = dets;
    Ok(skipped)
}

fn coco_dets(gt: &GroundTruth, path: &Path, skipped: &mut Skipped) -> Result<Vec<DetBox>, String> {
    let p = path.display();
    let v = read_json(path)?;
    let list = match &v {
        Value::Array(a) => a,
        Value::Object(o) if o.contains_key("images") => return Err(format!("{p}: this is a COCO dataset (it has `images`), not a detections list\n  = hint: give the ground truth first, then the detections: `taoflow eval-detections GT DETS`")),
        _ => return Err(format!("{p}: COCO detections are a JSON list of {{\"image_id\", \"category_id\", \"bbox\": [x, y, w, h], \"score\"}}")),
    };
    let mut out = Vec::with_capacity(list.len());
    let mut unknown_images: Vec<i64> = Vec::new();
    for (i, d) in list.iter().enumerate() {
        let at = format!("{p}: [{i}]");
        let img = d.get("image_id").and_then(int_of).ok_or_else(|| format!("{at} has no integer `image_id`"))?;
        let cat = d.get("category_id").and_then(int_of).ok_or_else(|| format!("{at} has no integer `category_id`"))?;
        let bbox = xywh(d.get("bbox"), &at)?;
        let score = d.get("score").and_then(|s| s.as_f64()).filter(|s| s.is_finite()).ok_or_else(|| format!("{at} has no numeric `score`"))?;
        let Some(&image) = gt.img_index.get(&img) else {
            unknown_images.push(img);
            continue;
        };
        match gt.cat_index.get(&cat) {
            Some(&class) => out.push(DetBox { image, class, bbox, score }),
            None => *skipped.unknown_classes.entry(format!("category id {cat}")).or_default() += 1,
        }
    }
    if !unknown_images.is_empty() {
        unknown_images.sort();
        unknown_images.dedup();
        let shown: Vec<String> = unknown_images.iter().take(5).map(|i| i.to_string()).collect();
        return Err(format!(
            "{p}: {} image id(s) of the detections are not in the ground truth ({}{})\n  = hint: the detections must come from the ground truth's images, with the same `id`s",
            unknown_images.len(),
            shown.join(", "),
            if unknown_images.len() > 5 { ", …" } else { "" }
        ));
    }
    Ok(out)
}

fn kitti_dets(gt: &GroundTruth, dir: &Path, skipped: &mut Skipped) -> Result<Vec<DetBox>, String> {
    let files = label_files(dir)?;
    let class_index: HashMap<String, usize> = gt.data.classes.iter().enumerate().map(|(i, n)| (n.to_lowercase(), i)).collect();
    let mut out = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for (s, path) in &files {
        let Some(&image) = gt.stem_index.get(s) else {
            unknown.push(path.display().to_string());
            continue;
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            if let Some((class, b, score)) = kitti_line(line, &format!("{}:{}", path.display(), i + 1), true)? {
                match class_index.get(&class) {
                    Some(&k) => out.push(DetBox { image, class: k, bbox: [b[0], b[1], b[2] - b[0], b[3] - b[1]], score }),
                    None => *skipped.unknown_classes.entry(class).or_default() += 1,
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "{} detection file(s) name no image of the ground truth (first: `{}`)\n  = hint: a detection file is named after its image, like the ground truth's (`000123.txt`)",
            unknown.len(),
            unknown[0]
        ));
    }
    if files.is_empty() && !gt.data.images.is_empty() {
        return Err(format!("`{}` holds no .txt detection files (KITTI detections are one `<image>.txt` per image, the score as the 16th field)", dir.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kitti_lines_and_their_errors() {
        let l = "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59 0.93";
        let (c, b, s) = kitti_line(l, "d.txt:1", true).unwrap().unwrap();
        assert_eq!((c.as_str(), b, s), ("car", [587.01, 173.33, 614.12, 200.12], 0.93));
        let e = kitti_line(&l[..l.len() - 5], "d.txt:3", true).unwrap_err();
        assert!(e.starts_with("d.txt:3:") && e.contains("16"), "{e}");
        assert!(kitti_line("DontCare -1 -1 -10 1 2 3 4 -1 -1 -1 -1000 -1000 -1000 -10", "x", false).unwrap().is_none());
        let e = kitti_line("Car 0 0 0 10 10 5 20 0 0 0 0 0 0 0", "g.txt:2", false).unwrap_err();
        assert!(e.contains("x2 < x1"), "{e}");
        let e = kitti_line("Car 0 0 0 10 x 5 20 0 0 0 0 0 0 0", "g.txt:2", false).unwrap_err();
        assert!(e.contains("field 6"), "{e}");
    }

    #[test]
    fn stems() {
        assert_eq!(stem("images/000123.png"), "000123");
        assert_eq!(stem("a.b.jpg"), "a.b");
        assert_eq!(stem("noext"), "noext");
    }
}
