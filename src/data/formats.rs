//! Source formats: each turns a folder into a list of [`Item`]s (where the image is, what
//! its label is) without decoding images; `convert` decodes and validates them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{BoxLabel, DataError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    ImageFolder,
    Idx,
    Kitti,
    Segmentation,
    Coco,
    Voc,
    Csv,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["image_folder", "idx", "kitti", "segmentation", "coco", "voc", "csv"];

    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "image_folder" => Format::ImageFolder,
            "idx" => Format::Idx,
            "kitti" => Format::Kitti,
            "segmentation" => Format::Segmentation,
            "coco" => Format::Coco,
            "voc" => Format::Voc,
            "csv" => Format::Csv,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Format::ImageFolder => "image_folder",
            Format::Idx => "idx",
            Format::Kitti => "kitti",
            Format::Segmentation => "segmentation",
            Format::Coco => "coco",
            Format::Voc => "voc",
            Format::Csv => "csv",
        }
    }

    pub fn task(&self) -> &'static str {
        match self {
            Format::ImageFolder | Format::Idx => "classification",
            Format::Kitti | Format::Coco | Format::Voc | Format::Csv => "detection",
            Format::Segmentation => "segmentation",
        }
    }
}

/// Where an image's bytes come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    File(PathBuf),
    /// Raw 8-bit grey pixels inside an IDX file.
    Raw { data: Arc<Vec<u8>>, offset: usize, width: u32, height: u32 },
}

