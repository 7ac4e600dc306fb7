//! The stage key: a versioned, readable fingerprint struct hashed with blake3.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::Digest;
use crate::value::PVal;

/// Bump to invalidate every cached result (a change in how keys are computed).
pub const SCHEMA: u32 = 1;

/// Everything that determines a stage's results, and nothing else: no paths, GPU ids or
/// log levels. Maps are sorted, so the order of keys in the pipeline file never matters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub schema: u32,
    pub kind: String,
    pub kind_version: u32,
    pub seed: i64,
    /// Parameters after defaults were filled in.
    pub params: BTreeMap<String, PVal>,
    /// Input label -> digest of the file, folder or artifact it names.
    pub inputs: BTreeMap<String, Digest>,
}

impl Fingerprint {
    /// The canonical encoding: compact JSON of the struct (sorted maps, fixed field order).
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("fingerprint serialises")
    }

    /// The stage key: 64 hex digits.
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"taoflow-stage-key\0");
        h.update(&self.canonical());
        h.finalize().to_hex().to_string()
    }

    /// Why `self` (new) differs from `old`, as readable lines (`params.n: 10 → 20`).
    pub fn diff(&self, old: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.schema != old.schema {
            out.push(format!("taoflow's key schema changed: {} → {}", old.schema, self.schema));
        }
        if self.kind != old.kind {
            out.push(format!("kind changed: {} → {}", old.kind, self.kind));
        } else if self.kind_version != old.kind_version {
            out.push(format!("implementation of `{}` changed: v{} → v{}", self.kind, old.kind_version, self.kind_version));
        }
        if self.seed != old.seed {
            out.push(format!("pipeline seed changed: {} → {}", old.seed, self.seed));
        }
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        PVal::Table(old.params.clone()).flatten("", &mut a);
        PVal::Table(self.params.clone()).flatten("", &mut b);
        for (k, v) in &b {
            match a.get(k) {
                None => out.push(format!("parameter {k} added: {v}")),
                Some(o) if o != v => out.push(format!("parameter {k} changed: {o} → {v}")),
                _ => {}
            }
        }
        for (k, v) in &a {
            if !b.contains_key(k) {
                out.push(format!("parameter {k} removed (was {v})"));
            }
        }
        for (k, v) in &self.inputs {
            match old.inputs.get(k) {
                None => out.push(format!("input `{k}` added")),
                Some(o) if o != v => out.push(format!("input `{k}` changed: {} → {}", crate::hash::short(o), crate::hash::short(v))),
                _ => {}
            }
        }
        for k in old.inputs.keys() {
            if !self.inputs.contains_key(k) {
                out.push(format!("input `{k}` removed"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Float;

    fn fixed() -> Fingerprint {
        let mut params = BTreeMap::new();
        params.insert("cmd".into(), PVal::Str("python train.py --lr ${lr}".into()));
        params.insert(
            "params".into(),
            PVal::Table([("lr".to_string(), PVal::Float(Float(0.02))), ("epochs".to_string(), PVal::Int(3))].into()),
        );
        params.insert("outs".into(), PVal::Table([("model".to_string(), PVal::Str("model.bin".into()))].into()));
        let mut inputs = BTreeMap::new();
        inputs.insert("data/".into(), format!("d:{}", "ab".repeat(32)));
        Fingerprint { schema: SCHEMA, kind: "exec".into(), kind_version: 1, seed: 42, params, inputs }
    }

    /// Golden hash: this key must never change by accident. If you changed the key on
    /// purpose (new schema), bump `SCHEMA` and update the constant.
    #[test]
    fn golden_key() {
        assert_eq!(fixed().key(), "cd5706d8082da32700f1717133383faaad0211c9c3e8c6047abde027f3dab762");
    }

    #[test]
    fn canonical_encoding_is_pinned() {
        let c = String::from_utf8(fixed().canonical()).unwrap();
        assert_eq!(
            c,
            r#"{"schema":1,"kind":"exec","kind_version":1,"seed":42,"params":{"cmd":"python train.py --lr ${lr}","outs":{"model":"model.bin"},"params":{"epochs":3,"lr":{"$float":"0.02"}}},"inputs":{"data/":"d:abababababababababababababababababababababababababababababababab"}}"#
        );
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = fixed().key();
        let mut f = fixed();
        f.seed = 43;
        assert_ne!(f.key(), base);
        let mut f = fixed();
        f.kind_version = 2;
        assert_ne!(f.key(), base);
        let mut f = fixed();
        f.inputs.insert("data/".into(), format!("d:{}", "cd".repeat(32)));
        assert_ne!(f.key(), base);
        let mut f = fixed();
        f.params.insert("params".into(), PVal::Table([("lr".to_string(), PVal::Float(Float(0.03)))].into()));
        assert_ne!(f.key(), base);
        // 1 and 1.0 are different parameters.
        let mut a = fixed();
        a.params.insert("x".into(), PVal::Int(1));
        let mut b = fixed();
        b.params.insert("x".into(), PVal::Float(Float(1.0)));
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn diff_names_changes() {
        let old = fixed();
        let mut new = fixed();
        new.params.insert("params".into(), PVal::Table([("lr".to_string(), PVal::Float(Float(0.05))), ("epochs".to_string(), PVal::Int(3))].into()));
        let d = new.diff(&old);
        assert_eq!(d, vec!["parameter params.lr changed: 0.02 → 0.05".to_string()]);
    }
}
