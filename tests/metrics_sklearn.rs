//! Our classification metrics equal scikit-learn's on the same predictions.
//! `scripts/test.sh` installs scikit-learn; TAOFLOW_REQUIRE_PYTHON=1 makes its absence a failure.

use taoflow::data::rng::Rng;
use taoflow::metrics::classification_report;

#[test]
fn metrics_match_scikit_learn() {
    let have = std::process::Command::new("python3").args(["-c", "import sklearn"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !have {
        assert!(std::env::var_os("TAOFLOW_REQUIRE_PYTHON").is_none(), "scikit-learn is required (scripts/test.sh installs it)");
        eprintln!("skipping: python3 -c 'import sklearn' failed");
        return;
    }
    let n = 7;
    let classes: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut r = Rng::new(3);
    let mut y = Vec::new();
    let mut scores = Vec::new();
    for _ in 0..500 {
        // Class 6 never occurs as a label; class 5 is never predicted (score pushed down).
        let t = r.below(6) as u32;
        let mut s: Vec<f32> = (0..n).map(|_| r.f64() as f32).collect();
        if r.f64() < 0.6 {
            s[t as usize] += 0.8;
        }
        s[5] -= 2.0;
        y.push(t);
        scores.push(s);
    }
    let ours = classification_report(&y, &scores, &classes, &[1, 3]).unwrap();
    let input = serde_json::json!({"y": y, "scores": scores});
    let script = r#"
import json, sys
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score
d = json.load(sys.stdin)
y = np.array(d["y"]); s = np.array(d["scores"], dtype=np.float64); labels = list(range(s.shape[1]))
pred = s.argmax(1)
p, r, f, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
out = {"accuracy": accuracy_score(y, pred), "top3": top_k_accuracy_score(y, s, k=3, labels=labels),
       "p": p.tolist(), "r": r.tolist(), "f": f.tolist(), "support": sup.tolist(),
       "confusion": confusion_matrix(y, pred, labels=labels).tolist()}
for avg in ("macro", "weighted"):
    out[avg] = list(precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)[:3])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.to_string().as_bytes()).unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sk: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let close = |a: f64, b: &serde_json::Value, what: &str| assert!((a - b.as_f64().unwrap()).abs() < 1e-12, "{what}: ours {a}, sklearn {b}");
    close(ours.accuracy, &sk["accuracy"], "accuracy");
    close(ours.top_k[1].1, &sk["top3"], "top-3");
    for (c, st) in ours.per_class.iter().enumerate() {
        close(st.precision, &sk["p"][c], "precision");
        close(st.recall, &sk["r"][c], "recall");
        close(st.f1, &sk["f"][c], "f1");
        assert_eq!(st.support, sk["support"][c].as_u64().unwrap());
    }
    for (avg, a) in [("macro", &ours.macro_avg), ("weighted", &ours.weighted_avg)] {
        close(a.precision, &sk[avg][0], avg);
        close(a.recall, &sk[avg][1], avg);
        close(a.f1, &sk[avg][2], avg);
    }
    assert_eq!(serde_json::json!(ours.confusion), sk["confusion"]);
    assert_eq!(ours.per_class[5].precision, 0.0, "never predicted");
    assert_eq!(ours.per_class[6].support, 0, "never a label");
}
