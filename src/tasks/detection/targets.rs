//! TAO's bbox rasteriser (`rasterizers/bbox_rasterizer.py`, `rasterize_bbox.h`): labels →
//! DetectNet_v2's training targets on the output grid.
//!
//! Per box, in grid units (image coordinates × out/in): a coverage ellipse centred at
//! `cov_center_*` of the box with radii `cov_radius_* ×` half the box (at least 0.1, then
//! at least `bbox_min_radius`, keeping the aspect ratio), and a larger dead-zone ellipse
//! (`deadzone_radius` of the way from the coverage ellipse to the box). Each grid cell is
//! sampled 4×4 times: `c` = share of samples inside the coverage ellipse, `a` = inside the
//! dead zone. Boxes are drawn back to front (ascending `ymax`, a depth proxy): where `a`
//! reaches the cell's current coverage the cell is cleared, where `c` does it is
//! overwritten — so the nearer object wins and overlapping dead zones stay empty.
//!
//! Targets: `cov` = c (a soft ellipse), `cov_norm` = c / max(4·rx·ry, 1) (weights the box
//! loss), and per class L, T, R, B = distances from the cell centre (`x·stride + offset`,
//! image pixels) to the box edges divided by `scale` (35), not multiplied by coverage.
//! Cells that no box touches are zero in every target.

use serde::{Deserialize, Serialize};

/// One class's `bbox_rasterizer_config.target_class_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RasterClass {
    pub cov_center_x: f32,
    pub cov_center_y: f32,
    pub cov_radius_x: f32,
    pub cov_radius_y: f32,
    pub bbox_min_radius: f32,
}

impl Default for RasterClass {
    /// The KITTI sample spec's car settings.
    fn default() -> Self {
        RasterClass { cov_center_x: 0.5, cov_center_y: 0.5, cov_radius_x: 0.4, cov_radius_y: 0.4, bbox_min_radius: 1.0 }
    }
}

/// What every class shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Raster {
    pub in_w: usize,
    pub in_h: usize,
    pub out_w: usize,
    pub out_h: usize,
    pub deadzone_radius: f32,
    pub scale: f32,
    pub offset: f32,
}

impl Raster {
    /// DetectNet_v2's grid (stride 16, scale 35, offset 0.5) and the KITTI spec's dead zone.
    pub fn detectnet(in_w: usize, in_h: usize) -> Raster {
        Raster { in_w, in_h, out_w: in_w.div_ceil(16), out_h: in_h.div_ceil(16), deadzone_radius: 0.4, scale: 35.0, offset: 0.5 }
    }
}

/// A labelled box: class index and `[x1, y1, x2, y2]` in input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelBox {
    pub class: usize,
    pub bbox: [f32; 4],
}

/// Targets of one image, channel-major: `cov` and `cov_norm` `[C, H, W]`, `bbox` `[4C, H, W]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    pub cov: Vec<f32>,
    pub cov_norm: Vec<f32>,
    pub bbox: Vec<f32>,
}

const SUB: usize = 4;

