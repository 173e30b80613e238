//! Commit filters given as git revisions (`stats compare --project-commit HEAD~1`, cli.md
//! §3.4): each value becomes the 7-hex short hashes sidecars record.
//!
//! `HEAD`, `HEAD~N`, branches, tags and hashes name one commit; `A..B` names every commit
//! reachable from B and not from A (the whole DAG breadth-first, merge parents included);
//! an empty side of a range is `HEAD`. A value passes through unchanged (an exact-match
//! string) when there is no repository, when it has the `<hash>-dirty` form sidecars use
//! for runs with local changes, or when it does not resolve but looks like a hash (a commit
//! this clone does not have). Anything else that does not resolve is an error, so a typo
//! does not silently match nothing.

use std::path::{Path, PathBuf};

/// Why a commit filter could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RevspecError {
    /// Neither a revision of the repository nor a hash.
    #[error("--{flag} {value:?}: not a revision of the git repository at {} and not a commit hash\nhint: use a commit of that repository (HEAD, HEAD~2, a tag, A..B, a hash), or `<hash>-dirty` for runs with local changes", repo.display())]
    Unknown {
        /// The flag, without dashes.
        flag: String,
        /// What was given.
        value: String,
        /// The repository it was looked up in.
        repo: PathBuf,
    },
    /// A range that gix could not walk, or an unsupported form.
    #[error("--{flag} {value:?}: {why}")]
    Range {
        /// The flag, without dashes.
        flag: String,
        /// What was given.
        value: String,
        /// What went wrong.
        why: String,
    },
}

/// The repository commit filters of one kind resolve in, if any.
pub struct Resolver {
    repo: Option<gix::Repository>,
    flag: String,
}

impl Resolver {
    /// Project commits: the repository found by walking up from `cwd` (none outside git).
    pub fn project(cwd: &Path) -> Resolver {
        Resolver {
            repo: gix::discover(cwd).ok(),
            flag: "project-commit".into(),
        }
    }

    /// Kernel commits: the repository at `kernel_dir` exactly (`KTSTR_KERNEL`), no walking
    /// up; none when unset or not a git tree.
    pub fn kernel(kernel_dir: Option<&Path>) -> Resolver {
        Resolver {
            repo: kernel_dir.and_then(|d| gix::open(d).ok()),
            flag: "kernel-commit".into(),
        }
    }

    /// The exact-match values `value` stands for, under the flag `flag` (for messages; e.g.
    /// `a-project-commit`).
    pub fn resolve(&self, flag: &str, value: &str) -> Result<Vec<String>, RevspecError> {
        let Some(repo) = &self.repo else {
            return Ok(vec![value.to_string()]);
        };
        if value.ends_with("-dirty") {
            return Ok(vec![value.to_string()]);
        }
        let flag = if flag.is_empty() { &self.flag } else { flag };
        let unknown = || RevspecError::Unknown {
            flag: flag.to_string(),
            value: value.to_string(),
            repo: repo.workdir().unwrap_or(repo.git_dir()).to_path_buf(),
        };
        if let Some((from, to)) = value.split_once("..") {
            if to.starts_with('.') {
                return Err(RevspecError::Range {
                    flag: flag.to_string(),
                    value: value.to_string(),
                    why: "symmetric differences (A...B) are not supported; use A..B".into(),
                });
            }
            let end = |s: &str| if s.is_empty() { "HEAD" } else { s }.to_string();
            let (Some(a), Some(b)) = (commit(repo, &end(from)), commit(repo, &end(to))) else {
                return Err(unknown());
            };
            let walk =
                repo.rev_walk([b])
                    .with_hidden([a])
                    .all()
                    .map_err(|e| RevspecError::Range {
                        flag: flag.to_string(),
                        value: value.to_string(),
                        why: e.to_string(),
                    })?;
            let mut out = Vec::new();
            for info in walk {
                let info = info.map_err(|e| RevspecError::Range {
                    flag: flag.to_string(),
                    value: value.to_string(),
                    why: e.to_string(),
                })?;
                out.push(short(info.id));
            }
            return Ok(out);
        }
        match commit(repo, value) {
            Some(id) => Ok(vec![short(id)]),
            None if looks_like_a_hash(value) => Ok(vec![value.to_string()]),
            None => Err(unknown()),
        }
    }
}

/// The commit `spec` names (tags peeled), if it names one.
fn commit(repo: &gix::Repository, spec: &str) -> Option<gix::ObjectId> {
    let id = repo.rev_parse_single(spec).ok()?;
    let c = id.object().ok()?.peel_to_commit().ok()?;
    Some(c.id)
}

fn short(id: gix::ObjectId) -> String {
    id.to_hex_with_len(7).to_string()
}

/// 4 to 40 hex digits: a commit this clone may not have.
fn looks_like_a_hash(v: &str) -> bool {
    (4..=40).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A repository with a linear history of `n` commits, and the 7-hex id of each, oldest
    /// first; `None` when no `git` binary is present.
    fn repo_with(n: usize) -> Option<(tempfile::TempDir, Vec<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t")
                .output()
        };
        git(&["init", "-q"]).ok()?;
        let mut ids = Vec::new();
        for i in 0..n {
            std::fs::write(dir.path().join("f"), i.to_string()).unwrap();
            git(&["add", "f"]).unwrap();
            git(&["commit", "-q", "-m", &format!("c{i}")]).unwrap();
            let out = git(&["rev-parse", "--short=7", "HEAD"]).unwrap();
            ids.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        }
        git(&["tag", "v1", &ids[0]]).unwrap();
        Some((dir, ids))
    }

    #[test]
    fn revisions_resolve_to_the_short_hashes_sidecars_record() {
        let Some((dir, ids)) = repo_with(4) else {
            eprintln!("no git binary: revision resolution is not exercised");
            return;
        };
        let r = Resolver::project(&dir.path().join(".")); // discovered from inside
        assert_eq!(r.resolve("", "HEAD").unwrap(), [ids[3].clone()]);
        assert_eq!(r.resolve("", "HEAD~1").unwrap(), [ids[2].clone()]);
        assert_eq!(r.resolve("", "v1").unwrap(), [ids[0].clone()]);
        assert_eq!(r.resolve("", &ids[1]).unwrap(), [ids[1].clone()]);
        // A range: reachable from B, not from A (newest first).
        let mut got = r.resolve("", "HEAD~3..HEAD").unwrap();
        got.sort();
        let mut want = ids[1..].to_vec();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(r.resolve("", "HEAD~1..").unwrap(), [ids[3].clone()]);
        // Literal: the dirty form, and a hash this clone lacks.
        let dirty = format!("{}-dirty", ids[3]);
        assert_eq!(r.resolve("", &dirty).unwrap(), std::slice::from_ref(&dirty));
        assert_eq!(r.resolve("", "deadbee").unwrap(), ["deadbee"]);
        // A typo is an error naming the flag, the value and what to do.
        let e = r
            .resolve("a-project-commit", "HAED~1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--a-project-commit \"HAED~1\""), "{e}");
        assert!(e.contains("hint:"), "{e}");
        assert!(r.resolve("", "HEAD~1...HEAD").is_err());
        assert!(r.resolve("", "nope..HEAD").is_err());
    }

    #[test]
    fn without_a_repository_values_are_literal() {
        let dir = tempfile::tempdir().unwrap();
        let r = Resolver::kernel(Some(dir.path()));
        assert_eq!(r.resolve("", "HEAD~1").unwrap(), ["HEAD~1"]);
        let r = Resolver::kernel(None);
        assert_eq!(r.resolve("", "anything").unwrap(), ["anything"]);
    }
}
