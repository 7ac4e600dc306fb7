//! The lock file beside a pipeline (`x.toml` -> `x.lock`): JSON in a stable order, meant
//! for git. It records, for each stage, its key, the fingerprint that made it and the
//! digests of its outputs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;
use crate::store::OutputRecord;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    pub pipeline: String,
    pub stages: BTreeMap<String, LockStage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockStage {
    pub key: String,
    pub fingerprint: Fingerprint,
    pub outs: BTreeMap<String, OutputRecord>,
}

impl LockFile {
    /// Read a lock file; a missing one is empty. A damaged one is reported and ignored.
    pub fn read(path: &Path) -> LockFile {
        match std::fs::read(path) {
            Ok(b) => match serde_json::from_slice::<LockFile>(&b) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("ignoring damaged lock file {}: {e}", path.display());
                    LockFile::default()
                }
            },
            Err(_) => LockFile::default(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).expect("lock file serialises");
        b.push(b'\n');
        b
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if std::fs::read(path).ok().as_deref() == Some(&self.to_bytes()[..]) {
            return Ok(());
        }
        crate::store::write_atomic(path, &self.to_bytes())
    }
}
