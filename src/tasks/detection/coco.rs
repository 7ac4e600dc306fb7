//! COCO box evaluation with pycocotools' exact semantics (`COCOeval`, `iouType = "bbox"`):
//! ten IoU thresholds 0.50:0.05:0.95, 101 recall points, areas all/small/medium/large,
//! at most 1/10/100 detections per image and class, crowd regions that absorb detections,
//! greedy matching in score order, the interpolated precision envelope, and the twelve
//! summary numbers `COCOeval.summarize()` prints. Ties in score are broken as pycocotools
//! breaks them (stable sorts: file order within an image, image order across images).
//!
//! One deliberate difference: pycocotools records a match by the ground truth's `id` and
//! later reads id 0 as "unmatched", so a detection matched to an annotation whose id is 0
//! counts as a false positive there. Here a match is a match, whatever the id.

use rayon::prelude::*;
use serde::Serialize;

use super::{Detections, iou_xywh};

/// numpy.linspace(start, stop, num): `i·step + start`, the last point exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

pub const MAX_DETS: [usize; 3] = [1, 10, 100];
pub const AREA_NAMES: [&str; 4] = ["all", "small", "medium", "large"];
const AREA_RANGES: [[f64; 2]; 4] = [[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]];

/// The summary in `COCOeval.stats` order.
pub const STAT_NAMES: [&str; 12] = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"];

#[derive(Debug, Clone, Serialize)]
pub struct ClassResult {
    pub class: String,
    /// Non-crowd ground-truth boxes of the class.
    pub ground_truth: usize,
    pub detections: usize,
    /// AP@[.50:.95], AP@.50, AP@.75 and AR@100 over all areas (-1: no ground truth).
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
    pub ar100: f64,
    /// Interpolated precision at the 101 recall points, IoU 0.50, all areas, 100 detections
    /// (empty when the class has no ground truth).
    pub pr50: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CocoReport {
    /// The twelve numbers of [`STAT_NAMES`], -1 where pycocotools prints -1.
    pub stats: [f64; 12],
    pub per_class: Vec<ClassResult>,
    /// The 101 recall points of the precision curves.
    pub recall_points: Vec<f64>,
}

impl CocoReport {
    /// The summary as `COCOeval.summarize()` prints it.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (i, v) in self.stats.iter().enumerate() {
            let (kind, short) = if i < 6 { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
            let iou = match i {
                1 => "0.50",
                2 => "0.75",
                _ => "0.50:0.95",
            };
            let area = match i {
                3 | 9 => "small",
                4 | 10 => "medium",
                5 | 11 => "large",
                _ => "all",
            };
            let md = match i {
                6 => 1,
                7 => 10,
                _ => 100,
            };
            out.push_str(&format!(" {kind:<18} {short} @[ IoU={iou:<9} | area={area:>6} | maxDets={md:>3} ] = {v:0.3}\n"));
        }
        out
    }
}

/// One image × class × area: the matches of its (at most 100) detections.
struct ImgEval {
    scores: Vec<f64>,
    /// `[t][d]`
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    gt_ignored: Vec<bool>,
}

