//! The Debian package: systemd/build-deb.sh packages the test build of
//! nodelet, dpkg installs it into a throwaway root (maintainer scripts run
//! with DPKG_ROOT, as for a chroot-less bootstrap), and the files, modes,
//! units, dependencies and debug symbols are where README says. Then a purge
//! leaves nothing behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

fn build_id(elf: &Path) -> String {
    let notes = run(Command::new("readelf").arg("-n").arg(elf));
    notes.lines().find_map(|l| l.trim().strip_prefix("Build ID: ")).unwrap_or_else(|| panic!("no build ID in {}", elf.display())).to_string()
}

fn sections(elf: &Path) -> String {
    run(Command::new("readelf").arg("-S").arg("-W").arg(elf))
}

fn dpkg(root: &Path, args: &[&str]) -> String {
    run(Command::new("dpkg")
        .env("DPKG_ROOT", root)
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args))
}

#[test]
fn the_deb_installs_its_binary_units_configs_and_directories_and_purges_clean() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("debs");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_nodelet"));
    run(Command::new(repo.join("systemd/build-deb.sh")).arg("--binary").arg(&bin).arg("--out").arg(&out).arg("--fast"));

    let version = env!("CARGO_PKG_VERSION");
    let arch = run(Command::new("dpkg").arg("--print-architecture")).trim().to_string();
    let deb = out.join(format!("nodelet_{version}_{arch}.deb"));
    let dbgsym = out.join(format!("nodelet-dbgsym_{version}_{arch}.deb"));
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    for dep in ["libc6 (>= ", "containerd", "runc", "containernetworking-plugins", "iptables", "nftables", "conntrack"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    // It takes kubelet's place: provides it at the Kubernetes release it
    // follows (kubeadm's package depends on kubelet), and replaces it.
    let field = |f: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f)).trim().to_string();
    let kube = nodelet::kubernetes_version!().trim_start_matches('v');
    assert_eq!(field("Provides"), format!("kubelet (= {kube})"));
    assert_eq!((field("Conflicts"), field("Replaces")), ("kubelet".to_string(), "kubelet".to_string()));

    // A throwaway root with an empty dpkg database.
    let root = tmp.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    dpkg(&root, &["-i", deb.to_str().unwrap(), dbgsym.to_str().unwrap()]);

    // Files and modes.
    let installed = root.join("usr/bin/nodelet");
    assert_eq!(mode(&installed), 0o755);
    for (path, want) in [
        ("lib/systemd/system/nodelet.service", 0o644),
        ("lib/systemd/system/nodelet.path", 0o644),
        ("etc/default/nodelet", 0o644),
        ("etc/nodelet/kubelet-config.yaml", 0o644),
        ("etc/nodelet/kube-proxy-config.yaml", 0o644),
        ("usr/share/doc/nodelet/README.md", 0o644),
        ("usr/share/doc/nodelet/copyright", 0o644),
        ("usr/share/doc/nodelet/docs/operations.md", 0o644),
        ("usr/share/doc/nodelet/nodelet-rbac.yaml", 0o644),
        ("etc/kubernetes/manifests", 0o755),
        ("var/lib/kubelet", 0o750),
        ("var/lib/kubelet/pki", 0o700),
        ("var/log/pods", 0o755),
        ("var/log/containers", 0o755),
    ] {
        assert_eq!(mode(&root.join(path)), want, "{path}");
        assert_eq!(std::fs::symlink_metadata(root.join(path)).unwrap().uid(), 0, "{path} is root's");
    }
    // kubelet's names: the unit alias kubeadm restarts (its drop-in
    // directory kubelet.service.d applies to an alias too) and the binary
    // its drop-in runs, which answers `--version` as kubelet does, in the
    // form kubeadm's preflight parses.
    assert_eq!(std::fs::read_link(root.join("lib/systemd/system/kubelet.service")).unwrap(), Path::new("nodelet.service"));
    assert_eq!(std::fs::read_link(root.join("usr/bin/kubelet")).unwrap(), Path::new("nodelet"));
    let line = run(&mut Command::new(root.join("usr/bin/kubelet")).arg("--version"));
    assert_eq!(line, format!("Kubernetes {}\n", nodelet::cluster::node::KUBELET_VERSION));
    let kubeadm = regex::Regex::new(r"^\s*Kubernetes v((0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-0-9a-zA-Z_\.+]*)?)\s*$").unwrap();
    assert!(kubeadm.is_match(line.trim()), "kubeadm's preflight parses {line:?}");
    let conffiles = std::fs::read_to_string(root.join("var/lib/dpkg/info/nodelet.conffiles")).unwrap();
    for f in ["/etc/default/nodelet", "/etc/nodelet/kubelet-config.yaml", "/etc/nodelet/kube-proxy-config.yaml"] {
        assert!(conffiles.lines().any(|l| l == f), "{f} is not a conffile: {conffiles}");
    }

    // The unit runs the packaged binary with the packaged configs, and is
    // enabled, but starts only once a kubeconfig exists.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/nodelet.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/nodelet --config ${NODELET_CONFIG} --proxy-config ${NODELET_PROXY_CONFIG} $NODELET_ARGS"), "{unit}");
    assert!(unit.contains("EnvironmentFile=-/etc/default/nodelet") && unit.contains("KillMode=process") && unit.contains("Type=notify"), "{unit}");
    assert!(unit.contains("ConditionPathExists=|/etc/kubernetes/bootstrap-kubelet.conf"), "{unit}");
    // Its documentation is the installed README.
    assert!(unit.contains("Documentation=file:///usr/share/doc/nodelet/README.md"), "{unit}");
    let env = std::fs::read_to_string(root.join("etc/default/nodelet")).unwrap();
    assert!(env.contains("NODELET_CONFIG=/etc/nodelet/kubelet-config.yaml") && env.contains("--bootstrap-kubeconfig /etc/kubernetes/bootstrap-kubelet.conf"), "{env}");
    for (wants, unit) in [("multi-user.target.wants", "nodelet.service"), ("paths.target.wants", "nodelet.path")] {
        let link = root.join("etc/systemd/system").join(wants).join(unit);
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/lib/systemd/system").join(unit), "{unit} is enabled");
    }

    // Stripped, with its debug info in the dbgsym package under its build ID.
    let id = build_id(&installed);
    assert_eq!(id, build_id(&bin));
    let secs = sections(&installed);
    assert!(!secs.contains(".debug_info") && !secs.contains(".symtab"), "the shipped binary carries no symbols or debug info");
    assert!(secs.contains(".gnu_debuglink"));
    let debug = root.join("usr/lib/debug/.build-id").join(&id[..2]).join(format!("{}.debug", &id[2..]));
    assert!(sections(&debug).contains(".debug_info"), "{}", debug.display());
    assert!(std::fs::metadata(&installed).unwrap().len() < std::fs::metadata(&bin).unwrap().len());

    // The stripped binary runs, and the packaged KubeletConfiguration is
    // accepted, every field of it used (--strict): a dry run plans an empty
    // node and exits 0.
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    run(Command::new(&installed)
        .args(["--dry-run", "--strict", "--healthz-port", "0", "--container-runtime-endpoint", "unix:///nonexistent/containerd.sock"])
        .arg("--config")
        .arg(root.join("etc/nodelet/kubelet-config.yaml"))
        .arg("--pod-manifest-path")
        .arg(&manifests)
        .arg("--root-dir")
        .arg(tmp.path().join("kubelet")));
    let proxy = nodelet::config::proxy::ProxyConfig::load(&root.join("etc/nodelet/kube-proxy-config.yaml")).unwrap();
    assert!(proxy.ignored.is_empty(), "every field of the packaged proxy config is used: {:?}", proxy.ignored);

    // Purged, nothing of it is left but the directories it shared.
    dpkg(&root, &["--purge", "nodelet-dbgsym", "nodelet"]);
    for gone in [
        "usr/bin/nodelet",
        "usr/bin/kubelet",
        "lib/systemd/system/nodelet.service",
        "lib/systemd/system/kubelet.service",
        "etc/default/nodelet",
        "etc/nodelet",
        "etc/systemd/system/multi-user.target.wants/nodelet.service",
        "usr/lib/debug/.build-id",
    ] {
        assert!(!root.join(gone).exists(), "{gone} is left after purge");
    }
}

