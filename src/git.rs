//! A pipeline's lock file as git recorded it, read through gitoxide (no `git` process):
//! the file at a revision (`taoflow diff`) and the commits that changed it (`taoflow exp show`).

use std::path::{Path, PathBuf};

/// The git repository that holds a file.
pub struct Repo {
    repo: gix::Repository,
    workdir: PathBuf,
}

/// One commit that changed a file, with the file's bytes there.
#[derive(Debug, Clone)]
pub struct Revision {
    /// Abbreviated commit id (10 hex digits).
    pub id: String,
    /// The commit message's first line.
    pub summary: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
    pub bytes: Vec<u8>,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Repo {
    /// The repository whose work tree holds `path`.
    pub fn discover(path: &Path) -> Result<Repo, String> {
        let start = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let repo = gix::discover(start).map_err(|e| format!("{} is not inside a git repository ({e})\n  = hint: `git init` and commit the pipeline and its lock file to compare revisions", path.display()))?;
        let workdir = repo.workdir().ok_or_else(|| format!("the git repository of {} has no work tree (a bare repository)", path.display()))?;
        let workdir = std::fs::canonicalize(workdir).map_err(|e| err("cannot resolve the work tree", e))?;
        Ok(Repo { repo, workdir })
    }

    /// `file`'s path relative to the work tree, with `/` separators (what trees hold).
    pub fn relative(&self, file: &Path) -> Result<PathBuf, String> {
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let abs = std::fs::canonicalize(dir).map_err(|e| err(&format!("cannot resolve {}", dir.display()), e))?.join(file.file_name().unwrap_or_default());
        abs.strip_prefix(&self.workdir).map(Path::to_path_buf).map_err(|_| format!("{} is outside the work tree {}", file.display(), self.workdir.display()))
    }

    /// The bytes of `file` (a path in the work tree) at revision `rev` (anything git's
    /// rev-parse takes: `HEAD`, `HEAD~2`, a branch, a tag, a commit id); None when that
    /// revision has no such file.
    pub fn file_at(&self, rev: &str, file: &Path) -> Result<Option<Vec<u8>>, String> {
        let rel = self.relative(file)?;
        let id = self.repo.rev_parse_single(rev).map_err(|e| format!("unknown revision `{rev}`: {e}\n  = hint: a commit, branch or tag, e.g. HEAD, HEAD~1, main"))?;
        let commit = id.object().map_err(|e| err("cannot read the revision's object", e))?.peel_to_commit().map_err(|e| format!("`{rev}` is not a commit: {e}"))?;
        let tree = commit.tree().map_err(|e| err("cannot read the commit's tree", e))?;
        blob_in(&tree, &rel)
    }

    /// The commits reachable from HEAD that changed `file` (added it or changed its bytes),
    /// newest first, at most `max`; empty when the repository has no commits.
    pub fn history(&self, file: &Path, max: usize) -> Result<Vec<Revision>, String> {
        let rel = self.relative(file)?;
        let head = match self.repo.head_id() {
            Ok(id) => id,
            Err(_) => return Ok(Vec::new()),
        };
        let walk = self.repo.rev_walk([head.detach()]).all().map_err(|e| err("cannot walk the history", e))?;
        let mut out = Vec::new();
        for info in walk {
            let info = info.map_err(|e| err("cannot walk the history", e))?;
            let commit = info.object().map_err(|e| err("cannot read a commit", e))?;
            let tree = commit.tree().map_err(|e| err("cannot read a commit's tree", e))?;
            let Some(bytes) = blob_in(&tree, &rel)? else { continue };
            let mut changed = true;
            if let Some(parent) = commit.parent_ids().next() {
                let pc = parent.object().map_err(|e| err("cannot read a commit", e))?.peel_to_commit().map_err(|e| err("cannot read a commit", e))?;
                let pt = pc.tree().map_err(|e| err("cannot read a commit's tree", e))?;
                changed = blob_in(&pt, &rel)?.as_deref() != Some(&bytes[..]);
            }
            if !changed {
                continue;
            }
            let summary = commit.message().map(|m| m.summary().to_string()).unwrap_or_default();
            let time = commit.time().map(|t| t.seconds).unwrap_or(0);
            out.push(Revision { id: info.id.to_hex_with_len(10).to_string(), summary, time, bytes });
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

fn blob_in(tree: &gix::Tree<'_>, rel: &Path) -> Result<Option<Vec<u8>>, String> {
    let Some(entry) = tree.lookup_entry_by_path(rel).map_err(|e| err("cannot read a tree", e))? else { return Ok(None) };
    if !entry.mode().is_blob() {
        return Ok(None);
    }
    let obj = entry.object().map_err(|e| err("cannot read a file's object", e))?;
    Ok(Some(obj.data.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git").current_dir(dir).args(args).env("GIT_AUTHOR_NAME", "t").env("GIT_AUTHOR_EMAIL", "t@t").env("GIT_COMMITTER_NAME", "t").env("GIT_COMMITTER_EMAIL", "t@t").status().expect("git runs").success();
        assert!(ok, "git {args:?}");
    }

    /// Versions of a file in a real repository (made by git itself), read back by gitoxide.
    #[test]
    fn reads_files_at_revisions_and_their_history() {
        if Command::new("git").arg("--version").output().is_err() {
            eprintln!("skipped: no git");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        git(dir, &["init", "-q", "-b", "main"]);
        std::fs::create_dir(dir.join("p")).unwrap();
        let f = dir.join("p/x.lock");
        std::fs::write(&f, "one").unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", "first"]);
        std::fs::write(dir.join("other"), "o").unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", "unrelated"]);
        std::fs::write(&f, "two").unwrap();
        git(dir, &["commit", "-q", "-am", "second\n\nbody"]);
        let r = Repo::discover(&f).unwrap();
        assert_eq!(r.file_at("HEAD", &f).unwrap().unwrap(), b"two");
        assert_eq!(r.file_at("HEAD~1", &f).unwrap().unwrap(), b"one");
        assert_eq!(r.file_at("HEAD~2", &f).unwrap().unwrap(), b"one");
        assert_eq!(r.file_at("HEAD", &dir.join("p/none.lock")).unwrap(), None);
        let e = r.file_at("nosuchbranch", &f).unwrap_err();
        assert!(e.contains("unknown revision `nosuchbranch`"), "{e}");
        let h = r.history(&f, 10).unwrap();
        assert_eq!(h.iter().map(|v| (v.summary.as_str(), v.bytes.as_slice())).collect::<Vec<_>>(), vec![("second", &b"two"[..]), ("first", &b"one"[..])]);
        assert_eq!(h[0].id.len(), 10);
        assert_eq!(r.history(&f, 1).unwrap().len(), 1);
        let outside = tempfile::tempdir().unwrap();
        let e = Repo::discover(&outside.path().join("x.lock")).err().unwrap();
        assert!(e.contains("not inside a git repository"), "{e}");
    }
}
