//! Classification: cross-entropy with label smoothing over `[N, classes]` logits.
//!
//! Its metrics are still in [`crate::metrics`] and its evaluation in the `evaluate` stage.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::ChunkLoss;
use crate::data::loader::Batch;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossEntropy {
    pub classes: usize,
    pub smoothing: f64,
}

/// Smoothed one-hot targets: `1 - eps` on the label, `eps / K` spread over all classes.
pub fn smoothed_targets(labels: &[u32], classes: usize, eps: f64) -> Vec<f32> {
    let mut t = vec![(eps / classes as f64) as f32; labels.len() * classes];
    for (i, l) in labels.iter().enumerate() {
        t[i * classes + *l as usize] += (1.0 - eps) as f32;
    }
    t
}

/// Rows whose largest logit is the label.
pub fn argmax_hits(logits: &[f32], labels: &[u32], classes: usize) -> usize {
    logits
        .chunks(classes)
        .zip(labels)
        .filter(|(row, l)| {
            let best = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |acc, (i, v)| if *v > acc.1 { (i, *v) } else { acc }).0;
            best == **l as usize
        })
        .count()
}

impl CrossEntropy {
    pub fn loss<B: Backend>(&self, mut outputs: Vec<Tensor<B, 4>>, b: &Batch, lo: usize, hi: usize, denom: usize) -> Result<ChunkLoss<B>, String> {
        let k = self.classes;
        let n = hi - lo;
        let logits: Tensor<B, 2> = outputs.swap_remove(0).reshape([n, k]);
        let device = logits.device();
        let logp = burn::tensor::activation::log_softmax(logits.clone(), 1);
        let t: Tensor<B, 2> = Tensor::from_data(TensorData::new(smoothed_targets(&b.labels[lo..hi], k, self.smoothing), [n, k]), &device);
        let loss = (logp * t).sum().neg() / denom as f64;
        let v = logits.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        Ok(ChunkLoss { loss, hits: Some(argmax_hits(&v, &b.labels[lo..hi], k)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_sums_to_one() {
        let t = smoothed_targets(&[2, 0], 4, 0.1);
        assert!((t[..4].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((t[2] - 0.925).abs() < 1e-6 && (t[0] - 0.025).abs() < 1e-6);
        assert_eq!(argmax_hits(&[0.0, 1.0, 0.5, 2.0, 0.0, 1.0], &[1, 1], 3), 1);
    }
}
