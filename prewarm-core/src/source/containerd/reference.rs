//! Image references as containerd names its image records: a short name
//! normalised the way `ctr`, the CRI and Docker do (`busybox` →
//! `docker.io/library/busybox:latest`), a tag, or a digest.
//!
//! The rules: the first `/`-separated component is a registry host when it
//! has a `.` or a `:` or is `localhost`; otherwise the host is `docker.io`,
//! and a one-component name on `docker.io` gets `library/`
//! (`index.docker.io` is `docker.io`). The repository is lowercase. With
//! neither a tag nor a digest the tag is `latest`; with both, the tag is
//! dropped (the digest names the content, as containerd's
//! `ParseDockerRef` does).

use std::fmt;

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host/path`, e.g. `docker.io/library/busybox`.
    pub name: String,
    /// The tag, if no digest names the content.
    pub tag: Option<String>,
    /// `algorithm:hex`, e.g. `sha256:...`.
    pub digest: Option<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether `digest` is `algorithm:hex` as content digests are written
/// (`sha256:` and 64 lowercase hex digits, or another algorithm's).
pub fn is_digest(digest: &str) -> bool {
    let Some((alg, hex)) = digest.split_once(':') else {
        return false;
    };
    let alg_ok = !alg.is_empty()
        && alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    alg_ok && hex_ok && (alg != "sha256" || hex.len() == 64)
}

fn component_ok(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
}

/// Normalise `input` (see the module doc), or say what is wrong with it.
pub fn normalize(input: &str) -> Result<Reference, String> {
    let input = input.trim();
    if input.is_empty() {
        return Err("empty image reference".into());
    }
    let (rest, digest) = match input.split_once('@') {
        Some((rest, digest)) if is_digest(digest) => (rest, Some(digest.to_string())),
        Some((_, digest)) => return Err(format!("{digest:?} is not a content digest")),
        None => (input, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.as_bytes()[0] != b'.'
            && tag.as_bytes()[0] != b'-'
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(format!("{tag:?} is not a valid tag"));
        }
    }
    let (host, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, path.to_string())
        }
        Some(_) => ("docker.io", name.to_string()),
        None => ("docker.io", name.to_string()),
    };
    let host = if host == "index.docker.io" {
        "docker.io"
    } else {
        host
    };
    let path = if host == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository {path:?} must be lowercase"));
    }
    if !path.split('/').all(component_ok) {
        return Err(format!("{name:?} is not a valid repository name"));
    }
    let tag = match (&digest, tag) {
        (Some(_), _) => None,
        (None, Some(tag)) => Some(tag.to_string()),
        (None, None) => Some("latest".to_string()),
    };
    Ok(Reference {
        name: format!("{host}/{path}"),
        tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        normalize(s).map_or_else(|e| format!("error: {e}"), |r| r.to_string())
    }

    #[test]
    fn short_names_normalise_as_containerd_does() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".into()),
            ("foo/bar", "docker.io/foo/bar:latest".into()),
            ("index.docker.io/foo/bar:v1", "docker.io/foo/bar:v1".into()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            ("localhost/app", "localhost/app:latest".into()),
            ("localhost:5000/app:v2", "localhost:5000/app:v2".into()),
            (
                "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5",
                "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5".into(),
            ),
            ("registry:5000/a/b", "registry:5000/a/b:latest".into()),
            (
                &format!("busybox@{d}"),
                format!("docker.io/library/busybox@{d}"),
            ),
            (
                &format!("busybox:1@{d}"),
                format!("docker.io/library/busybox@{d}"),
            ),
        ] {
            assert_eq!(norm(input), want, "{input}");
        }
        for bad in [
            "",
            "Busybox",
            "foo@sha256:12",
            "foo:",
            "a//b",
            "foo:-x",
            "-a",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted: {}", norm(bad));
        }
    }
}