/// Evaluate as `COCOeval(gt, dt, "bbox").evaluate(); accumulate(); summarize()` does.
pub fn evaluate(d: &Detections) -> CocoReport {
    let iou_thrs = linspace(0.5, 0.95, 10);
    let rec_thrs = linspace(0.0, 1.0, 101);
    let (ni, nk) = (d.images.len(), d.classes.len());
    let (t_n, r_n, a_n, m_n) = (iou_thrs.len(), rec_thrs.len(), AREA_RANGES.len(), MAX_DETS.len());
    let max_det = MAX_DETS[m_n - 1];

    // Per (image, class), in file order.
    let mut gts: Vec<Vec<usize>> = vec![Vec::new(); ni * nk];
    let mut dts: Vec<Vec<usize>> = vec![Vec::new(); ni * nk];
    for (i, g) in d.gts.iter().enumerate() {
        gts[g.image * nk + g.class].push(i);
    }
    for (i, t) in d.dets.iter().enumerate() {
        dts[t.image * nk + t.class].push(i);
    }

    // Per (image, class), once for all area ranges: the (at most 100) detections by score
    // and their IoUs, [sorted detection][ground truth in file order].
    let (sorted_dts, cell_ious): (Vec<Vec<usize>>, Vec<Vec<Vec<f64>>>) = dts
        .par_iter()
        .enumerate()
        .map(|(cell, cell_dts)| {
            let mut v = cell_dts.clone();
            // np.argsort(-score, kind="mergesort"): stable, highest first.
            v.sort_by(|a, b| d.dets[*b].score.partial_cmp(&d.dets[*a].score).unwrap_or(std::cmp::Ordering::Equal));
            v.truncate(max_det);
            let ious = v.iter().map(|di| gts[cell].iter().map(|gi| iou_xywh(&d.dets[*di].bbox, &d.gts[*gi].bbox, d.gts[*gi].iscrowd)).collect()).collect();
            (v, ious)
        })
        .unzip();

    // evaluateImg for one class: every area and image (None where the image has neither).
    let eval_class = |k: usize| -> Vec<Option<ImgEval>> {
        let mut evals: Vec<Option<ImgEval>> = Vec::with_capacity(a_n * ni);
        for rng in AREA_RANGES.iter() {
            for img in 0..ni {
                let cell = img * nk + k;
                let (g_all, dt) = (&gts[cell], &sorted_dts[cell]);
                if g_all.is_empty() && dts[cell].is_empty() {
                    evals.push(None);
                    continue;
                }
                let ignore_of = |gi: usize| {
                    let g = &d.gts[gi];
                    g.iscrowd || g.area < rng[0] || g.area > rng[1]
                };
                // Ground truth with the ignored ones last (stable); `order` indexes the cell's IoU columns.
                let mut order: Vec<usize> = (0..g_all.len()).collect();
                order.sort_by_key(|j| ignore_of(g_all[*j]));
                let g: Vec<usize> = order.iter().map(|j| g_all[*j]).collect();
                let gt_ig: Vec<bool> = g.iter().map(|gi| ignore_of(*gi)).collect();
                let crowd: Vec<bool> = g.iter().map(|gi| d.gts[*gi].iscrowd).collect();
                let ious: Vec<Vec<f64>> = cell_ious[cell].iter().map(|row| order.iter().map(|j| row[*j]).collect()).collect();
                let (nd, ng) = (dt.len(), g.len());
                let mut matched = vec![vec![false; nd]; t_n];
                let mut ignored = vec![vec![false; nd]; t_n];
                if nd > 0 && ng > 0 {
                    for (ti, t) in iou_thrs.iter().enumerate() {
                        let mut gt_taken = vec![false; ng];
                        for di in 0..nd {
                            let mut best = t.min(1.0 - 1e-10);
                            let mut m: Option<usize> = None;
                            for gi in 0..ng {
                                if gt_taken[gi] && !crowd[gi] {
                                    continue;
                                }
                                if let Some(mm) = m
                                    && !gt_ig[mm]
                                    && gt_ig[gi]
                                {
                                    break;
                                }
                                if ious[di][gi] < best {
                                    continue;
                                }
                                best = ious[di][gi];
                                m = Some(gi);
                            }
                            if let Some(mm) = m {
                                ignored[ti][di] = gt_ig[mm];
                                matched[ti][di] = true;
                                gt_taken[mm] = true;
                            }
                        }
                    }
                }
                // Unmatched detections outside the area range are ignored.
                for di in 0..nd {
                    let b = &d.dets[dt[di]].bbox;
                    let area = b[2] * b[3];
                    if area < rng[0] || area > rng[1] {
                        for ti in 0..t_n {
                            if !matched[ti][di] {
                                ignored[ti][di] = true;
                            }
                        }
                    }
                }
                evals.push(Some(ImgEval { scores: dt.iter().map(|di| d.dets[*di].score).collect(), matched, ignored, gt_ignored: gt_ig }));
            }
        }
        evals
    };

    // accumulate
    let pidx = |t: usize, r: usize, k: usize, a: usize, m: usize| (((t * r_n + r) * nk + k) * a_n + a) * m_n + m;
    let ridx = |t: usize, k: usize, a: usize, m: usize| ((t * nk + k) * a_n + a) * m_n + m;
    // accumulate, one class at a time (classes in parallel), into [t][r][a][m] and [t][a][m]
    let acc_class = |evals: &[Option<ImgEval>]| -> (Vec<f64>, Vec<f64>) {
        let mut lp = vec![-1.0f64; t_n * r_n * a_n * m_n];
        let mut lr = vec![-1.0f64; t_n * a_n * m_n];
        for a in 0..a_n {
            let es: Vec<&ImgEval> = (0..ni).filter_map(|i| evals[a * ni + i].as_ref()).collect();
            if es.is_empty() {
                continue;
            }
            let npig = es.iter().flat_map(|e| e.gt_ignored.iter()).filter(|ig| !**ig).count();
            for (m, &md) in MAX_DETS.iter().enumerate() {
                if npig == 0 {
                    continue;
                }
                // Concatenate each image's first `md` detections, then a stable sort by score.
                let mut all: Vec<(f64, usize, usize)> = Vec::new(); // (score, eval, det)
                for (ei, e) in es.iter().enumerate() {
                    for di in 0..e.scores.len().min(md) {
                        all.push((e.scores[di], ei, di));
                    }
                }
                all.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap_or(std::cmp::Ordering::Equal));
                for t in 0..t_n {
                    let (mut tp, mut fp) = (0u64, 0u64);
                    let mut rc = Vec::with_capacity(all.len());
                    let mut pr = Vec::with_capacity(all.len());
                    for &(_, ei, di) in &all {
                        let e = es[ei];
                        if e.ignored[t][di] {
                            // neither a true nor a false positive
                        } else if e.matched[t][di] {
                            tp += 1;
                        } else {
                            fp += 1;
                        }
                        let (tpf, fpf) = (tp as f64, fp as f64);
                        rc.push(tpf / npig as f64);
                        pr.push(tpf / (fpf + tpf + f64::EPSILON));
                    }
                    let nd = rc.len();
                    lr[(t * a_n + a) * m_n + m] = if nd > 0 { rc[nd - 1] } else { 0.0 };
                    for i in (1..nd).rev() {
                        if pr[i] > pr[i - 1] {
                            pr[i - 1] = pr[i];
                        }
                    }
                    for (ri, thr) in rec_thrs.iter().enumerate() {
                        // np.searchsorted(rc, thr, side="left")
                        let pi = rc.partition_point(|v| v < thr);
                        lp[((t * r_n + ri) * a_n + a) * m_n + m] = if pi < nd { pr[pi] } else { 0.0 };
                    }
                }
            }
        }
        (lp, lr)
    };
    let per_k: Vec<(Vec<f64>, Vec<f64>)> = (0..nk).into_par_iter().map(|k| acc_class(&eval_class(k))).collect();
    let mut precision = vec![-1.0f64; t_n * r_n * nk * a_n * m_n];
    let mut recall = vec![-1.0f64; t_n * nk * a_n * m_n];
    for (k, (lp, lr)) in per_k.iter().enumerate() {
        for t in 0..t_n {
            for a in 0..a_n {
                for m in 0..m_n {
                    recall[ridx(t, k, a, m)] = lr[(t * a_n + a) * m_n + m];
                    for r in 0..r_n {
                        precision[pidx(t, r, k, a, m)] = lp[((t * r_n + r) * a_n + a) * m_n + m];
                    }
                }
            }
        }
    }

    let mean_valid = |vals: &mut dyn Iterator<Item = f64>| {
        let (mut s, mut n) = (0.0, 0usize);
        for v in vals.filter(|v| *v > -1.0) {
            s += v;
            n += 1;
        }
        if n == 0 { -1.0 } else { s / n as f64 }
    };
    let t_of = |iou: f64| iou_thrs.iter().position(|t| *t == iou).unwrap();
    let ap = |ks: &[usize], iou: Option<f64>, a: usize, m: usize| {
        let ts: Vec<usize> = match iou {
            Some(v) => vec![t_of(v)],
            None => (0..t_n).collect(),
        };
        let mut it = ts.iter().flat_map(|&t| (0..r_n).flat_map(move |r| ks.iter().map(move |&k| (t, r, k)))).map(|(t, r, k)| precision[pidx(t, r, k, a, m)]);
        mean_valid(&mut it)
    };
    let ar = |ks: &[usize], a: usize, m: usize| {
        let mut it = (0..t_n).flat_map(|t| ks.iter().map(move |&k| (t, k))).map(|(t, k)| recall[ridx(t, k, a, m)]);
        mean_valid(&mut it)
    };
    let all_k: Vec<usize> = (0..nk).collect();
    let m100 = m_n - 1;
    let stats = [
        ap(&all_k, None, 0, m100),
        ap(&all_k, Some(0.5), 0, m100),
        ap(&all_k, Some(0.75), 0, m100),
        ap(&all_k, None, 1, m100),
        ap(&all_k, None, 2, m100),
        ap(&all_k, None, 3, m100),
        ar(&all_k, 0, 0),
        ar(&all_k, 0, 1),
        ar(&all_k, 0, m100),
        ar(&all_k, 1, m100),
        ar(&all_k, 2, m100),
        ar(&all_k, 3, m100),
    ];
    let per_class = (0..nk)
        .map(|k| {
            let ap50 = ap(&[k], Some(0.5), 0, m100);
            ClassResult {
                class: d.classes[k].clone(),
                ground_truth: d.gts.iter().filter(|g| g.class == k && !g.iscrowd).count(),
                detections: d.dets.iter().filter(|t| t.class == k).count(),
                ap: ap(&[k], None, 0, m100),
                ap50,
                ap75: ap(&[k], Some(0.75), 0, m100),
                ar100: ar(&[k], 0, m100),
                pr50: if ap50 > -1.0 { (0..r_n).map(|r| precision[pidx(0, r, k, 0, m100)]).collect() } else { Vec::new() },
            }
        })
        .collect();
    CocoReport { stats, per_class, recall_points: rec_thrs }
}

