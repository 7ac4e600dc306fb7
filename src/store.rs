//! The store (`cache/` by default): content-addressed objects, the action cache from stage
//! key to manifest, per-key locks, logs and the local stat cache.
//!
//! ```text
//! cache/
//!   CACHEDIR.TAG  .gitignore
//!   cas-v1/objects/ab/cdef…   blobs named by blake3, read-only, verified when read
//!   ac-v1/ab/cdef….json       stage key -> manifest
//!   locks/                    one lock file per running stage key (flock)
//!   roots/                    lock files that use this store (for gc)
//!   logs/PIPELINE/STAGE.log   the last log of each stage
//!   tmp/                      temp files; renamed into place when complete
//!   local/HOST/statcache/     (path, size, mtime, inode) -> hash, per machine
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fingerprint::Fingerprint;
use crate::hash::{hash_path, Digest, Hashed, StatCache, Tree};

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by taoflow.\n# For information about cache directory tags see https://bford.info/cachedir/\n";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} is missing from the store")]
    Missing(String),
    #[error("object {hash} in the store is corrupt (its content hashes to {actual}); it was removed")]
    Corrupt { hash: String, actual: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io<T>(r: std::io::Result<T>, ctx: impl FnOnce() -> String) -> Result<T, StoreError> {
    r.map_err(|source| StoreError::Io { context: ctx(), source })
}

/// Write `bytes` to `path` atomically: a temp file beside it, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Copy `src` to `dst`, returning the blake3 (hex) of what was copied.
fn copy_hashing(src: &mut File, dst: &mut impl Write, src_name: &Path, dst_name: &Path) -> Result<String, StoreError> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = io(src.read(&mut buf), || format!("cannot read `{}`", src_name.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        io(dst.write_all(&buf[..n]), || format!("cannot write `{}`", dst_name.display()))?;
    }
    Ok(h.finalize().to_hex().to_string())
}

/// One output of a stage as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Workspace path, relative to the pipeline's folder.
    pub path: String,
    pub digest: Digest,
    pub size: u64,
    pub files: usize,
}

/// Where and how a result was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    pub host: String,
    pub device: String,
    pub started_unix: u64,
    pub duration_s: f64,
    pub taoflow_version: String,
    pub os: String,
}

/// The action-cache entry for a stage key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub v: u32,
    pub key: String,
    pub stage: String,
    pub pipeline: String,
    pub fingerprint: Fingerprint,
    pub outputs: BTreeMap<String, OutputRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    pub provenance: Provenance,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// A held per-key lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

