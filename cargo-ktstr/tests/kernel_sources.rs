//! `kernel build --git`, `--kernel git+URL#REF` and `--kernel START..END` end to end, over a
//! stand-in kernel tree: a git repository whose Makefile has the targets ktstr drives
//! (`allnoconfig`, `kernelversion`, `bzImage`) and makes a real ELF `vmlinux` and an image
//! with the x86 boot header, so the whole pipeline (resolve, export, configure, build, strip,
//! store, select) runs in a second instead of the minutes a real kernel takes.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{ktstr, text};

const MAKEFILE: &str = "\
allnoconfig:
\tcp $(KCONFIG_ALLCONFIG) .config
kernelversion:
\t@echo 6.99.1
bzImage:
\tmkdir -p arch/x86/boot
\thead -c 514 /dev/zero > arch/x86/boot/bzImage
\tprintf HdrS >> arch/x86/boot/bzImage
\thead -c 1024 /dev/zero >> arch/x86/boot/bzImage
\tcp /bin/true vmlinux
";

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .stdout(Stdio::null())
        .status()
        .expect("git must be installed for this test (apt-get install git)");
    assert!(st.success(), "git {args:?}");
}

/// A fake `cargo` that prints the kernel the harness would get.
fn fake_cargo(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let fake = dir.join("cargo");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"kernel: $KTSTR_KERNEL list: $KTSTR_KERNEL_LIST\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    fake.display().to_string()
}

#[test]
fn git_sources_build_into_the_cache_and_ranges_select_from_it() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("linux");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("Makefile"), MAKEFILE).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "6.99.1"]);
    git(&repo, &["tag", "v6.99.1"]);
    let cache = d.path().join("cache");
    let cargo = fake_cargo(d.path());
    let env = [
        ("KTSTR_CACHE_DIR", cache.to_str().unwrap()),
        ("CARGO", cargo.as_str()),
    ];
    let r = repo.to_str().unwrap();

    // Build from the local repository.
    let o = ktstr(&["kernel", "build", "--git", r, "--ref", "v6.99.1"], &env);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("export v6.99.1") && err.contains("exported 1 files"),
        "{err}"
    );
    let entry = out.trim().to_string();
    assert!(Path::new(&entry).join("vmlinux").is_file(), "{out}");

    // Listed with its git source and commit.
    let o = ktstr(&["kernel", "list", "--json"], &env);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    let e = &v[0];
    let key = e["key"].as_str().unwrap();
    let commit = e["metadata"]["source"]["git"]["commit"].as_str().unwrap();
    assert_eq!(commit.len(), 40, "{e}");
    assert!(
        key.starts_with(&format!("v6.99.1-git-{}-x86_64-kc", &commit[..7])),
        "{key}"
    );
    assert_eq!(e["metadata"]["source"]["git"]["ref"], "v6.99.1");
    assert_eq!(e["usable"], true);

    // The same commit through a file:// URL is a cache hit, not a rebuild.
    let url = format!("file://{r}");
    let o = ktstr(
        &["kernel", "build", "--git", &url, "--ref", "v6.99.1"],
        &env,
    );
    assert!(text(&o).1.contains("is cached"), "{}", text(&o).1);

    // `test --kernel git+URL#REF` finds it and exports its entry to the harness.
    let spec = format!("git+{url}#v6.99.1");
    let o = ktstr(&["test", "--kernel", &spec], &env);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains(&format!("kernel: {entry} ")), "{out}\n{err}");

    // A range expands against the cache, saying what it lacks.
    let o = ktstr(&["test", "--kernel", "6.98..6.99"], &env);
    let (out, err) = text(&o);
    assert!(out.contains(&format!("kernel: {entry} ")), "{out}\n{err}");
    assert!(
        err.contains("6.98..6.99 → 6.99.1") && err.contains("partial: no cached 6.98"),
        "{err}"
    );
    let o = ktstr(&["test", "--kernel", "7.0..7.1"], &env);
    assert!(
        text(&o)
            .1
            .contains("no cached kernel falls in 7.0..7.1 (cached: 6.99.1)"),
        "{}",
        text(&o).1
    );
    // One kernel only: shell refuses a range.
    let o = ktstr(&["shell", "--kernel", "6.98..6.99", "--exec", "true"], &env);
    assert!(
        !o.status.success() && text(&o).1.contains("needs exactly one"),
        "{}",
        text(&o).1
    );
    // A ref the repository does not have.
    let o = ktstr(&["kernel", "build", "--git", r, "--ref", "v7"], &env);
    assert!(
        text(&o).1.contains("\"v7\" is not a commit of"),
        "{}",
        text(&o).1
    );
}
