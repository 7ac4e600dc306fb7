//! Per-class settings in a pipeline: the keys of a table apply to every class, and a
//! sub-table named after a class overrides them for that class —
//!
//! ```toml
//! [stages.train.targets]          # every class
//! cov_radius_x = 0.4
//! [stages.train.targets.pedestrian]
//! cov_radius_x = 0.3              # pedestrians only
//! ```
//!
//! Keys and types are checked when the pipeline is read (against the settings' struct);
//! class names when the stage runs, against the dataset's or the model's classes.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Fields;
use crate::diag::Diag;
use crate::value::{Node, V};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerClass {
    pub all: serde_json::Map<String, serde_json::Value>,
    pub classes: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

fn json(n: &Node) -> serde_json::Value {
    match &n.v {
        V::Str(s) | V::Datetime(s) => serde_json::Value::String(s.clone()),
        V::Int(i) => serde_json::Value::from(*i),
        V::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null),
        V::Bool(b) => serde_json::Value::Bool(*b),
        V::Array(a) => serde_json::Value::Array(a.iter().map(json).collect()),
        V::Table(t) => serde_json::Value::Object(t.entries.iter().map(|(k, v)| (k.name.clone(), json(v))).collect()),
    }
}

fn build<T: Default + Serialize + DeserializeOwned>(layers: &[&serde_json::Map<String, serde_json::Value>]) -> Result<T, String> {
    let mut v = serde_json::to_value(T::default()).map_err(|e| e.to_string())?;
    if let serde_json::Value::Object(o) = &mut v {
        for l in layers {
            for (k, x) in l.iter() {
                o.insert(k.clone(), x.clone());
            }
        }
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Read table `key` of a stage as per-class settings of type `T`; problems go to `f.diags`.
pub fn parse<T: Default + Serialize + DeserializeOwned>(f: &mut Fields<'_>, key: &str, stage: &str, check: &dyn Fn(&T) -> Result<(), String>) -> PerClass {
    let mut out = PerClass::default();
    let Some(t) = f.table(key) else { return out };
    let mut diags = Vec::new();
    for (k, n) in &t.entries {
        match &n.v {
            V::Table(sub) => {
                let mut m = serde_json::Map::new();
                for (sk, sn) in &sub.entries {
                    m.insert(sk.name.clone(), json(sn));
                    if let Err(e) = build::<T>(&[&std::iter::once((sk.name.clone(), json(sn))).collect()]).and_then(|v| check(&v)) {
                        diags.push(Diag::error(format!("`{}` in [stages.{stage}.{key}.{}]: {e}", sk.name, k.name)).at(&sk.span, "here"));
                    }
                }
                out.classes.insert(k.name.clone(), m);
            }
            _ => {
                let one: serde_json::Map<String, serde_json::Value> = std::iter::once((k.name.clone(), json(n))).collect();
                if let Err(e) = build::<T>(&[&one]).and_then(|v| check(&v)) {
                    diags.push(Diag::error(format!("`{}` in [stages.{stage}.{key}]: {e}", k.name)).at(&k.span, "here"));
                }
                out.all.insert(k.name.clone(), json(n));
            }
        }
    }
    for d in diags {
        f.diags.push(d);
    }
    out
}

impl PerClass {
    /// One `T` per class of `classes`, in order: defaults, then the shared keys, then the
    /// class's own. A sub-table naming no class is an error.
    pub fn resolve<T: Default + Serialize + DeserializeOwned>(&self, classes: &[String], what: &str) -> Result<Vec<T>, String> {
        for name in self.classes.keys() {
            if !classes.contains(name) {
                let hint = match crate::diag::did_you_mean(name, classes.iter().map(|s| s.as_str())) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the classes are {}", classes.join(", ")),
                };
                return Err(format!("`{what}.{name}` names no class of the dataset\n  = hint: {hint}"));
            }
        }
        let empty = serde_json::Map::new();
        classes.iter().map(|c| build::<T>(&[&self.all, self.classes.get(c).unwrap_or(&empty)]).map_err(|e| format!("`{what}.{c}`: {e}"))).collect()
    }

    /// One `T` per class: `base` (the model's own settings), then the shared keys, then the
    /// class's own.
    pub fn resolve_over<T: Default + Serialize + DeserializeOwned>(&self, base: &[T], classes: &[String], what: &str) -> Result<Vec<T>, String> {
        let mut merged = PerClass { all: serde_json::Map::new(), classes: BTreeMap::new() };
        for (c, b) in classes.iter().zip(base) {
            let mut m = match serde_json::to_value(b).map_err(|e| e.to_string())? {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            m.extend(self.all.clone());
            m.extend(self.classes.get(c).cloned().unwrap_or_default());
            merged.classes.insert(c.clone(), m);
        }
        for c in self.classes.keys().filter(|c| !classes.contains(c)) {
            merged.classes.insert(c.clone(), serde_json::Map::new());
        }
        merged.resolve(classes, what)
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.classes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::detection::postprocess::{ClusterConfig, Clustering};

    #[test]
    fn shared_keys_then_class_overrides() {
        let mut p = PerClass::default();
        p.all.insert("dbscan_eps".into(), serde_json::json!(0.3));
        p.classes.insert("b".into(), [("algorithm".to_string(), serde_json::json!("nms")), ("dbscan_eps".to_string(), serde_json::json!(0.1))].into_iter().collect());
        let v: Vec<ClusterConfig> = p.resolve(&["a".into(), "b".into()], "postprocess").unwrap();
        assert_eq!((v[0].dbscan_eps, v[0].algorithm), (0.3, Clustering::Dbscan));
        assert_eq!((v[1].dbscan_eps, v[1].algorithm), (0.1, Clustering::Nms));
        assert_eq!(v[0].coverage_threshold, ClusterConfig::default().coverage_threshold);
        let e = p.resolve::<ClusterConfig>(&["a".into(), "c".into()], "postprocess").unwrap_err();
        assert!(e.contains("`postprocess.b` names no class"), "{e}");
        // over a model's own settings: its values stay where the stage says nothing
        let base = vec![ClusterConfig { coverage_threshold: 0.3, ..Default::default() }, ClusterConfig { minimum_bounding_box_height: 9.0, ..Default::default() }];
        let v: Vec<ClusterConfig> = p.resolve_over(&base, &["a".into(), "b".into()], "postprocess").unwrap();
        assert_eq!((v[0].coverage_threshold, v[0].dbscan_eps), (0.3, 0.3));
        assert_eq!((v[1].minimum_bounding_box_height, v[1].dbscan_eps, v[1].algorithm), (9.0, 0.1, Clustering::Nms));
        assert!(p.resolve_over(&base, &["a".into(), "c".into()], "postprocess").is_err());
    }
}
