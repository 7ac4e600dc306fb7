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

type FileMap = HashMap<Vec<u8>, (StatKey, String)>;

/// Remembers the hash of each file by (path, size, mtime, ctime, inode), so that an
/// unchanged file is never read twice, and the digest of each folder by a summary of the
/// stats of all its files, so that an unchanged folder of 100k files costs 100k `stat`s
/// and nothing else. Saved as two text files, one entry a line; the per-file one is only
/// read when a folder or file is not known as a whole.
#[derive(Debug, Default)]
pub struct StatCache {
    dir: Option<PathBuf>,
    files: std::sync::OnceLock<FileMap>,
    new_files: Mutex<FileMap>,
    dirs: Mutex<HashMap<Vec<u8>, (String, Digest)>>,
    dirs_dirty: std::sync::atomic::AtomicBool,
}

fn path_key(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

fn settled(key: &StatKey) -> bool {
    // A file changed within the last two seconds may change again within the same mtime
    // tick: do not trust its stat until it has settled.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    now - key.mtime_ns.max(key.ctime_ns) >= 2_000_000_000
}

impl StatCache {
    pub fn in_memory() -> Self {
        StatCache::default()
    }

    /// A cache kept in the folder `dir` (created when saved). Damaged lines are ignored.
    pub fn load(dir: &Path) -> Self {
        let mut dirs = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("dirs-v1")) {
            for line in text.lines() {
                let mut it = line.splitn(3, ' ');
                if let (Some(sum), Some(digest), Some(p)) = (it.next(), it.next(), it.next()) {
                    dirs.insert(p.as_bytes().to_vec(), (sum.to_string(), digest.to_string()));
                }
            }
        }
        StatCache { dir: Some(dir.to_path_buf()), dirs: Mutex::new(dirs), ..Default::default() }
    }

    fn files(&self) -> &FileMap {
        self.files.get_or_init(|| {
            let mut map = HashMap::new();
            let Some(dir) = &self.dir else { return map };
            let Ok(f) = std::fs::File::open(dir.join("files-v1")) else { return map };
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
                map.insert(p.as_bytes().to_vec(), (StatKey { size, mtime_ns, ino, ctime_ns }, h.to_string()));
            }
            map
        })
    }

    /// Write the cache back if it changed (atomically).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let new = std::mem::take(&mut *self.new_files.lock().unwrap_or_else(|e| e.into_inner()));
        if !new.is_empty() {
            let mut buf = Vec::new();
            let old = self.files();
            for (p, (k, h)) in old.iter().filter(|(p, _)| !new.contains_key(*p)).chain(new.iter()) {
                let path = Path::new(std::str::from_utf8(p).unwrap_or(""));
                if path.as_os_str().is_empty() || !path.exists() {
                    continue;
                }
                let _ = writeln!(buf, "{h} {} {} {} {} {}", k.size, k.mtime_ns, k.ctime_ns, k.ino, path.display());
            }
            crate::store::write_atomic(&dir.join("files-v1"), &buf)?;
        }
        if self.dirs_dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            let mut buf = Vec::new();
            for (p, (sum, digest)) in dirs.iter() {
                let _ = writeln!(buf, "{sum} {digest} {}", String::from_utf8_lossy(p));
            }
            drop(dirs);
            crate::store::write_atomic(&dir.join("dirs-v1"), &buf)?;
        }
        Ok(())
    }

    fn get(&self, path: &Path, key: StatKey) -> Option<String> {
        let k = path_key(path);
        if let Some((sk, h)) = self.new_files.lock().unwrap_or_else(|e| e.into_inner()).get(&k) {
            return (*sk == key).then(|| h.clone());
        }
        self.files().get(&k).filter(|(k, _)| *k == key).map(|(_, h)| h.clone())
    }

    fn put(&self, path: &Path, key: StatKey, hash: String) {
        if settled(&key) {
            self.new_files.lock().unwrap_or_else(|e| e.into_inner()).insert(path_key(path), (key, hash));
        }
    }

    /// Hash a file, consulting the cache.
    pub fn hash_file(&self, path: &Path, meta: &std::fs::Metadata) -> std::io::Result<String> {
        let key = StatKey::of(meta);
        if let Some(h) = self.get(path, key) {
            return Ok(h);
        }
        let h = hash_file(path, meta.size())?;
        self.put(path, key, h.clone());
        Ok(h)
    }

    /// Record a hash computed elsewhere (e.g. while copying a file out of the store).
    pub fn remember(&self, path: &Path, hash: &str) {
        if let Ok(m) = std::fs::metadata(path) {
            self.put(path, StatKey::of(&m), hash.to_string());
        }
    }
}