#[cfg(test)]
mod tests {
    use super::super::{DetBox, GtBox};
    use super::*;

    fn gt(image: usize, class: usize, b: [f64; 4]) -> GtBox {
        GtBox { image, class, bbox: b, area: b[2] * b[3], iscrowd: false }
    }
    fn det(image: usize, class: usize, b: [f64; 4], score: f64) -> DetBox {
        DetBox { image, class, bbox: b, score }
    }

    #[test]
    fn thresholds_are_numpys() {
        let t = linspace(0.5, 0.95, 10);
        assert_eq!(t[5], 0.75);
        assert_eq!(t[0], 0.5);
        assert_eq!(linspace(0.0, 1.0, 101)[10], 10.0 * 0.01);
    }

    /// Precision is `tp / (tp + fp + eps)` as in pycocotools, so a perfect AP is 1 − 2e-16.
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn perfect_detections_score_one() {
        let d = Detections {
            images: vec!["a".into(), "b".into()],
            classes: vec!["car".into()],
            gts: vec![gt(0, 0, [10.0, 10.0, 50.0, 40.0]), gt(1, 0, [0.0, 0.0, 20.0, 20.0])],
            dets: vec![det(0, 0, [10.0, 10.0, 50.0, 40.0], 0.9), det(1, 0, [0.0, 0.0, 20.0, 20.0], 0.8)],
        };
        let r = evaluate(&d);
        assert!(close(r.stats[0], 1.0) && close(r.stats[1], 1.0), "{:?}", r.stats);
        // one small and one medium box; no large one
        assert!(close(r.stats[3], 1.0) && close(r.stats[4], 1.0));
        assert_eq!(r.stats[5], -1.0);
        // recall has no epsilon; one detection per image finds both boxes
        assert_eq!(r.stats[6], 1.0);
    }