/// A label as read from the source, before validation against the image.
#[derive(Debug, Clone)]
pub enum ItemLabel {
    /// A source class name (mapped later).
    Class(String),
    /// Boxes with source class names; each with its origin (`file:line`) for messages.
    Boxes(Vec<(String, [f32; 4], String)>),
    Mask(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Item {
    pub key: String,
    pub image: ImageSource,
    pub label: ItemLabel,
    /// For messages: the file (and line) the sample comes from.
    pub origin: String,
    /// A split the source itself assigns (IDX train/t10k files), if any.
    pub split: Option<String>,
}

/// A sample that cannot be used, with what is wrong.
#[derive(Debug, Clone)]
pub struct Bad {
    pub origin: String,
    pub message: String,
}

/// Everything a format found.
#[derive(Debug, Default)]
pub struct Collected {
    pub items: Vec<Item>,
    pub bad: Vec<Bad>,
    pub warnings: Vec<String>,
    /// Class names the source itself defines, in index order (IDX labels, COCO
    /// categories, segmentation indices), if any.
    pub source_classes: Option<Vec<String>>,
}

/// Format-specific settings.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    pub idx_images: Option<String>,
    pub idx_labels: Option<String>,
    pub idx_val_images: Option<String>,
    pub idx_val_labels: Option<String>,
    pub coco_annotations: Option<String>,
    pub images_dir: Option<String>,
    pub labels_dir: Option<String>,
    pub masks_dir: Option<String>,
}

const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

fn is_image_name(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A WebDataset key from a relative path: no extension, no dots, `/`-separated.
pub fn key_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().to_string()).collect();
    if let Some(last) = parts.last_mut()
        && let Some(i) = last.rfind('.') {
            last.truncate(i);
        }
    parts
        .iter()
        .map(|p| p.chars().map(|c| if c == '.' || c.is_whitespace() { '_' } else { c }).collect::<String>())
        .collect::<Vec<_>>()
        .join("/")
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    fn rec(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
        let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(format!("cannot read folder `{}`", dir.display()), e))?;
        for e in rd {
            let e = e.map_err(|e| DataError::io(format!("cannot read folder `{}`", dir.display()), e))?;
            let p = e.path();
            if p.is_dir() {
                rec(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    rec(dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn need_dir(dir: &Path, what: &str, hint: &str) -> Result<(), DataError> {
    if !dir.is_dir() {
        return Err(DataError::Invalid(format!("{what} `{}` is not a folder\n  = hint: {hint}", dir.display())));
    }
    Ok(())
}

pub fn collect(format: Format, source: &Path, o: &SourceOptions) -> Result<Collected, DataError> {
    match format {
        Format::ImageFolder => image_folder(source),
        Format::Idx => idx(source, o),
        Format::Kitti => kitti(source, o),
        Format::Segmentation => segmentation(source, o),
        Format::Coco => coco(source, o),
        Format::Voc => voc(source, o),
        Format::Csv => csv_boxes(source, o),
    }
}

fn image_folder(source: &Path) -> Result<Collected, DataError> {
    need_dir(source, "image folder", "`source` must be a folder with one sub-folder per class, e.g. data/cats/1.jpg")?;
    let mut c = Collected::default();
    let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(source)
        .map_err(|e| DataError::io(format!("cannot read `{}`", source.display()), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    class_dirs.sort();
    let mut ignored = 0;
    for dir in &class_dirs {
        let class = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let files = sorted_files(dir)?;
        let mut n = 0;
        for f in files {
            if !is_image_name(&f) {
                ignored += 1;
                continue;
            }
            let rel = f.strip_prefix(source).unwrap_or(&f).to_path_buf();
            c.items.push(Item { key: key_of(&rel), image: ImageSource::File(f.clone()), label: ItemLabel::Class(class.clone()), origin: f.display().to_string(), split: None });
            n += 1;
        }
        if n == 0 {
            c.warnings.push(format!("class folder `{}` has no images", dir.display()));
        }
    }
    if ignored > 0 {
        c.warnings.push(format!("{ignored} file(s) without an image extension ({}) were ignored", IMAGE_EXTS.join(", ")));
    }
    if c.items.is_empty() {
        return Err(DataError::Invalid(format!(
            "no images found under `{}`\n  = hint: an image folder has one sub-folder per class holding .png/.jpg/.bmp/.tif files, e.g. {}/cat/001.jpg",
            source.display(),
            source.display()
        )));
    }
    Ok(c)
}

/// Read an IDX file (gzip or not): returns (dims, data offset, bytes).
fn read_idx(path: &Path, want_dims: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(format!("cannot read IDX file `{}`", path.display()), e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Invalid(format!("`{}` is not a valid gzip file: {e}\n  = hint: re-download it, or give the uncompressed IDX file", path.display())))?;
        out
    } else {
        raw
    };
    let bad = |why: String| DataError::Invalid(format!("`{}` is not a valid IDX file: {why}\n  = hint: IDX files are the MNIST format: magic 0x0000080N, N big-endian dimensions, then unsigned bytes", path.display()));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("bad magic number".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x} is not unsigned bytes (0x08)", bytes[2])));
    }
    let nd = bytes[3] as usize;
    if nd != want_dims {
        return Err(bad(format!("{nd} dimension(s), expected {want_dims}")));
    }
    if bytes.len() < 4 + 4 * nd {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..nd).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize).collect();
    let need = dims.iter().product::<usize>();
    let have = bytes.len() - 4 - 4 * nd;
    if have < need {
        return Err(bad(format!("truncated: {need} bytes of data expected, {have} found")));
    }
    let data = bytes[4 + 4 * nd..4 + 4 * nd + need].to_vec();
    Ok((dims, data))
}

fn idx(source: &Path, o: &SourceOptions) -> Result<Collected, DataError> {
    let mut c = Collected::default();
    let pairs = [
        ("train", o.idx_images.as_deref().unwrap_or("train-images-idx3-ubyte.gz"), o.idx_labels.as_deref().unwrap_or("train-labels-idx1-ubyte.gz")),
    ];
    let mut all: Vec<(&str, String, String)> = pairs.iter().map(|(s, i, l)| (*s, i.to_string(), l.to_string())).collect();
    match (&o.idx_val_images, &o.idx_val_labels) {
        (Some(i), Some(l)) => all.push(("val", i.clone(), l.clone())),
        (None, None) => {}
        _ => return Err(DataError::Invalid("`val_images` and `val_labels` go together: give both or neither".into())),
    }
    let mut max_label = 0u8;
    for (split, images, labels) in all {
        let ip = source.join(&images);
        let lp = source.join(&labels);
        let (idims, pixels) = read_idx(&ip, 3)?;
        let (ldims, labs) = read_idx(&lp, 1)?;
        if idims[0] != ldims[0] {
            return Err(DataError::Invalid(format!(
                "`{}` has {} images but `{}` has {} labels\n  = hint: pair each images file with its own labels file",
                ip.display(),
                idims[0],
                lp.display(),
                ldims[0]
            )));
        }
        let (h, w) = (idims[1] as u32, idims[2] as u32);
        if w == 0 || h == 0 {
            return Err(DataError::Invalid(format!("`{}` holds images of size {w}x{h}", ip.display())));
        }
        let data = Arc::new(pixels);
        let stem = if o.idx_val_images.is_some() { split.to_string() } else { "img".to_string() };
        for (i, l) in labs.iter().enumerate() {
            max_label = max_label.max(*l);
            c.items.push(Item {
                key: format!("{stem}-{i:06}"),
                image: ImageSource::Raw { data: Arc::clone(&data), offset: i * (w * h) as usize, width: w, height: h },
                label: ItemLabel::Class(l.to_string()),
                origin: format!("{}#{i}", ip.display()),
                split: o.idx_val_images.as_ref().map(|_| split.to_string()),
            });
        }
    }
    if c.items.is_empty() {
        return Err(DataError::Invalid(format!("the IDX files in `{}` hold no images", source.display())));
    }
    c.source_classes = Some((0..=max_label).map(|i| i.to_string()).collect());
    Ok(c)
}

/// Parse one KITTI label file: 15 whitespace-separated fields per object; only the class
/// and the 2-D box (fields 5-8) are used, as TAO does.
pub fn parse_kitti_label(text: &str, file: &str) -> Result<Vec<(String, [f32; 4], String)>, Bad> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let origin = format!("{file}:{}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() != 15 {
            return Err(Bad {
                origin,
                message: format!(
                    "a KITTI label line has 15 fields (type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y), this one has {}",
                    fields.len()
                ),
            });
        }
        let mut b = [0f32; 4];
        for (k, f) in fields[4..8].iter().enumerate() {
            b[k] = match f.parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                _ => return Err(Bad { origin, message: format!("box coordinate `{f}` (field {}) is not a number", k + 5) }),
            };
        }
        out.push((fields[0].to_string(), b, origin));
    }
    Ok(out)
}

fn kitti(source: &Path, o: &SourceOptions) -> Result<Collected, DataError> {
    let images = source.join(o.images_dir.as_deref().unwrap_or("image_2"));
    let labels = source.join(o.labels_dir.as_deref().unwrap_or("label_2"));
    need_dir(&images, "KITTI image folder", "a KITTI dataset has `image_2/` (images) and `label_2/` (one .txt per image); set `images_dir`/`labels_dir` if yours differ")?;
    need_dir(&labels, "KITTI label folder", "a KITTI dataset has `image_2/` (images) and `label_2/` (one .txt per image); set `images_dir`/`labels_dir` if yours differ")?;
    let mut c = Collected::default();
    for f in sorted_files(&images)? {
        if !is_image_name(&f) {
            continue;
        }
        let rel = f.strip_prefix(&images).unwrap_or(&f).to_path_buf();
        let lf = labels.join(rel.with_extension("txt"));
        let text = match std::fs::read_to_string(&lf) {
            Ok(t) => t,
            Err(_) => {
                c.bad.push(Bad { origin: f.display().to_string(), message: format!("no label file `{}` for this image", lf.display()) });
                continue;
            }
        };
        match parse_kitti_label(&text, &lf.display().to_string()) {
            Ok(boxes) => c.items.push(Item { key: key_of(&rel), image: ImageSource::File(f.clone()), label: ItemLabel::Boxes(boxes), origin: f.display().to_string(), split: None }),
            Err(b) => c.bad.push(b),
        }
    }
    if c.items.is_empty() && c.bad.is_empty() {
        return Err(DataError::Invalid(format!("no images found in `{}`\n  = hint: put the images (.png/.jpg) in `image_2/`", images.display())));
    }
    Ok(c)
}

fn segmentation(source: &Path, o: &SourceOptions) -> Result<Collected, DataError> {
    let images = source.join(o.images_dir.as_deref().unwrap_or("images"));
    let masks = source.join(o.masks_dir.as_deref().unwrap_or("masks"));
    let hint = "a segmentation dataset has `images/` and `masks/` (one PNG of class indices per image, same file stem); set `images_dir`/`masks_dir` if yours differ";
    need_dir(&images, "image folder", hint)?;
    need_dir(&masks, "mask folder", hint)?;
    let mut c = Collected::default();
    for f in sorted_files(&images)? {
        if !is_image_name(&f) {
            continue;
        }
        let rel = f.strip_prefix(&images).unwrap_or(&f).to_path_buf();
        let mf = masks.join(rel.with_extension("png"));
        if !mf.is_file() {
            c.bad.push(Bad { origin: f.display().to_string(), message: format!("no mask `{}` for this image", mf.display()) });
            continue;
        }
        c.items.push(Item { key: key_of(&rel), image: ImageSource::File(f.clone()), label: ItemLabel::Mask(mf), origin: f.display().to_string(), split: None });
    }
    if c.items.is_empty() && c.bad.is_empty() {
        return Err(DataError::Invalid(format!("no images found in `{}`\n  = hint: {hint}", images.display())));
    }
    Ok(c)
}

/// Class indices of a mask PNG: palette PNGs give their indices, grey ones their values.
pub fn read_mask(path: &Path) -> Result<(u32, u32, Vec<u8>), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open mask: {e}"))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(f));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().map_err(|e| format!("mask is not a valid PNG: {e}"))?;
    let info = reader.info().clone();
    let mut buf = vec![0u8; reader.output_buffer_size().ok_or("mask is too large")?];
    let frame = reader.next_frame(&mut buf).map_err(|e| format!("mask PNG is damaged: {e}"))?;
    let (w, h) = (frame.width, frame.height);
    let bits = frame.bit_depth as u8;
    match frame.color_type {
        png::ColorType::Indexed | png::ColorType::Grayscale => {
            if bits == 16 {
                return Err("16-bit masks are not supported; save class indices as 8-bit".into());
            }
            let mut out = Vec::with_capacity((w * h) as usize);
            let per_byte = 8 / bits as usize;
            let mask = ((1u16 << bits) - 1) as u8;
            for y in 0..h as usize {
                let row = &buf[y * frame.line_size..(y + 1) * frame.line_size];
                for x in 0..w as usize {
                    let byte = row[x / per_byte];
                    let shift = 8 - bits as usize * (x % per_byte + 1);
                    out.push((byte >> shift) & mask);
                }
            }
            let _ = info;
            Ok((w, h, out))
        }
        other => Err(format!("mask colour type {other:?} is not class indices; masks must be palette or 8-bit grey PNGs whose values are class indices")),
    }
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnn>,
    categories: Vec<CocoCat>,
}
#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}
#[derive(Deserialize)]
struct CocoAnn {
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    #[serde(default)]
    iscrowd: u8,
}
#[derive(Deserialize)]
struct CocoCat {
    id: u64,
    name: String,
}