/// Rasterise one image's boxes for `classes.len()` classes.
pub fn rasterize(boxes: &[LabelBox], classes: &[RasterClass], r: &Raster) -> Targets {
    let (w, h, nc) = (r.out_w, r.out_h, classes.len());
    let plane = w * h;
    let mut t = Targets { cov: vec![0.0; nc * plane], cov_norm: vec![0.0; nc * plane], bbox: vec![0.0; 4 * nc * plane] };
    let (fx, fy) = (r.out_w as f32 / r.in_w as f32, r.out_h as f32 / r.in_h as f32);
    let (stride_x, stride_y) = (r.in_w as f32 / r.out_w as f32, r.in_h as f32 / r.out_h as f32);
    for (k, rc) in classes.iter().enumerate() {
        let mut max_cov = vec![0f32; plane];
        let mut order: Vec<&LabelBox> = boxes.iter().filter(|b| b.class == k).collect();
        // back to front: ascending ymax (stable for equal ymax)
        order.sort_by(|a, b| a.bbox[3].total_cmp(&b.bbox[3]));
        for b in order {
            let [x1, y1, x2, y2] = [b.bbox[0] * fx, b.bbox[1] * fy, b.bbox[2] * fx, b.bbox[3] * fy];
            let cx = x1 + rc.cov_center_x * (x2 - x1);
            let cy = y1 + rc.cov_center_y * (y2 - y1);
            let sx = if rc.cov_center_x < 0.5 { cx - x1 } else { x2 - cx };
            let sy = if rc.cov_center_y < 0.5 { cy - y1 } else { y2 - cy };
            let mut csx = (rc.cov_radius_x * sx).max(0.1);
            let mut csy = (rc.cov_radius_y * sy).max(0.1);
            if csx < rc.bbox_min_radius {
                csy *= rc.bbox_min_radius / csx;
                csx = rc.bbox_min_radius;
            }
            if csy < rc.bbox_min_radius {
                csx *= rc.bbox_min_radius / csy;
                csy = rc.bbox_min_radius;
            }
            let dz = r.deadzone_radius;
            let dsx = ((1.0 - dz) * csx + dz * sx).max(csx);
            let dsy = ((1.0 - dz) * csy + dz * sy).max(csy);
            let inv_area = 1.0 / (4.0 * csx * csy).max(1.0);
            // cells the dead zone can touch
            let xa = ((cx - dsx).floor().max(0.0)) as usize;
            let xb = ((cx + dsx).ceil().max(0.0) as usize).min(w);
            let ya = ((cy - dsy).floor().max(0.0)) as usize;
            let yb = ((cy + dsy).ceil().max(0.0) as usize).min(h);
            for gy in ya..yb {
                for gx in xa..xb {
                    let (mut inside_c, mut inside_a) = (0, 0);
                    for j in 0..SUB {
                        let py = gy as f32 + (j as f32 + 0.5) / SUB as f32;
                        for i in 0..SUB {
                            let px = gx as f32 + (i as f32 + 0.5) / SUB as f32;
                            let (u, v) = (px - cx, py - cy);
                            if (u / csx).powi(2) + (v / csy).powi(2) <= 1.0 {
                                inside_c += 1;
                            }
                            if (u / dsx).powi(2) + (v / dsy).powi(2) <= 1.0 {
                                inside_a += 1;
                            }
                        }
                    }
                    let c = inside_c as f32 / (SUB * SUB) as f32;
                    let a = inside_a as f32 / (SUB * SUB) as f32;
                    let cell = gy * w + gx;
                    if a > 0.0 && a >= max_cov[cell] {
                        max_cov[cell] = 0.0;
                        t.cov[k * plane + cell] = 0.0;
                        t.cov_norm[k * plane + cell] = 0.0;
                        for q in 0..4 {
                            t.bbox[(k * 4 + q) * plane + cell] = 0.0;
                        }
                    }
                    if c > 0.0 && c >= max_cov[cell] {
                        max_cov[cell] = c;
                        t.cov[k * plane + cell] = c;
                        t.cov_norm[k * plane + cell] = c * inv_area;
                        // cell centre in input pixels; edges in input pixels
                        let ccx = gx as f32 * stride_x + r.offset;
                        let ccy = gy as f32 * stride_y + r.offset;
                        let [bx1, by1, bx2, by2] = b.bbox;
                        let v = [(ccx - bx1) / r.scale, (ccy - by1) / r.scale, (bx2 - ccx) / r.scale, (by2 - ccy) / r.scale];
                        for (q, val) in v.iter().enumerate() {
                            t.bbox[(k * 4 + q) * plane + cell] = *val;
                        }
                    }
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raster(w: usize, h: usize) -> Raster {
        Raster::detectnet(w, h)
    }

    /// A 32×32 box at (16, 16) in a 64×64 input: grid box (1, 1)-(3, 3), centre (2, 2),
    /// half-size 1; radius 0.4 → 0.4, raised to the minimum radius 1 (both axes). Dead zone
    /// 0.6·1 + 0.4·1 = 1, the same ellipse. The four cells around the centre hold 13 of 16
    /// samples inside the unit circle (offsets ±.125, ±.375, ±.625, ±.875 from it: the pairs
    /// whose squares sum to ≤ 1), every other cell none.
    #[test]
    fn one_box() {
        let t = rasterize(&[LabelBox { class: 0, bbox: [16.0, 16.0, 48.0, 48.0] }], &[RasterClass::default()], &raster(64, 64));
        let mut expect = vec![0f32; 16];
        for c in [5, 6, 9, 10] {
            expect[c] = 13.0 / 16.0;
        }
        assert_eq!(t.cov, expect);
        // cov_norm = c / max(4·1·1, 1)
        assert_eq!(t.cov_norm, expect.iter().map(|v| v / 4.0).collect::<Vec<_>>());
        // cell (1, 1): centre (16.5, 16.5): L = T = 0.5/35, R = B = 31.5/35
        let plane = 16;
        let at = |q: usize, cell: usize| t.bbox[q * plane + cell];
        assert!((at(0, 5) - 0.5 / 35.0).abs() < 1e-7);
        assert!((at(1, 5) - 0.5 / 35.0).abs() < 1e-7);
        assert!((at(2, 5) - 31.5 / 35.0).abs() < 1e-7);
        assert!((at(3, 5) - 31.5 / 35.0).abs() < 1e-7);
        // cell (2, 2): centre (32.5, 32.5)
        assert!((at(0, 10) - 16.5 / 35.0).abs() < 1e-7);
        assert!((at(2, 10) - 15.5 / 35.0).abs() < 1e-7);
        // untouched cells carry no box target
        assert_eq!(at(0, 0), 0.0);
    }

    /// Radius 1 (no minimum needed) on a 64×32 box: an ellipse of radii 2×1 cells; with
    /// radius 1 the dead zone is the same ellipse (r = s).
    #[test]
    fn wide_box_soft_edges() {
        let rc = RasterClass { cov_radius_x: 1.0, cov_radius_y: 1.0, ..Default::default() };
        // 0..64 × 0..32 in a 64×32 input: grid 4×2, box covers the grid, centre (2, 1), radii (2, 1)
        let t = rasterize(&[LabelBox { class: 0, bbox: [0.0, 0.0, 64.0, 32.0] }], &[rc], &raster(64, 32));
        let inside = |gx: usize, gy: usize| {
            let mut n = 0;
            for j in 0..4 {
                for i in 0..4 {
                    let (px, py) = (gx as f32 + (i as f32 + 0.5) / 4.0, gy as f32 + (j as f32 + 0.5) / 4.0);
                    if ((px - 2.0) / 2.0).powi(2) + (py - 1.0).powi(2) <= 1.0 {
                        n += 1;
                    }
                }
            }
            n as f32 / 16.0
        };
        for gy in 0..2 {
            for gx in 0..4 {
                assert_eq!(t.cov[gy * 4 + gx], inside(gx, gy), "cell ({gx}, {gy})");
            }
        }
        // by hand: cell (1, 0) lies inside entirely (x offsets ≤ .4375 of the radius, y ≤ .875);
        // corner cell (0, 0): x offsets .9375/.8125/.6875/.5625, y offsets .875/.625/.375/.125
        // give 1 + 2 + 3 + 3 samples inside
        assert_eq!(t.cov[1], 1.0);
        assert_eq!(t.cov[0], 9.0 / 16.0);
    }

    #[test]
    fn the_nearer_object_wins_and_classes_are_apart() {
        // Two same-size cars overlapping by one column of cells; the second is lower (larger
        // ymax), hence nearer, and takes the shared cells.
        let a = LabelBox { class: 0, bbox: [0.0, 0.0, 48.0, 48.0] };
        let b = LabelBox { class: 0, bbox: [16.0, 4.0, 64.0, 52.0] };
        let rc = RasterClass { cov_radius_x: 1.0, cov_radius_y: 1.0, ..Default::default() };
        let r = raster(64, 64);
        let t = rasterize(&[b, a], std::slice::from_ref(&rc), &r);
        let plane = 16;
        // a cell both ellipses cover fully: (2, 1) (centres (1.5,1.5) and (2.5,1.75))
        let cell = 4 + 2;
        assert_eq!(t.cov[cell], 1.0);
        // its box target is b's: L = (32.5 - 16)/35
        assert!((t.bbox[cell] - 16.5 / 35.0).abs() < 1e-7);
        assert!((t.bbox[plane + cell] - (16.5 - 4.0) / 35.0).abs() < 1e-7);
        // order of the label list does not matter
        assert_eq!(rasterize(&[a, b], std::slice::from_ref(&rc), &r), t);
        // a second class with no boxes stays empty; class 1's box leaves class 0 alone
        let t2 = rasterize(&[a, LabelBox { class: 1, bbox: b.bbox }], &[rc.clone(), rc.clone()], &r);
        assert!(t2.cov[plane..].iter().any(|v| *v > 0.0));
        assert_eq!(&t2.cov[..plane], &rasterize(&[a], std::slice::from_ref(&rc), &r).cov[..]);
    }
}
