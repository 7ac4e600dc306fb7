//! TAO DetectNet_v2's own detection metric (`evaluation_config`): per class, boxes rounded
//! to whole pixels, predictions and ground truth outside the class's box-size window
//! dropped (not treated as "don't care"), predictions in descending confidence each
//! matched to the ground truth of its image with the highest IoU (+1 pixel convention,
//! TAO's `border_pixels = "include"`), a true positive when that IoU reaches the class's
//! `minimum_detection_ground_truth_overlap` and the ground truth is still free (VOC's greedy
//! rule), then AP as VOC-2007's 11-point `sample` or the area under the precision envelope
//! (`integrate`). mAP is the unweighted mean over classes.
//!
//! Deliberate difference: TAO turns the NaN AP of a class with no ground truth into 0 and
//! averages it in, so a class absent from the validation split drags mAP down. Here such a
//! class has no AP (`None`) and is left out of the mean (the README says so).

use serde::{Deserialize, Serialize};

use super::Detections;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApMode {
    /// VOC-2007 11-point interpolated AP (TAO's `SAMPLE`).
    Sample,
    /// Area under the monotone precision-recall curve (TAO's `INTEGRATE`).
    Integrate,
}

impl ApMode {
    pub fn parse(s: &str) -> Option<ApMode> {
        match s.to_ascii_lowercase().as_str() {
            "sample" => Some(ApMode::Sample),
            "integrate" => Some(ApMode::Integrate),
            _ => None,
        }
    }
}

/// One class's evaluation settings (`minimum_detection_ground_truth_overlap` and
/// `evaluation_box_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassEval {
    pub iou: f64,
    pub min_height: f64,
    pub max_height: f64,
    pub min_width: f64,
    pub max_width: f64,
}