fn coco(source: &Path, o: &SourceOptions) -> Result<Collected, DataError> {
    let ann = source.join(o.coco_annotations.as_deref().unwrap_or("annotations.json"));
    let text = std::fs::read_to_string(&ann).map_err(|e| DataError::io(format!("cannot read COCO annotations `{}` (set `annotations`)", ann.display()), e))?;
    let f: CocoFile = serde_json::from_str(&text).map_err(|e| {
        DataError::Invalid(format!(
            "`{}` is not COCO JSON: {e} (line {}, column {})\n  = hint: it needs `images` (id, file_name), `annotations` (image_id, category_id, bbox [x, y, w, h]) and `categories` (id, name)",
            ann.display(),
            e.line(),
            e.column()
        ))
    })?;
    let images_dir = source.join(o.images_dir.as_deref().unwrap_or(""));
    let cats: BTreeMap<u64, String> = f.categories.iter().map(|c| (c.id, c.name.clone())).collect();
    let mut by_image: BTreeMap<u64, Vec<(String, [f32; 4], String)>> = BTreeMap::new();
    let mut c = Collected::default();
    let ids: BTreeSet<u64> = f.images.iter().map(|i| i.id).collect();
    let mut crowd = 0;
    for (n, a) in f.annotations.iter().enumerate() {
        let origin = format!("{} annotation #{n} (image_id {})", ann.display(), a.image_id);
        if !ids.contains(&a.image_id) {
            c.bad.push(Bad { origin, message: format!("annotation refers to image id {} which is not in `images`", a.image_id) });
            continue;
        }
        if a.iscrowd != 0 {
            crowd += 1;
            continue;
        }
        let Some(name) = cats.get(&a.category_id) else {
            c.bad.push(Bad { origin, message: format!("unknown category id {}", a.category_id) });
            continue;
        };
        if a.bbox.len() != 4 || a.bbox.iter().any(|v| !v.is_finite()) {
            c.bad.push(Bad { origin, message: "bbox must be 4 numbers [x, y, width, height]".into() });
            continue;
        }
        let (x, y, w, h) = (a.bbox[0], a.bbox[1], a.bbox[2], a.bbox[3]);
        by_image.entry(a.image_id).or_default().push((name.clone(), [x as f32, y as f32, (x + w) as f32, (y + h) as f32], origin));
    }
    if crowd > 0 {
        c.warnings.push(format!("{crowd} crowd annotation(s) (iscrowd = 1) were left out, as TAO does"));
    }
    let mut imgs: Vec<&CocoImage> = f.images.iter().collect();
    imgs.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    for im in imgs {
        let p = images_dir.join(&im.file_name);
        let boxes = by_image.remove(&im.id).unwrap_or_default();
        c.items.push(Item { key: key_of(Path::new(&im.file_name)), image: ImageSource::File(p.clone()), label: ItemLabel::Boxes(boxes), origin: p.display().to_string(), split: None });
    }
    if c.items.is_empty() {
        return Err(DataError::Invalid(format!("`{}` lists no images", ann.display())));
    }
    let mut order: Vec<(u64, String)> = cats.into_iter().collect();
    order.sort();
    c.source_classes = Some(order.into_iter().map(|(_, n)| n).collect());
    Ok(c)
}