    #[test]
    fn a_false_positive_ranked_first_halves_the_precision_before_it() {
        // GT one box; detections: a miss (0.9) then the hit (0.8). Precision at recall 1 is 0.5.
        let d = Detections {
            images: vec!["a".into()],
            classes: vec!["car".into()],
            gts: vec![gt(0, 0, [0.0, 0.0, 10.0, 10.0])],
            dets: vec![det(0, 0, [50.0, 50.0, 10.0, 10.0], 0.9), det(0, 0, [0.0, 0.0, 10.0, 10.0], 0.8)],
        };
        let r = evaluate(&d);
        assert!((r.stats[1] - 0.5).abs() < 1e-12, "{}", r.stats[1]);
        // at most one detection per image: only the false positive counts
        assert_eq!(r.stats[6], 0.0);
        assert_eq!(r.stats[8], 1.0);
    }

    #[test]
    fn crowd_regions_absorb_detections() {
        let mut crowd = gt(0, 0, [0.0, 0.0, 100.0, 100.0]);
        crowd.iscrowd = true;
        let d = Detections {
            images: vec!["a".into()],
            classes: vec!["car".into()],
            gts: vec![gt(0, 0, [200.0, 200.0, 10.0, 10.0]), crowd],
            dets: vec![det(0, 0, [10.0, 10.0, 10.0, 10.0], 0.95), det(0, 0, [20.0, 20.0, 10.0, 10.0], 0.9), det(0, 0, [200.0, 200.0, 10.0, 10.0], 0.5)],
        };
        let r = evaluate(&d);
        // both detections inside the crowd region are ignored, not false positives
        assert!(close(r.stats[0], 1.0), "{:?}", r.stats);
        assert_eq!(r.per_class[0].ground_truth, 1);
    }
}
