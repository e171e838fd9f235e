//! The apimachinery's validation of names and labels (RFC 1123 labels and
//! subdomains, qualified names, label keys and values), with the
//! apiserver's field paths and messages. Used for pods, flags and configs.
//! Also the names the kernel takes from a config (IPVS schedulers, cgroup
//! paths): they live here, below both `config`, which validates them, and
//! the modules that use them, so config knows no mechanism.

/// The IPVS schedulers kube-proxy accepts and the others the kernel ships
/// (`ipvs.scheduler`).
pub const IPVS_SCHEDULERS: &[&str] = &["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh", "fo", "ovf", "twos"];

/// Whether `name` is a cgroup path that stays below the cgroup mount: only
/// plain components (no `.`, `..` or NUL).
pub fn is_cgroup_name(name: &str) -> bool {
    !name.contains('\0') && name.split('/').all(|c| c != "." && c != "..")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_string(), message: message.into() }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn rfc1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(is_label_char)
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn dns_label(s: &str, field: &str, errs: &mut Vec<FieldError>) {
    if !rfc1123_label(s) {
        errs.push(FieldError::new(
            field,
            format!(
                "Invalid value: {s:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
                 '-', and must start and end with an alphanumeric character (at most 63 characters)"
            ),
        ));
    }
}

pub fn dns_subdomain(s: &str, field: &str, errs: &mut Vec<FieldError>) {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(rfc1123_label);
    if !ok {
        errs.push(FieldError::new(
            field,
            format!(
                "Invalid value: {s:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                 characters, '-' or '.', and must start and end with an alphanumeric character (at most 253 characters)"
            ),
        ));
    }
}

fn qualified_name_part(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(ok_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub fn label_key(k: &str, field: &str, errs: &mut Vec<FieldError>) {
    let ok = match k.split_once('/') {
        Some((prefix, name)) => {
            let mut sub = Vec::new();
            dns_subdomain(prefix, field, &mut sub);
            sub.is_empty() && qualified_name_part(name)
        }
        None => qualified_name_part(k),
    };
    if !ok {
        errs.push(FieldError::new(field, format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, with an optional DNS subdomain prefix and '/'")));
    }
}

pub fn label_value(v: &str, field: &str, errs: &mut Vec<FieldError>) {
    if !(v.is_empty() || qualified_name_part(v)) {
        errs.push(FieldError::new(field, format!("Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)")));
    }
}