/// Pascal VOC: one XML per image (`<filename>`, `<object><name>`, `<bndbox>` with
/// `xmin ymin xmax ymax`), in `Annotations/` (or `labels_dir`, or the source folder itself),
/// images in `JPEGImages/` (or `images_dir`, or beside the XML files).
fn voc(source: &Path, o: &SourceOptions) -> Result<Collected, DataError> {
    let pick = |opt: &Option<String>, conventional: &str, fallback: &Path| match opt {
        Some(d) => source.join(d),
        None if source.join(conventional).is_dir() => source.join(conventional),
        None => fallback.to_path_buf(),
    };
    let labels = pick(&o.labels_dir, "Annotations", source);
    let images = pick(&o.images_dir, "JPEGImages", &labels);
    let hint = "a VOC dataset has `Annotations/` (one .xml per image) and `JPEGImages/`, or the .xml files beside the images; set `labels_dir`/`images_dir` if yours differ";
    need_dir(&labels, "VOC annotation folder", hint)?;
    need_dir(&images, "VOC image folder", hint)?;
    let mut c = Collected::default();
    for f in sorted_files(&labels)? {
        if !f.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")) {
            continue;
        }
        match voc_file(&f, &images) {
            Ok(it) => c.items.push(it),
            Err(b) => c.bad.push(b),
        }
    }
    if c.items.is_empty() && c.bad.is_empty() {
        return Err(DataError::Invalid(format!("no .xml annotation files in `{}`\n  = hint: {hint}", labels.display())));
    }
    Ok(c)
}