/// README is one a newcomer reads in minutes; the rest is in docs/. Every
/// relative link in them names a file of the repository (none outside it),
/// and every anchor a heading of its file.
#[test]
fn the_readme_stays_short_and_its_links_and_the_docs_links_resolve() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    assert!(readme.lines().count() <= 300, "README.md has {} lines (at most 300; move the detail to docs/)", readme.lines().count());
    let anchor = |heading: &str| -> String {
        heading.trim().to_lowercase().chars().filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_').collect::<String>().replace(' ', "-")
    };
    let anchors = |text: &str| -> Vec<String> { text.lines().filter_map(|l| l.trim_start_matches('#').strip_prefix(' ').filter(|_| l.starts_with('#'))).map(anchor).collect() };
    let link = regex::Regex::new(r"\]\(([^)#\s]*)(#[^)\s]*)?\)").unwrap();
    let mut files = vec![repo.join("README.md")];
    files.extend(std::fs::read_dir(repo.join("docs")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "md")));
    assert!(files.len() >= 8, "docs/ has the documents: {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.contains("../shared") && !text.contains("(../../"), "{} refers outside the repository", file.display());
        for cap in link.captures_iter(&text) {
            let (target, frag) = (&cap[1], cap.get(2).map(|m| &m.as_str()[1..]));
            if target.starts_with("http") {
                continue;
            }
            let path = if target.is_empty() { file.clone() } else { file.parent().unwrap().join(target) };
            let canon = path.canonicalize().unwrap_or_else(|_| panic!("{}: link to {target} names no file", file.display()));
            assert!(canon.starts_with(repo.canonicalize().unwrap()), "{}: {target} is outside the repository", file.display());
            if let Some(frag) = frag {
                let there = std::fs::read_to_string(&canon).unwrap();
                assert!(anchors(&there).iter().any(|a| a == frag), "{}: no heading #{frag} in {}", file.display(), canon.display());
            }
        }
    }
}