impl Store {
    /// Open (and create if needed) a store at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for d in ["cas-v1/objects", "ac-v1", "locks", "roots", "logs", "tmp", "local"] {
            io(fs::create_dir_all(root.join(d)), || format!("cannot create the store at `{}`", root.display()))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            io(write_atomic(&tag, CACHEDIR_TAG.as_bytes()), || "cannot write CACHEDIR.TAG".into())?;
        }
        let gi = root.join(".gitignore");
        if !gi.exists() {
            io(write_atomic(&gi, b"# taoflow's store: content is not meant for git\n*\n!.gitignore\n!CACHEDIR.TAG\n"), || "cannot write .gitignore".into())?;
        }
        let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(Store { root })
    }

    pub fn object_path(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(2.min(hash.len()));
        self.root.join("cas-v1/objects").join(a).join(b)
    }

    fn manifest_path(&self, key: &str) -> PathBuf {
        let (a, b) = key.split_at(2.min(key.len()));
        self.root.join("ac-v1").join(a).join(format!("{b}.json"))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn log_path(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root.join("logs").join(pipeline).join(format!("{stage}.log"))
    }

    pub fn stat_cache_path(&self) -> PathBuf {
        let host = hostname::get().map(|h| h.to_string_lossy().to_string()).unwrap_or_else(|_| "localhost".into());
        self.root.join("local").join(host).join("statcache")
    }

    pub fn has_object(&self, hash: &str) -> bool {
        self.object_path(hash).is_file()
    }

    /// Copy a file into the store under its blake3 (computed while copying). Returns the hash.
    pub fn put_file(&self, src: &Path) -> Result<String, StoreError> {
        let mut f = io(File::open(src), || format!("cannot read `{}`", src.display()))?;
        let mut tmp = io(tempfile::Builder::new().prefix("obj-").tempfile_in(self.tmp_dir()), || "cannot create a temp file in the store".into())?;
        let hash = copy_hashing(&mut f, &mut tmp, src, &self.tmp_dir())?;
        self.commit_tmp(tmp, &hash)?;
        Ok(hash)
    }

    /// Put bytes into the store. Returns their hash.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if self.has_object(&hash) {
            return Ok(hash);
        }
        let mut tmp = io(tempfile::Builder::new().prefix("obj-").tempfile_in(self.tmp_dir()), || "cannot create a temp file in the store".into())?;
        io(tmp.write_all(bytes), || "cannot write to the store".into())?;
        self.commit_tmp(tmp, &hash)?;
        Ok(hash)
    }

    fn commit_tmp(&self, tmp: tempfile::NamedTempFile, hash: &str) -> Result<(), StoreError> {
        let dest = self.object_path(hash);
        if dest.is_file() {
            return Ok(());
        }
        io(tmp.as_file().sync_data(), || "cannot sync a store object".into())?;
        let _ = tmp.as_file().set_permissions(fs::Permissions::from_mode(0o444));
        if let Some(parent) = dest.parent() {
            io(fs::create_dir_all(parent), || format!("cannot create `{}`", parent.display()))?;
        }
        io(tmp.persist(&dest).map_err(|e| e.error), || format!("cannot move an object into `{}`", dest.display()))?;
        Ok(())
    }

    /// Read an object and check its hash. A corrupt object is removed.
    pub fn read_verified(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.object_path(hash);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::Missing(hash.to_string())),
            Err(e) => return Err(StoreError::Io { context: format!("cannot read `{}`", p.display()), source: e }),
        };
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != hash {
            let _ = fs::remove_file(&p);
            return Err(StoreError::Corrupt { hash: hash.to_string(), actual });
        }
        Ok(bytes)
    }

    /// Put object `hash` at `dest`: a hard link when `link` (the object is verified first;
    /// a copy when linking is impossible), else a verified copy (atomically).
    fn object_to(&self, hash: &str, dest: &Path, exec: bool, link: bool) -> Result<(), StoreError> {
        if link {
            let src = self.object_path(hash);
            let actual = match crate::hash::hash_file(&src, fs::metadata(&src).map(|m| m.len()).unwrap_or(0)) {
                Ok(h) => h,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::Missing(hash.to_string())),
                Err(e) => return Err(StoreError::Io { context: format!("cannot read `{}`", src.display()), source: e }),
            };
            if actual != hash {
                let _ = fs::remove_file(&src);
                return Err(StoreError::Corrupt { hash: hash.to_string(), actual });
            }
            if let Some(dir) = dest.parent() {
                io(fs::create_dir_all(dir), || format!("cannot create `{}`", dir.display()))?;
            }
            let _ = fs::remove_file(dest);
            if fs::hard_link(&src, dest).is_ok() {
                return Ok(());
            }
        }
        self.copy_object_to(hash, dest, exec)
    }

    /// Copy object `hash` to `dest` (atomically), verifying it on the way.
    fn copy_object_to(&self, hash: &str, dest: &Path, exec: bool) -> Result<(), StoreError> {
        let src = self.object_path(hash);
        let mut f = match File::open(&src) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::Missing(hash.to_string())),
            Err(e) => return Err(StoreError::Io { context: format!("cannot read `{}`", src.display()), source: e }),
        };
        let dir = dest.parent().unwrap_or(Path::new("."));
        io(fs::create_dir_all(dir), || format!("cannot create `{}`", dir.display()))?;
        let mut tmp = io(tempfile::Builder::new().prefix(".taoflow-").tempfile_in(dir), || format!("cannot write in `{}`", dir.display()))?;
        let actual = copy_hashing(&mut f, &mut tmp, &src, dest)?;
        if actual != hash {
            let _ = fs::remove_file(&src);
            return Err(StoreError::Corrupt { hash: hash.to_string(), actual });
        }
        let mode = if exec { 0o755 } else { 0o644 };
        let _ = tmp.as_file().set_permissions(fs::Permissions::from_mode(mode));
        io(tmp.persist(dest).map_err(|e| e.error), || format!("cannot write `{}`", dest.display()))?;
        Ok(())
    }

    /// Store a file under its known hash: by hard link when `link` (the file becomes the
    /// read-only object), else by copy.
    fn put_known(&self, p: &Path, hash: &str, link: bool) -> Result<(), StoreError> {
        if link {
            let dest = self.object_path(hash);
            if let Some(parent) = dest.parent() {
                io(fs::create_dir_all(parent), || format!("cannot create `{}`", parent.display()))?;
            }
            match fs::hard_link(p, &dest) {
                Ok(()) => {
                    let _ = fs::set_permissions(&dest, fs::Permissions::from_mode(0o444));
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
                Err(_) => {} // another file system: copy
            }
        }
        let got = self.put_file(p)?;
        if got != hash {
            return Err(StoreError::Io { context: format!("`{}` changed while it was being stored", p.display()), source: std::io::Error::other("content changed") });
        }
        Ok(())
    }

    /// Hash `path` and put its files into the store (copies, or hard links when `link`).
    /// Returns what was stored.
    pub fn ingest(&self, path: &Path, cache: &StatCache, link: bool) -> Result<Hashed, StoreError> {
        let hashed = io(hash_path(path, cache), || format!("cannot hash `{}`", path.display()))?;
        match &hashed {
            Hashed::File { hash, .. } => {
                if !self.has_object(hash) {
                    self.put_known(path, hash, link)?;
                }
            }
            Hashed::Dir(tree) => {
                use rayon::prelude::*;
                tree.entries.par_iter().try_for_each(|e| -> Result<(), StoreError> {
                    if self.has_object(&e.hash) {
                        return Ok(());
                    }
                    self.put_known(&path.join(&e.path), &e.hash, link)
                })?;
                self.put_bytes(&tree.bytes())?;
            }
        }
        Ok(hashed)
    }

    /// The tree of a folder artifact, verified.
    pub fn tree(&self, digest: &str) -> Result<Tree, StoreError> {
        let hash = digest.strip_prefix("d:").unwrap_or(digest);
        let bytes = self.read_verified(hash)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Io { context: format!("tree object {hash} is not valid"), source: std::io::Error::other(e) })
    }

    /// Does the store hold every object of this artifact? (Existence only; content is
    /// verified when it is read.)
    pub fn artifact_present(&self, digest: &str) -> bool {
        if let Some(h) = digest.strip_prefix("f:") {
            return self.has_object(h);
        }
        match self.tree(digest) {
            Ok(t) => t.entries.iter().all(|e| self.has_object(&e.hash)),
            Err(_) => false,
        }
    }

    /// Every object hash an artifact reaches (for gc).
    pub fn artifact_objects(&self, digest: &str, out: &mut std::collections::HashSet<String>) {
        if let Some(h) = digest.strip_prefix("f:") {
            out.insert(h.to_string());
        } else if let Some(h) = digest.strip_prefix("d:") {
            out.insert(h.to_string());
            if let Ok(t) = self.tree(digest) {
                for e in t.entries {
                    out.insert(e.hash);
                }
            }
        }
    }

    /// Recreate an artifact at `dest` from the store, replacing what is there. A folder is
    /// built beside `dest` and swapped in, so a failure leaves no half-made folder.
    pub fn materialize(&self, digest: &str, dest: &Path, cache: &StatCache, link: bool) -> Result<(), StoreError> {
        if let Some(h) = digest.strip_prefix("f:") {
            if dest.is_dir() {
                io(fs::remove_dir_all(dest), || format!("cannot remove `{}`", dest.display()))?;
            }
            self.object_to(h, dest, false, link)?;
            cache.remember(dest, h);
            return Ok(());
        }
        let tree = self.tree(digest)?;
        let parent = dest.parent().unwrap_or(Path::new("."));
        io(fs::create_dir_all(parent), || format!("cannot create `{}`", parent.display()))?;
        let staging = io(tempfile::Builder::new().prefix(".taoflow-").tempdir_in(parent), || format!("cannot write in `{}`", parent.display()))?;
        {
            use rayon::prelude::*;
            tree.entries.par_iter().try_for_each(|e| self.object_to(&e.hash, &staging.path().join(&e.path), e.exec, link))?;
        }
        crate::stages::exec::remove_path(dest).map_err(|e| StoreError::Io { context: format!("cannot replace `{}`", dest.display()), source: e })?;
        let staged = staging.keep();
        io(fs::rename(&staged, dest), || format!("cannot move the restored folder to `{}`", dest.display()))?;
        let _ = fs::set_permissions(dest, fs::Permissions::from_mode(0o755));
        for e in &tree.entries {
            cache.remember(&dest.join(&e.path), &e.hash);
        }
        Ok(())
    }

    pub fn get_manifest(&self, key: &str) -> Option<Manifest> {
        let p = self.manifest_path(key);
        let bytes = fs::read(&p).ok()?;
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) if m.key == key => Some(m),
            _ => {
                tracing::warn!("ignoring damaged manifest {}", p.display());
                None
            }
        }
    }

    pub fn put_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let p = self.manifest_path(&m.key);
        let bytes = serde_json::to_vec_pretty(m).expect("manifest serialises");
        io(write_atomic(&p, &bytes), || format!("cannot write manifest `{}`", p.display()))
    }

    /// Try to take the lock of a stage key without waiting.
    pub fn try_lock_key(&self, key: &str) -> Result<Option<KeyLock>, StoreError> {
        let p = self.root.join("locks").join(format!("{key}.lock"));
        let f = io(File::options().create(true).truncate(false).write(true).open(&p), || format!("cannot open lock `{}`", p.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            Ok(Some(KeyLock { _file: f }))
        } else {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(StoreError::Io { context: format!("cannot lock `{}`", p.display()), source: e })
            }
        }
    }

    /// Blocking lock on an arbitrary name (used for read-modify-write of lock files).
    pub fn lock_name(&self, name: &str) -> Result<KeyLock, StoreError> {
        let p = self.root.join("locks").join(format!("{name}.lock"));
        let f = io(File::options().create(true).truncate(false).write(true).open(&p), || format!("cannot open lock `{}`", p.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        if r != 0 {
            return Err(StoreError::Io { context: format!("cannot lock `{}`", p.display()), source: std::io::Error::last_os_error() });
        }
        Ok(KeyLock { _file: f })
    }

    /// Remember that `lock_file` uses this store, so that `gc` keeps what it references.
    pub fn register_root(&self, lock_file: &Path) {
        let abs = fs::canonicalize(lock_file).unwrap_or_else(|_| lock_file.to_path_buf());
        let name = blake3::hash(abs.to_string_lossy().as_bytes()).to_hex();
        let p = self.root.join("roots").join(&name[..32]);
        if fs::read_to_string(&p).ok().as_deref() != Some(&abs.to_string_lossy()) {
            let _ = write_atomic(&p, abs.to_string_lossy().as_bytes());
        }
    }

    /// All registered lock files (dropping those that no longer exist).
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.root.join("roots")) {
            for e in rd.flatten() {
                if let Ok(s) = fs::read_to_string(e.path()) {
                    let p = PathBuf::from(s.trim());
                    if p.exists() {
                        out.push(p);
                    } else {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Every manifest in the action cache: (path, key, modified time).
    pub fn manifests(&self) -> Vec<(PathBuf, String, std::time::SystemTime)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join("ac-v1")) else { return out };
        for shard in rd.flatten() {
            let prefix = shard.file_name().to_string_lossy().to_string();
            let Ok(rd2) = fs::read_dir(shard.path()) else { continue };
            for e in rd2.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(rest) = name.strip_suffix(".json") {
                    let mtime = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                    out.push((e.path(), format!("{prefix}{rest}"), mtime));
                }
            }
        }
        out
    }

    /// Every object in the CAS: (path, hash, size).
    pub fn objects(&self) -> Vec<(PathBuf, String, u64)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join("cas-v1/objects")) else { return out };
        for shard in rd.flatten() {
            let prefix = shard.file_name().to_string_lossy().to_string();
            let Ok(rd2) = fs::read_dir(shard.path()) else { continue };
            for e in rd2.flatten() {
                let size = e.metadata().map(|m| std::os::unix::fs::MetadataExt::size(&m)).unwrap_or(0);
                out.push((e.path(), format!("{prefix}{}", e.file_name().to_string_lossy()), size));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_materialize_roundtrip_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        assert!(d.path().join("store/CACHEDIR.TAG").exists());
        let ws = d.path().join("ws");
        fs::create_dir_all(ws.join("out/sub")).unwrap();
        fs::write(ws.join("out/a.txt"), "A").unwrap();
        fs::write(ws.join("out/sub/b.txt"), "B").unwrap();
        let c = StatCache::in_memory();
        let h = s.ingest(&ws.join("out"), &c, false).unwrap();
        let digest = h.digest();
        assert!(s.artifact_present(&digest));
        fs::remove_dir_all(ws.join("out")).unwrap();
        s.materialize(&digest, &ws.join("out"), &c, false).unwrap();
        assert_eq!(fs::read_to_string(ws.join("out/sub/b.txt")).unwrap(), "B");
        // Corrupt one object: restoring fails cleanly and the object is gone.
        let t = s.tree(&digest).unwrap();
        let obj = s.object_path(&t.entries[0].hash);
        fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&obj, "garbage").unwrap();
        fs::remove_dir_all(ws.join("out")).unwrap();
        let e = s.materialize(&digest, &ws.join("out"), &c, false).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(!ws.join("out").exists(), "no half-made folder");
        assert!(!s.artifact_present(&digest));
    }

    #[test]
    fn key_lock_excludes() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let a = s.try_lock_key("k").unwrap();
        assert!(a.is_some());
        // flock locks belong to the open file description: a second open conflicts.
        assert!(s.try_lock_key("k").unwrap().is_none());
        drop(a);
        assert!(s.try_lock_key("k").unwrap().is_some());
    }
}