fn voc_file(f: &Path, images: &Path) -> Result<Item, Bad> {
    let file = f.display().to_string();
    let text = std::fs::read_to_string(f).map_err(|e| Bad { origin: file.clone(), message: format!("cannot read: {e}") })?;
    let doc = roxmltree::Document::parse(&text).map_err(|e| Bad { origin: format!("{file}:{}", e.pos().row), message: format!("not valid XML: {e}") })?;
    let at = |n: roxmltree::Node| format!("{file}:{}", doc.text_pos_at(n.range().start).row);
    let root = doc.root_element();
    if root.tag_name().name() != "annotation" {
        return Err(Bad { origin: at(root), message: format!("a VOC file's root element is <annotation>, not <{}>", root.tag_name().name()) });
    }
    fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
        n.children().find(|c| c.is_element() && c.tag_name().name() == tag)
    }
    let name_node = child(root, "filename").ok_or_else(|| Bad { origin: at(root), message: "no <filename>: VOC names its image there".into() })?;
    let name = name_node.text().unwrap_or("").trim().to_string();
    if name.is_empty() {
        return Err(Bad { origin: at(name_node), message: "<filename> is empty".into() });
    }
    let image = images.join(&name);
    if !image.is_file() {
        return Err(Bad { origin: at(name_node), message: format!("the image `{}` named by <filename> does not exist", image.display()) });
    }
    let mut boxes = Vec::new();
    for obj in root.children().filter(|c| c.is_element() && c.tag_name().name() == "object") {
        let origin = at(obj);
        let class = child(obj, "name").and_then(|n| n.text()).map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let class = class.ok_or_else(|| Bad { origin: origin.clone(), message: "<object> without a <name> (its class)".into() })?;
        let bb = child(obj, "bndbox").ok_or_else(|| Bad { origin: origin.clone(), message: "<object> without a <bndbox>".into() })?;
        let mut b = [0f32; 4];
        for (i, tag) in ["xmin", "ymin", "xmax", "ymax"].iter().enumerate() {
            let n = child(bb, tag).ok_or_else(|| Bad { origin: at(bb), message: format!("<bndbox> without <{tag}>") })?;
            let t = n.text().unwrap_or("").trim();
            b[i] = t.parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| Bad { origin: at(n), message: format!("<{tag}> `{t}` is not a number") })?;
        }
        boxes.push((class, b, origin));
    }
    let rel = image.strip_prefix(images).unwrap_or(&image).to_path_buf();
    Ok(Item { key: key_of(&rel), image: ImageSource::File(image.clone()), label: ItemLabel::Boxes(boxes), origin: file, split: None })
}

