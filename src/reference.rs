//! Image references as the distribution project's grammar defines them
//! (`[domain[:port]/]path[:tag][@digest]`), normalised the way kubelet and
//! containerd do (`busybox` is `docker.io/library/busybox:latest`). A name
//! that does not parse is kubelet's `InvalidImageName`.

#![deny(clippy::arithmetic_side_effects)]

/// The default registry, as a key and as a host.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_INDEX: &str = "index.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `registry.example:5000`, ...
    pub domain: String,
    /// `library/busybox`, `team/app`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// `domain/path`: what credentials are matched against.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The full normalised name, `:latest` added when there is neither tag
    /// nor digest.
    pub fn normalized(&self) -> String {
        let mut s = self.repository();
        match (&self.tag, &self.digest) {
            (Some(t), _) => {
                s.push(':');
                s.push_str(t);
            }
            (None, None) => s.push_str(":latest"),
            (None, Some(_)) => {}
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// Why a name is not an image reference; the words are distribution's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("couldn't parse image name {name:?}: {reason}")]
pub struct InvalidReference {
    pub name: String,
    pub reason: &'static str,
}

fn path_component_ok(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len().saturating_sub(1)]) {
        return false;
    }
    let mut i = 0usize;
    while i < b.len() {
        if alnum(b[i]) {
            i = i.saturating_add(1);
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i = i.saturating_add(1);
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn domain_ok(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if host.starts_with('[') {
        return host.ends_with(']') && host.len() > 2;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len().saturating_sub(1)].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
}

fn tag_ok(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

fn digest_ok(d: &str) -> bool {
    let Some((algo, hex)) = d.split_once(':') else { return false };
    let algo_ok = !algo.is_empty() && algo.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'_' | b'-'));
    let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let len_ok = algo != "sha256" || hex.len() == 64;
    algo_ok && hex_ok && len_ok
}

/// Parses and normalises `name` as `ParseNormalizedNamed` does.
pub fn parse(name: &str) -> Result<Reference, InvalidReference> {
    let bad = |reason| InvalidReference { name: name.to_string(), reason };
    if name.is_empty() {
        return Err(bad("repository name must have at least one component"));
    }
    if name.len() > 4096 || name.trim() != name {
        return Err(bad("invalid reference format"));
    }
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(bad("invalid repository name (cannot specify 64-byte hexadecimal strings)"));
    }
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => {
            if !digest_ok(d) {
                return Err(bad("invalid digest format"));
            }
            (r, Some(d.to_string()))
        }
        None => (name, None),
    };
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i.saturating_add(1));
    let (repo, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash.saturating_add(i);
            (&rest[..at], Some(rest[at.saturating_add(1)..].to_string()))
        }
        None => (rest, None),
    };
    if let Some(t) = &tag
        && !tag_ok(t)
    {
        return Err(bad("invalid reference format"));
    }
    let (domain, path) = match repo.split_once('/') {
        Some((first, remainder)) if first.contains('.') || first.contains(':') || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase()) => {
            (first.to_string(), remainder.to_string())
        }
        Some(_) => (DOCKER_HUB.to_string(), repo.to_string()),
        None => (DOCKER_HUB.to_string(), format!("library/{repo}")),
    };
    if !domain_ok(&domain) {
        return Err(bad("invalid reference format"));
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("repository name must be lowercase"));
    }
    if path.is_empty() || !path.split('/').all(path_component_ok) {
        return Err(bad("invalid reference format"));
    }
    let domain = if domain == DOCKER_HUB_INDEX { DOCKER_HUB.to_string() } else { domain };
    // `docker.io/busybox` is `docker.io/library/busybox`.
    let path = if domain == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path };
    if domain.len().saturating_add(path.len()).saturating_add(1) > 255 {
        return Err(bad("repository name must not be more than 255 characters"));
    }
    Ok(Reference { domain, path, tag, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_as_containerd_does() {
        let n = |s: &str| parse(s).unwrap().normalized();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("team/app:v1"), "docker.io/team/app:v1");
        assert_eq!(n("index.docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("localhost/app"), "localhost/app:latest");
        assert_eq!(n("registry.example:5000/a/b/c:1"), "registry.example:5000/a/b/c:1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(n(&format!("r.io/app@{d}")), format!("r.io/app@{d}"));
        assert_eq!(n(&format!("r.io/app:1@{d}")), format!("r.io/app:1@{d}"));
        assert_eq!(parse("registry.example:5000/a/b:1").unwrap().repository(), "registry.example:5000/a/b");
        assert_eq!(parse("my_app-x.y__z").unwrap().path, "library/my_app-x.y__z");
    }

    #[test]
    fn bad_names_say_why() {
        let upper = format!("r.io/app@sha256:{}", "A".repeat(64));
        let hex = "a".repeat(64);
        assert!(parse(&upper).is_err() && parse(&hex).is_err());
        for bad in ["", "Busybox", "busybox:", "busy box", "a//b", "-a", "a/b-", "r.io/app@sha256:abc", "r.io:/a", "a:b:c", " busybox", "a/b:t@x"] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(parse("a b").unwrap_err().to_string(), "couldn't parse image name \"a b\": invalid reference format");
        assert_eq!(parse("Busybox").unwrap_err().reason, "repository name must be lowercase");
        assert_eq!(parse("r.io/Team/app").unwrap_err().reason, "repository name must be lowercase");
    }
}
