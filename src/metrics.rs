//! Classification metrics: top-1 and top-k accuracy, per-class precision / recall / F1
//! with macro and weighted averages, the confusion matrix. Same definitions as
//! scikit-learn (a class never predicted has precision 0, `zero_division = 0`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    pub samples: u64,
    pub accuracy: f64,
    /// k -> top-k accuracy.
    pub top_k: Vec<(usize, f64)>,
    pub per_class: Vec<ClassStats>,
    pub macro_avg: Averages,
    pub weighted_avg: Averages,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Build the report from true labels and per-sample class scores (logits or
/// probabilities; only their order matters). Ties rank the lower class index first.
pub fn classification_report(y_true: &[u32], scores: &[Vec<f32>], classes: &[String], ks: &[usize]) -> Result<ClassificationReport, String> {
    let n = classes.len();
    if y_true.len() != scores.len() {
        return Err(format!("{} labels but {} score rows", y_true.len(), scores.len()));
    }
    if y_true.is_empty() {
        return Err("no samples to evaluate".into());
    }
    let mut confusion = vec![vec![0u64; n]; n];
    let mut topk_hits = vec![0u64; ks.len()];
    for (t, s) in y_true.iter().zip(scores) {
        let t = *t as usize;
        if t >= n || s.len() != n {
            return Err(format!("label {t} or a score row of length {} does not fit {n} classes", s.len()));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|a, b| s[*b].total_cmp(&s[*a]).then(a.cmp(b)));
        confusion[t][order[0]] += 1;
        let rank = order.iter().position(|c| *c == t).unwrap_or(n);
        for (i, k) in ks.iter().enumerate() {
            if rank < *k {
                topk_hits[i] += 1;
            }
        }
    }
    let total = y_true.len() as u64;
    let correct: u64 = (0..n).map(|c| confusion[c][c]).sum();
    let mut per_class = Vec::with_capacity(n);
    for c in 0..n {
        let tp = confusion[c][c] as f64;
        let support: u64 = confusion[c].iter().sum();
        let predicted: u64 = (0..n).map(|r| confusion[r][c]).sum();
        let precision = if predicted == 0 { 0.0 } else { tp / predicted as f64 };
        let recall = if support == 0 { 0.0 } else { tp / support as f64 };
        let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        per_class.push(ClassStats { class: classes[c].clone(), precision, recall, f1, support });
    }
    let mean = |f: &dyn Fn(&ClassStats) -> f64| per_class.iter().map(f).sum::<f64>() / n as f64;
    let wmean = |f: &dyn Fn(&ClassStats) -> f64| per_class.iter().map(|s| f(s) * s.support as f64).sum::<f64>() / total as f64;
    Ok(ClassificationReport {
        samples: total,
        accuracy: correct as f64 / total as f64,
        top_k: ks.iter().zip(&topk_hits).map(|(k, h)| (*k, *h as f64 / total as f64)).collect(),
        macro_avg: Averages { precision: mean(&|s| s.precision), recall: mean(&|s| s.recall), f1: mean(&|s| s.f1) },
        weighted_avg: Averages { precision: wmean(&|s| s.precision), recall: wmean(&|s| s.recall), f1: wmean(&|s| s.f1) },
        per_class,
        confusion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_example_by_hand() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // true: a a b c ; predicted: a b b a ; class c never predicted.
        let scores = vec![vec![0.9, 0.1, 0.0], vec![0.2, 0.7, 0.1], vec![0.1, 0.8, 0.1], vec![0.5, 0.2, 0.3]];
        let r = classification_report(&[0, 0, 1, 2], &scores, &classes, &[1, 2]).unwrap();
        assert_eq!(r.accuracy, 0.5);
        assert_eq!(r.confusion, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]);
        assert_eq!(r.per_class[0].precision, 0.5);
        assert_eq!(r.per_class[0].recall, 0.5);
        assert_eq!(r.per_class[2].precision, 0.0);
        assert_eq!(r.top_k[1], (2, 1.0), "c is second for the last sample, a second for the second");
    }
}