/// One CSV of boxes, a row per box: `image_path,xmin,ymin,xmax,ymax,label` (DeepForest's
/// and many labelling tools' layout; columns found by header name, others ignored). A row
/// whose coordinates are empty or all 0 lists an image without boxes (DeepForest's way).
/// `annotations` names the file (default `annotations.csv`); image paths are relative to
/// `images_dir` (default: the CSV's folder).
fn csv_boxes(source: &Path, o: &SourceOptions) -> Result<Collected, DataError> {
    let path = source.join(o.coco_annotations.as_deref().unwrap_or("annotations.csv"));
    let file = path.display().to_string();
    let mut rd = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(&path).map_err(|e| {
        DataError::Invalid(format!("cannot read the box CSV `{file}`: {e}\n  = hint: set `annotations` to the CSV (image_path,xmin,ymin,xmax,ymax,label), relative to `source`"))
    })?;
    let header = rd.headers().map_err(|e| DataError::Invalid(format!("{file}:1: cannot read the header: {e}")))?.clone();
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let need = ["image_path", "xmin", "ymin", "xmax", "ymax", "label"];
    let missing: Vec<&str> = need.iter().copied().filter(|n| col(n).is_none()).collect();
    if !missing.is_empty() {
        return Err(DataError::Invalid(format!(
            "{file}:1: the header lacks {} (found: {})\n  = hint: the header is `image_path,xmin,ymin,xmax,ymax,label`",
            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
            header.iter().collect::<Vec<_>>().join(",")
        )));
    }
    let idx: Vec<usize> = need.iter().map(|n| col(n).unwrap()).collect();
    let images_dir = match &o.images_dir {
        Some(d) => source.join(d),
        None => path.parent().unwrap_or(source).to_path_buf(),
    };
    // image path -> (its boxes, the first row naming it)
    type Rows = (Vec<(String, [f32; 4], String)>, String);
    let mut by_image: BTreeMap<String, Rows> = BTreeMap::new();
    let mut c = Collected::default();
    for rec in rd.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                c.bad.push(Bad { origin: format!("{file}:{line}"), message: format!("unreadable row: {e}") });
                continue;
            }
        };
        let origin = format!("{file}:{}", rec.position().map_or(0, |p| p.line()));
        let field = |i: usize| rec.get(idx[i]).unwrap_or("");
        let image = field(0).to_string();
        if image.is_empty() {
            c.bad.push(Bad { origin, message: "empty `image_path`".into() });
            continue;
        }
        let entry = by_image.entry(image).or_insert_with(|| (Vec::new(), origin.clone()));
        let raw: Vec<&str> = (1..5).map(field).collect();
        if raw.iter().all(|v| v.is_empty()) {
            continue;
        }
        let mut b = [0f32; 4];
        let mut ok = true;
        for (i, v) in raw.iter().enumerate() {
            match v.parse::<f32>() {
                Ok(x) if x.is_finite() => b[i] = x,
                _ => {
                    c.bad.push(Bad { origin: origin.clone(), message: format!("`{}` = `{v}` is not a number", need[i + 1]) });
                    ok = false;
                    break;
                }
            }
        }
        if !ok || b == [0.0; 4] {
            continue;
        }
        let label = field(5);
        if label.is_empty() {
            c.bad.push(Bad { origin, message: "empty `label`".into() });
            continue;
        }
        entry.0.push((label.to_string(), b, origin));
    }
    for (image, (boxes, origin)) in by_image {
        let p = images_dir.join(&image);
        if !p.is_file() {
            c.bad.push(Bad { origin, message: format!("the image `{}` does not exist", p.display()) });
            continue;
        }
        c.items.push(Item { key: key_of(Path::new(&image)), image: ImageSource::File(p.clone()), label: ItemLabel::Boxes(boxes), origin: p.display().to_string(), split: None });
    }
    if c.items.is_empty() && c.bad.is_empty() {
        return Err(DataError::Invalid(format!("`{file}` lists no images")));
    }
    Ok(c)
}

