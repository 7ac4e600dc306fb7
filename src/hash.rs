//! Hashing of files and folders (blake3), Merkle digests of trees, and the stat cache
//! that lets a no-op run skip reading unchanged files.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Files this big are hashed with several threads.
const BIG_FILE: u64 = 16 << 20;

/// Digest of an artifact: `f:<hex>` for a file (blake3 of its bytes) or `d:<hex>` for a
/// folder (blake3 of its canonical tree listing).
pub type Digest = String;

pub fn short(d: &str) -> &str {
    let s = d.split_once(':').map(|(_, h)| h).unwrap_or(d);
    &s[..s.len().min(10)]
}

/// One file of a folder artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Relative path, `/`-separated.
    pub path: String,
    pub hash: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
}

/// The canonical listing of a folder: sorted entries. Its blake3 is the folder's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub v: u32,
    pub entries: Vec<TreeEntry>,
}

impl Tree {
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("tree serialises")
    }
    pub fn digest(&self) -> Digest {
        format!("d:{}", blake3::hash(&self.bytes()).to_hex())
    }
}

/// A hashed file or folder.
#[derive(Debug, Clone)]
pub enum Hashed {
    File { hash: String, size: u64, exec: bool },
    Dir(Tree),
}

impl Hashed {
    pub fn digest(&self) -> Digest {
        match self {
            Hashed::File { hash, .. } => format!("f:{hash}"),
            Hashed::Dir(t) => t.digest(),
        }
    }
    pub fn size(&self) -> u64 {
        match self {
            Hashed::File { size, .. } => *size,
            Hashed::Dir(t) => t.entries.iter().map(|e| e.size).sum(),
        }
    }
    pub fn file_count(&self) -> usize {
        match self {
            Hashed::File { .. } => 1,
            Hashed::Dir(t) => t.entries.len(),
        }
    }
}

/// blake3 of a file's bytes, using several threads for big files.
///
/// Plain `read` calls in large chunks, with sequential read-ahead advised: from a cold
/// page cache this streams faster than mmap's page faults.
pub fn hash_file(path: &Path, size: u64) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut h = blake3::Hasher::new();
    if size > 0 {
        let mut f = std::fs::File::open(path)?;
        // SAFETY: advisory call on a descriptor we own.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
        let chunk = if size >= BIG_FILE { 8 << 20 } else { (size as usize).clamp(64 << 10, 2 << 20) };
        let mut buf = vec![0u8; chunk];
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let n = f.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            if filled >= (1 << 20) && size >= BIG_FILE {
                h.update_rayon(&buf[..filled]);
            } else {
                h.update(&buf[..filled]);
            }
            if filled < buf.len() {
                break;
            }
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    ctime_ns: i64,
}

impl StatKey {
    fn of(m: &std::fs::Metadata) -> Self {
        StatKey {
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ino: m.ino(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// Remembers the hash of each file by (path, size, mtime, ctime, inode), so that an
/// unchanged file is never read twice. Saved as a text file, one entry a line.
#[derive(Debug, Default)]
pub struct StatCache {
    path: Option<PathBuf>,
    map: Mutex<HashMap<PathBuf, (StatKey, String)>>,
    dirty: std::sync::atomic::AtomicBool,
}

impl StatCache {
    pub fn in_memory() -> Self {
        StatCache::default()
    }

    /// Load the cache from `path` (a missing or damaged file is an empty cache).
    pub fn load(path: &Path) -> Self {
        let mut map = HashMap::new();
        if let Ok(f) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                let mut it = line.splitn(6, ' ');
                let (Some(h), Some(s), Some(m), Some(c), Some(i), Some(p)) = (it.next(), it.next(), it.next(), it.next(), it.next(), it.next()) else {
                    continue;
                };
                let (Ok(size), Ok(mtime_ns), Ok(ctime_ns), Ok(ino)) = (s.parse(), m.parse(), c.parse(), i.parse()) else { continue };
                if h.len() != 64 {
                    continue;
                }
                map.insert(PathBuf::from(p), (StatKey { size, mtime_ns, ino, ctime_ns }, h.to_string()));
            }
        }
        StatCache { path: Some(path.to_path_buf()), map: Mutex::new(map), dirty: Default::default() }
    }

    /// Write the cache back if it changed (atomically).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.dirty.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = Vec::with_capacity(map.len() * 128);
        for (p, (k, h)) in map.iter() {
            if p.exists() {
                let _ = writeln!(buf, "{h} {} {} {} {} {}", k.size, k.mtime_ns, k.ctime_ns, k.ino, p.display());
            }
        }
        drop(map);
        crate::store::write_atomic(path, &buf)
    }

    fn get(&self, path: &Path, key: StatKey) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(path).filter(|(k, _)| *k == key).map(|(_, h)| h.clone())
    }

