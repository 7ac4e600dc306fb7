//! WebDataset-style tar shards: `<key>.<ext>` members, the members of one sample next to
//! each other. Written deterministically (fixed order, mtime 0, uid/gid 0, mode 0644), so
//! the same samples always give the same bytes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::DataError;

/// One sample: its key and its members (`("png", bytes)`, `("cls", b"3")` …).
#[derive(Debug, Clone, PartialEq)]
pub struct RawSample {
    pub key: String,
    pub members: Vec<(String, Vec<u8>)>,
}

impl RawSample {
    pub fn member(&self, ext: &str) -> Option<&[u8]> {
        self.members.iter().find(|(e, _)| e == ext).map(|(_, b)| b.as_slice())
    }
    fn size(&self) -> u64 {
        self.members.iter().map(|(_, b)| 512 + b.len().div_ceil(512) as u64 * 512).sum()
    }
}

/// Writes samples into `<dir>/<prefix>-NNNNNN.tar`, starting a new shard when the current
/// one would pass `max_bytes` or `max_samples`.
pub struct ShardWriter {
    dir: PathBuf,
    prefix: String,
    max_bytes: u64,
    max_samples: usize,
    current: Option<(tar::Builder<BufWriter<File>>, u64, usize)>,
    /// Shard file names written, relative to `dir`'s parent-independent name.
    pub shards: Vec<String>,
}

impl ShardWriter {
    pub fn new(dir: &Path, prefix: &str, max_bytes: u64, max_samples: usize) -> Self {
        ShardWriter { dir: dir.to_path_buf(), prefix: prefix.to_string(), max_bytes, max_samples: max_samples.max(1), current: None, shards: Vec::new() }
    }

    pub fn write(&mut self, s: &RawSample) -> Result<(), DataError> {
        let size = s.size();
        let full = match &self.current {
            Some((_, bytes, n)) => *n > 0 && (bytes + size > self.max_bytes || *n >= self.max_samples),
            None => true,
        };
        if full {
            self.finish_current()?;
            let name = format!("{}-{:06}.tar", self.prefix, self.shards.len());
            let path = self.dir.join(&name);
            let f = File::create(&path).map_err(|e| DataError::io(format!("cannot create shard `{}`", path.display()), e))?;
            self.current = Some((tar::Builder::new(BufWriter::with_capacity(1 << 20, f)), 0, 0));
            self.shards.push(name);
        }
        let (b, bytes, n) = self.current.as_mut().expect("a shard is open");
        for (ext, data) in &s.members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, format!("{}.{ext}", s.key), data.as_slice())
                .map_err(|e| DataError::io(format!("cannot write sample `{}` to a shard", s.key), e))?;
        }
        *bytes += size;
        *n += 1;
        Ok(())
    }

    fn finish_current(&mut self) -> Result<(), DataError> {
        if let Some((b, _, _)) = self.current.take() {
            let mut w = b.into_inner().map_err(|e| DataError::io("cannot finish a shard", e))?;
            w.flush().map_err(|e| DataError::io("cannot write a shard", e))?;
            w.get_ref().sync_data().map_err(|e| DataError::io("cannot sync a shard", e))?;
        }
        Ok(())
    }

    /// Close the last shard; returns the shard names.
    pub fn finish(mut self) -> Result<Vec<String>, DataError> {
        self.finish_current()?;
        Ok(self.shards)
    }
}

/// Split a member name into (key, extension) the way WebDataset does: the extension starts
/// at the first dot of the file name (so `a/b.mask.png` is key `a/b`, extension `mask.png`).
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let dot = name[slash..].find('.')? + slash;
    Some((&name[..dot], &name[dot + 1..]))
}

/// Streams the samples of one shard, in order.
pub struct ShardReader {
    path: PathBuf,
    archive: tar::Archive<BufReader<File>>,
}

impl ShardReader {
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let f = File::open(path).map_err(|e| DataError::io(format!("cannot open shard `{}`", path.display()), e))?;
        Ok(ShardReader { path: path.to_path_buf(), archive: tar::Archive::new(BufReader::with_capacity(1 << 20, f)) })
    }

    /// Call `f` for each sample of the shard.
    pub fn for_each(&mut self, mut f: impl FnMut(RawSample) -> Result<(), DataError>) -> Result<(), DataError> {
        let path = self.path.clone();
        let bad = |e: std::io::Error| DataError::io(format!("shard `{}` is damaged", path.display()), e);
        let mut cur: Option<RawSample> = None;
        for entry in self.archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry.path().map_err(bad)?.to_string_lossy().to_string();
            let Some((key, ext)) = split_name(&name) else { continue };
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(bad)?;
            match &mut cur {
                Some(s) if s.key == key => s.members.push((ext.to_string(), data)),
                _ => {
                    if let Some(done) = cur.take() {
                        f(done)?;
                    }
                    cur = Some(RawSample { key: key.to_string(), members: vec![(ext.to_string(), data)] });
                }
            }
        }
        if let Some(done) = cur {
            f(done)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> RawSample {
        RawSample { key: format!("k{i:03}"), members: vec![("png".into(), vec![i as u8; 700]), ("cls".into(), i.to_string().into_bytes())] }
    }

    #[test]
    fn roundtrip_bounded_and_deterministic() {
        let d = tempfile::tempdir().unwrap();
        let write = |sub: &str| {
            let dir = d.path().join(sub);
            std::fs::create_dir_all(&dir).unwrap();
            let mut w = ShardWriter::new(&dir, "shard", 8 * 1024, 1000);
            for i in 0..20 {
                w.write(&sample(i)).unwrap();
            }
            (dir.clone(), w.finish().unwrap())
        };
        let (a, shards) = write("a");
        let (b, _) = write("b");
        assert!(shards.len() > 1, "bounded size gives several shards");
        for s in &shards {
            assert_eq!(std::fs::read(a.join(s)).unwrap(), std::fs::read(b.join(s)).unwrap());
            assert!(std::fs::metadata(a.join(s)).unwrap().len() <= 8 * 1024 + 2048);
        }
        let mut got = Vec::new();
        for s in &shards {
            ShardReader::open(&a.join(s)).unwrap().for_each(|x| {
                got.push(x);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(got, (0..20).map(sample).collect::<Vec<_>>());
    }

    #[test]
    fn names_split_like_webdataset() {
        assert_eq!(split_name("a/b.mask.png"), Some(("a/b", "mask.png")));
        assert_eq!(split_name("x.cls"), Some(("x", "cls")));
        assert_eq!(split_name("noext"), None);
    }
}