/// A box label after validation against its image.
pub fn check_box(class: &str, class_id: u32, b: [f32; 4], w: u32, h: u32) -> Result<BoxLabel, String> {
    let [x1, y1, x2, y2] = b;
    if x2 <= x1 || y2 <= y1 {
        return Err(format!("box [{x1}, {y1}, {x2}, {y2}] of class `{class}` has negative or zero size"));
    }
    let tol = 1.0;
    if x1 < -tol || y1 < -tol || x2 > w as f32 + tol || y2 > h as f32 + tol {
        return Err(format!("box [{x1}, {y1}, {x2}, {y2}] of class `{class}` lies outside the {w}x{h} image"));
    }
    let c = |v: f32, m: u32| v.clamp(0.0, m as f32);
    Ok(BoxLabel { class: class.to_string(), class_id, bbox: [c(x1, w), c(y1, h), c(x2, w), c(y2, h)] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key_of(Path::new("cat/img.001.jpg")), "cat/img_001");
        assert_eq!(key_of(Path::new("a b.png")), "a_b");
    }

    #[test]
    fn kitti_lines() {
        let ok = "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n\nDontCare -1 -1 -10 1 2 3 4 -1 -1 -1 -1000 -1000 -1000 -10\n";
        let v = parse_kitti_label(ok, "l.txt").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0, "Car");
        assert_eq!(v[0].1, [587.01, 173.33, 614.12, 200.12]);
        let bad = parse_kitti_label("Car 0 0 0 1 2 3\n", "l.txt").unwrap_err();
        assert_eq!(bad.origin, "l.txt:1");
        assert!(bad.message.contains("has 7"));
        let bad = parse_kitti_label(&ok.replace("587.01", "x"), "l.txt").unwrap_err();
        assert!(bad.message.contains("`x`"));
    }

    #[test]
    fn boxes() {
        assert!(check_box("car", 0, [10.0, 10.0, 5.0, 20.0], 100, 100).is_err());
        assert!(check_box("car", 0, [10.0, 10.0, 150.0, 20.0], 100, 100).is_err());
        let b = check_box("car", 0, [-0.5, 0.0, 100.4, 20.0], 100, 100).unwrap();
        assert_eq!(b.bbox, [0.0, 0.0, 100.0, 20.0]);
    }
}