    fn put(&self, path: PathBuf, key: StatKey, hash: String) {
        // A file changed within the last two seconds may change again within the same
        // mtime tick: do not trust its stat until it has settled.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        if now - key.mtime_ns.max(key.ctime_ns) < 2_000_000_000 {
            return;
        }
        self.map.lock().unwrap_or_else(|e| e.into_inner()).insert(path, (key, hash));
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hash a file, consulting the cache.
    pub fn hash_file(&self, path: &Path, meta: &std::fs::Metadata) -> std::io::Result<String> {
        let key = StatKey::of(meta);
        if let Some(h) = self.get(path, key) {
            return Ok(h);
        }
        let h = hash_file(path, meta.size())?;
        self.put(path.to_path_buf(), key, h.clone());
        Ok(h)
    }

    /// Record a hash computed elsewhere (e.g. while copying a file out of the store).
    pub fn remember(&self, path: &Path, hash: &str) {
        if let Ok(m) = std::fs::metadata(path) {
            self.put(path.to_path_buf(), StatKey::of(&m), hash.to_string());
        }
    }
}

/// Hash a file or a folder (recursively, files in parallel). Symlinks are followed.
pub fn hash_path(path: &Path, cache: &StatCache) -> std::io::Result<Hashed> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        let hash = cache.hash_file(path, &meta)?;
        return Ok(Hashed::File { hash, size: meta.size(), exec: meta.permissions().mode() & 0o111 != 0 });
    }
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!("`{}` is neither a file nor a folder", path.display())));
    }
    let mut files: Vec<(String, PathBuf, std::fs::Metadata)> = Vec::new();
    walk(path, "", &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let entries: Vec<TreeEntry> = files
        .par_iter()
        .map(|(rel, abs, m)| {
            let hash = cache.hash_file(abs, m)?;
            Ok(TreeEntry { path: rel.clone(), hash, size: m.size(), exec: m.permissions().mode() & 0o111 != 0 })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Hashed::Dir(Tree { v: 1, entries }))
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf, std::fs::Metadata)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return Err(std::io::Error::other(format!("file name is not UTF-8: {}", e.path().display())));
        };
        let rel = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
        let p = e.path();
        let mut m = e.metadata()?;
        if m.file_type().is_symlink() {
            m = std::fs::metadata(&p)?;
        }
        if m.is_dir() {
            walk(&p, &rel, out)?;
        } else if m.is_file() {
            out.push((rel, p, m));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_digest_ignores_creation_order_and_location() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("x/y")).unwrap();
        std::fs::write(a.path().join("x/y/1.txt"), "one").unwrap();
        std::fs::write(a.path().join("2.txt"), "two").unwrap();
        std::fs::write(b.path().join("2.txt"), "two").unwrap();
        std::fs::create_dir_all(b.path().join("x/y")).unwrap();
        std::fs::write(b.path().join("x/y/1.txt"), "one").unwrap();
        let c = StatCache::in_memory();
        let da = hash_path(a.path(), &c).unwrap().digest();
        let db = hash_path(b.path(), &c).unwrap().digest();
        assert_eq!(da, db);
        std::fs::write(b.path().join("x/y/1.txt"), "ONE").unwrap();
        assert_ne!(da, hash_path(b.path(), &StatCache::in_memory()).unwrap().digest());
    }

    #[test]
    fn file_digest_is_blake3() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let h = hash_path(&p, &StatCache::in_memory()).unwrap();
        assert_eq!(h.digest(), format!("f:{}", blake3::hash(b"hello").to_hex()));
    }

    #[test]
    fn stat_cache_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        // Make the file look settled.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        let cpath = d.path().join("cache");
        let c = StatCache::load(&cpath);
        let m = std::fs::metadata(&p).unwrap();
        let h = c.hash_file(&p, &m).unwrap();
        c.save().unwrap();
        let c2 = StatCache::load(&cpath);
        // ctime is "now" here, so the entry may be considered unsettled; both outcomes
        // must give the right hash.
        assert_eq!(c2.hash_file(&p, &m).unwrap(), h);
    }
}
