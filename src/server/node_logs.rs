//! `/logs/…`: the node's own log files (kubelet's system log handler,
//! `enableSystemLogHandler`), authorized as `nodes/log`. A directory is
//! listed as Go's file server lists one; a file is streamed as it is. The
//! path is confined to the log directory: `..` is refused, and a symlink
//! that leads out of it is not followed.

use std::path::{Path, PathBuf};

use axum::body::Body;
use http::{Response, StatusCode, header};

fn reply(code: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

fn plain(code: StatusCode, message: &str) -> Response<Body> {
    reply(code, "text/plain; charset=utf-8", Body::from(format!("{message}\n")))
}

/// Why a path is not served: the status it gets.
fn refusal(code: StatusCode) -> Response<Body> {
    if code == StatusCode::BAD_REQUEST { plain(code, "invalid URL path") } else { plain(code, "404 page not found") }
}

/// The file or directory `rel` (the request path after `/logs/`, still
/// percent-encoded) names under `root`, or the status that refuses it:
/// 400 for `..`, 404 for what is missing or lies outside `root`.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, StatusCode> {
    let decoded = percent_encoding::percent_decode_str(rel).decode_utf8().map_err(|_| StatusCode::BAD_REQUEST)?;
    let mut path = root.to_path_buf();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(StatusCode::BAD_REQUEST),
            p if p.contains('\0') => return Err(StatusCode::BAD_REQUEST),
            p => path.push(p),
        }
    }
    let real = path.canonicalize().map_err(|_| StatusCode::NOT_FOUND)?;
    let real_root = root.canonicalize().map_err(|_| StatusCode::NOT_FOUND)?;
    if !real.starts_with(&real_root) {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(real)
}

/// What a URL path escapes (as Go's url.URL does for a path).
const PATH: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`').add(b'{').add(b'}');

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&#34;").replace('\'', "&#39;")
}

/// A directory as Go's `http.FileServer` lists it.
fn listing(dir: &Path) -> std::io::Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) { format!("{name}/") } else { name }
        })
        .collect();
    names.sort();
    let mut out = String::from("<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n");
    for n in names {
        let href = percent_encoding::utf8_percent_encode(&n, PATH).to_string();
        out.push_str(&format!("<a href=\"{}\">{}</a>\n", escape(&href), escape(&n)));
    }
    out.push_str("</pre>\n");
    Ok(out)
}

/// Serves `rel` below `root`.
pub async fn serve(root: &Path, rel: &str) -> Response<Body> {
    let path = match resolve(root, rel) {
        Ok(p) => p,
        Err(code) => return refusal(code),
    };
    if path.is_dir() {
        return match listing(&path) {
            Ok(html) => reply(StatusCode::OK, "text/html; charset=utf-8", Body::from(html)),
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot list the directory: {e}")),
        };
    }
    match tokio::fs::File::open(&path).await {
        Ok(f) => reply(StatusCode::OK, "text/plain; charset=utf-8", Body::from_stream(tokio_util::io::ReaderStream::new(f))),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => plain(StatusCode::FORBIDDEN, "403 Forbidden"),
        Err(_) => plain(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_log_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("log");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a b.log"), "x").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/a b.log"), root.join("inside")).unwrap();
        assert!(resolve(&root, "sub/a%20b.log").unwrap().ends_with("sub/a b.log"));
        assert!(resolve(&root, "inside").is_ok(), "a symlink within the directory is followed");
        assert_eq!(resolve(&root, "escape").unwrap_err(), StatusCode::NOT_FOUND);
        assert_eq!(resolve(&root, "../secret").unwrap_err(), StatusCode::BAD_REQUEST);
        assert_eq!(resolve(&root, "sub/%2e%2e/%2e%2e/secret").unwrap_err(), StatusCode::BAD_REQUEST);
        assert_eq!(resolve(&root, "nope").unwrap_err(), StatusCode::NOT_FOUND);
        let html = listing(&root).unwrap();
        assert!(html.contains("<a href=\"sub/\">sub/</a>") && html.contains("<a href=\"escape\">escape</a>"), "{html}");
        let html = listing(&root.join("sub")).unwrap();
        assert!(html.contains("<a href=\"a%20b.log\">a b.log</a>"), "{html}");
    }
}