/// A summary of the stats of a folder's files (names, sizes, times, inodes).
fn stat_summary(files: &[(String, PathBuf, std::fs::Metadata)]) -> String {
    let mut h = blake3::Hasher::new();
    for (rel, _, m) in files {
        let k = StatKey::of(m);
        h.update(rel.as_bytes());
        h.update(&[0]);
        for n in [k.size as i64, k.mtime_ns, k.ctime_ns, k.ino as i64, (m.permissions().mode() & 0o111 != 0) as i64] {
            h.update(&n.to_le_bytes());
        }
    }
    h.finalize().to_hex().to_string()
}

/// The digest of a file or folder, served from the cache when every file's stat is as
/// remembered. This is what a no-op run calls for each input.
pub fn digest_path(path: &Path, cache: &StatCache) -> std::io::Result<Digest> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        // A single file is looked up in the same summary map, so that a no-op run never
        // loads the per-file map.
        let key = path_key(path);
        let k = StatKey::of(&meta);
        let summary = format!("{}-{}-{}-{}-{}", k.size, k.mtime_ns, k.ctime_ns, k.ino, meta.permissions().mode() & 0o111 != 0);
        if let Some((sum, digest)) = cache.dirs.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *sum == summary
        {
            return Ok(digest.clone());
        }
        let digest = hash_path(path, cache)?.digest();
        if settled(&k) {
            cache.dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (summary, digest.clone()));
            cache.dirs_dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        return Ok(digest);
    }
    let files = list_files(path)?;
    let summary = stat_summary(&files);
    let key = path_key(path);
    if let Some((sum, digest)) = cache.dirs.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
        && *sum == summary
    {
        return Ok(digest.clone());
    }
    let tree = hash_files(files.clone(), cache)?;
    let digest = tree.digest();
    if files.iter().all(|(_, _, m)| settled(&StatKey::of(m))) {
        cache.dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (summary, digest.clone()));
        cache.dirs_dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(digest)
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
    hash_files(list_files(path)?, cache).map(Hashed::Dir)
}

/// Every file under `dir` (symlinks followed), sorted by relative path.
fn list_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, std::fs::Metadata)>> {
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn hash_files(files: Vec<(String, PathBuf, std::fs::Metadata)>, cache: &StatCache) -> std::io::Result<Tree> {
    let entries: Vec<TreeEntry> = files
        .par_iter()
        .map(|(rel, abs, m)| {
            let hash = cache.hash_file(abs, m)?;
            Ok(TreeEntry { path: rel.clone(), hash, size: m.size(), exec: m.permissions().mode() & 0o111 != 0 })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Tree { v: 1, entries })
}

type Listed = (String, PathBuf, std::fs::Metadata);

/// List the files under `dir`; sub-folders are walked in parallel.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<Listed>) -> std::io::Result<()> {
    let mut subdirs: Vec<(PathBuf, String)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return Err(std::io::Error::other(format!("file name is not UTF-8: {}", e.path().display())));
        };
        let rel = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            subdirs.push((p, rel));
            continue;
        }
        let m = if ft.is_symlink() { std::fs::metadata(&p)? } else { e.metadata()? };
        if m.is_dir() {
            subdirs.push((p, rel));
        } else if m.is_file() {
            out.push((rel, p, m));
        }
    }
    let nested: Vec<Vec<Listed>> = subdirs
        .par_iter()
        .map(|(p, rel)| {
            let mut v = Vec::new();
            walk(p, rel, &mut v).map(|_| v)
        })
        .collect::<std::io::Result<_>>()?;
    for v in nested {
        out.extend(v);
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
        assert_eq!(digest_path(&p, &c).unwrap(), format!("f:{}", blake3::hash(b"hello").to_hex()));
        let m = std::fs::metadata(&p).unwrap();
        let h = c.hash_file(&p, &m).unwrap();
        c.save().unwrap();
        let c2 = StatCache::load(&cpath);
        // ctime is "now" here, so the entry may be considered unsettled; both outcomes
        // must give the right hash.
        assert_eq!(c2.hash_file(&p, &m).unwrap(), h);
    }

    #[test]
    fn folder_summary_cache_notices_changes() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        for i in 0..5 {
            let p = data.join(format!("{i}.txt"));
            std::fs::write(&p, format!("{i}")).unwrap();
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
        }
        let c = StatCache::load(&d.path().join("cache"));
        let first = digest_path(&data, &c).unwrap();
        c.save().unwrap();
        let c = StatCache::load(&d.path().join("cache"));
        assert_eq!(digest_path(&data, &c).unwrap(), first);
        // Same size, new content: the stat summary changes, so the folder is re-hashed.
        std::fs::write(data.join("3.txt"), "x").unwrap();
        let second = digest_path(&data, &c).unwrap();
        assert_ne!(second, first);
        assert_eq!(second, hash_path(&data, &StatCache::in_memory()).unwrap().digest());
    }
}