impl Default for ClassEval {
    fn default() -> Self {
        ClassEval { iou: 0.5, min_height: 0.0, max_height: 9999.0, min_width: 0.0, max_width: 9999.0 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaoClass {
    pub class: String,
    /// None: no ground truth of this class inside its box window.
    pub ap: Option<f64>,
    pub ground_truth: usize,
    pub detections: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaoReport {
    pub mode: ApMode,
    /// Mean over the classes that have an AP (None when none has).
    pub map: Option<f64>,
    pub per_class: Vec<TaoClass>,
}

/// `[x1, y1, x2, y2]` rounded to whole pixels, from COCO's `[x, y, w, h]`.
fn rounded(b: &[f64; 4]) -> [f64; 4] {
    [b[0].round(), b[1].round(), (b[0] + b[2]).round(), (b[1] + b[3]).round()]
}

/// IoU with the +1 convention (a box from x1 to x2 covers x2 − x1 + 1 pixels).
pub fn iou_inclusive(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = a[2].min(b[2]) - a[0].max(b[0]) + 1.0;
    let ih = a[3].min(b[3]) - a[1].max(b[1]) + 1.0;
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let i = iw * ih;
    let u = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) - i;
    i / u
}

/// AP from a precision-recall sequence in detection order.
pub fn average_precision(recall: &[f64], precision: &[f64], mode: ApMode) -> f64 {
    match mode {
        ApMode::Sample => {
            let mut ap = 0.0;
            for i in 0..=10 {
                let t = i as f64 / 10.0;
                let p = recall.iter().zip(precision).filter(|(r, _)| **r >= t).map(|(_, p)| *p).fold(0.0f64, f64::max);
                ap += p / 11.0;
            }
            ap
        }
        ApMode::Integrate => {
            let mut mrec = vec![0.0];
            mrec.extend_from_slice(recall);
            mrec.push(1.0);
            let mut mpre = vec![0.0];
            mpre.extend_from_slice(precision);
            mpre.push(0.0);
            for i in (0..mpre.len() - 1).rev() {
                mpre[i] = mpre[i].max(mpre[i + 1]);
            }
            (0..mrec.len() - 1).filter(|i| mrec[i + 1] != mrec[*i]).map(|i| (mrec[i + 1] - mrec[i]) * mpre[i + 1]).sum()
        }
    }
}

/// Evaluate with one [`ClassEval`] per class of `d.classes` (crowd boxes are left out:
/// TAO's KITTI ground truth has none).
pub fn evaluate(d: &Detections, cfg: &[ClassEval], mode: ApMode) -> TaoReport {
    let inside = |b: &[f64; 4], c: &ClassEval| {
        let (w, h) = (b[2] - b[0], b[3] - b[1]);
        h >= c.min_height && h <= c.max_height && w >= c.min_width && w <= c.max_width
    };
    let mut per_class = Vec::new();
    for (k, name) in d.classes.iter().enumerate() {
        let c = &cfg[k];
        // ground truth per image
        let mut gts: Vec<Vec<[f64; 4]>> = vec![Vec::new(); d.images.len()];
        let mut n_gt = 0;
        for g in d.gts.iter().filter(|g| g.class == k && !g.iscrowd) {
            let b = rounded(&g.bbox);
            if inside(&b, c) {
                gts[g.image].push(b);
                n_gt += 1;
            }
        }
        let mut dets: Vec<(f64, usize, [f64; 4])> = d.dets.iter().filter(|t| t.class == k).map(|t| (t.score, t.image, rounded(&t.bbox))).filter(|t| inside(&t.2, c)).collect();
        dets.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
        let mut taken: Vec<Vec<bool>> = gts.iter().map(|v| vec![false; v.len()]).collect();
        let (mut tp, mut fp) = (0usize, 0usize);
        let (mut rec, mut prec) = (Vec::new(), Vec::new());
        for (_, img, b) in &dets {
            let best = gts[*img].iter().enumerate().map(|(i, g)| (i, iou_inclusive(b, g))).fold(None, |acc: Option<(usize, f64)>, x| match acc {
                Some(a) if a.1 >= x.1 => Some(a),
                _ => Some(x),
            });
            match best {
                Some((i, iou)) if iou >= c.iou && !taken[*img][i] => {
                    taken[*img][i] = true;
                    tp += 1;
                }
                _ => fp += 1,
            }
            rec.push(if n_gt > 0 { tp as f64 / n_gt as f64 } else { 0.0 });
            prec.push(tp as f64 / (tp + fp) as f64);
        }
        let ap = if n_gt == 0 { None } else { Some(average_precision(&rec, &prec, mode)) };
        per_class.push(TaoClass { class: name.clone(), ap, ground_truth: n_gt, detections: dets.len() });
    }
    let aps: Vec<f64> = per_class.iter().filter_map(|c| c.ap).collect();
    let map = if aps.is_empty() { None } else { Some(aps.iter().sum::<f64>() / aps.len() as f64) };
    TaoReport { mode, map, per_class }
}

#[cfg(test)]
mod tests {
    use super::super::{DetBox, GtBox};
    use super::*;

    fn gt(image: usize, class: usize, x1: f64, y1: f64, x2: f64, y2: f64) -> GtBox {
        GtBox { image, class, bbox: [x1, y1, x2 - x1, y2 - y1], area: (x2 - x1) * (y2 - y1), iscrowd: false }
    }
    fn det(image: usize, class: usize, x1: f64, y1: f64, x2: f64, y2: f64, score: f64) -> DetBox {
        DetBox { image, class, bbox: [x1, y1, x2 - x1, y2 - y1], score }
    }

    /// Worked by hand: 3 ground-truth cars over two images; 4 detections in score order
    /// hit (0.9), duplicate of the same car (0.8, FP), miss (0.7, FP), hit (0.6).
    /// precision 1, 1/2, 1/3, 2/4; recall 1/3, 1/3, 1/3, 2/3.
    /// sample: recall points 0, .1, .2, .3 see max precision 1 (4 points); .4, .5, .6 see
    /// 0.5 (3 points); .7 … 1.0 see nothing (4 points) → (4·1 + 3·0.5)/11 = 0.5.
    /// integrate: recall 0 → 1/3 at precision 1, 1/3 → 2/3 at 0.5 → 1/3 + 1/6 = 0.5.
    #[test]
    fn hand_computed_ap() {
        let d = Detections {
            images: vec!["a".into(), "b".into()],
            classes: vec!["car".into()],
            gts: vec![gt(0, 0, 0.0, 0.0, 9.0, 9.0), gt(0, 0, 50.0, 50.0, 59.0, 59.0), gt(1, 0, 20.0, 20.0, 39.0, 39.0)],
            dets: vec![
                det(0, 0, 0.0, 0.0, 9.0, 9.0, 0.9),
                det(0, 0, 0.4, 0.0, 9.0, 9.0, 0.8),
                det(1, 0, 100.0, 100.0, 120.0, 120.0, 0.7),
                det(1, 0, 21.0, 20.0, 39.0, 39.0, 0.6),
            ],
        };
        let cfg = vec![ClassEval { iou: 0.7, ..Default::default() }];
        let s = evaluate(&d, &cfg, ApMode::Sample);
        assert!((s.per_class[0].ap.unwrap() - 5.5 / 11.0).abs() < 1e-12, "{:?}", s);
        let i = evaluate(&d, &cfg, ApMode::Integrate);
        assert!((i.per_class[0].ap.unwrap() - 0.5).abs() < 1e-12, "{:?}", i);
        assert_eq!(i.map, i.per_class[0].ap);
    }

    #[test]
    fn inclusive_iou_and_rounding() {
        // 10×10 pixels each (0..9), overlapping 5×10: 50 / 150
        assert!((iou_inclusive(&[0.0, 0.0, 9.0, 9.0], &[5.0, 0.0, 14.0, 9.0]) - 50.0 / 150.0).abs() < 1e-12);
        // 0.4 rounds to 0: the duplicate above is the same box
        assert_eq!(rounded(&[0.4, 0.0, 8.6, 9.0]), [0.0, 0.0, 9.0, 9.0]);
    }

    #[test]
    fn the_box_window_drops_both_sides_and_classes_without_ground_truth_have_no_ap() {
        let d = Detections {
            images: vec!["a".into()],
            classes: vec!["car".into(), "person".into()],
            // a 10-pixel-high car under a 20-pixel minimum height: dropped, as is its detection
            gts: vec![gt(0, 0, 0.0, 0.0, 30.0, 10.0), gt(0, 0, 100.0, 100.0, 130.0, 140.0)],
            dets: vec![det(0, 0, 0.0, 0.0, 30.0, 10.0, 0.99), det(0, 0, 100.0, 100.0, 130.0, 140.0, 0.5), det(0, 1, 0.0, 0.0, 5.0, 5.0, 0.9)],
        };
        let cfg = vec![ClassEval { min_height: 20.0, ..Default::default() }, ClassEval::default()];
        let r = evaluate(&d, &cfg, ApMode::Integrate);
        assert_eq!(r.per_class[0].ground_truth, 1);
        assert_eq!(r.per_class[0].detections, 1);
        assert_eq!(r.per_class[0].ap, Some(1.0));
        assert_eq!(r.per_class[1].ap, None);
        assert_eq!(r.map, Some(1.0));
    }
}
