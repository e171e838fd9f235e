//! Container logs as `kubectl logs` gets them: the CRI log file read back
//! with kubelet's options. Each line of the file is
//! `<RFC3339Nano time> <stdout|stderr> <P|F> <text>`; partial lines (`P`) are
//! joined with what follows until the full (`F`) one. `tailLines`,
//! `sinceSeconds`/`sinceTime`, `timestamps` and `limitBytes` apply to the
//! joined lines, both streams together in file order; `follow` keeps reading
//! as the file grows, goes on in the new file when the log is rotated, and
//! ends once the container has stopped and the file is read to its end.
//!
//! A log file is opened only inside the pod's own log directory: never
//! through a symbolic link (a container that can write its log directory,
//! through a hostPath, cannot make `kubectl logs` read another file), and
//! only a regular file. A line longer than [`MAX_LINE`] without its newline
//! (no runtime writes one; the file was written by something else) is
//! dropped to its end rather than held.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// kubelet's log options (the pods/log query parameters).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<i64>,
    /// Only lines at or after this time.
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<i64>,
    pub previous: bool,
}

impl LogOptions {
    /// From a query string; a bad value is an error naming the parameter.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut o = LogOptions::default();
        let flag = |v: &str| v.is_empty() || v == "true" || v == "1";
        for (k, v) in form_pairs(query) {
            let number = |name: &str| v.parse::<i64>().map_err(|_| format!("{name}: invalid value {v:?}: must be an integer"));
            match k.as_str() {
                "follow" => o.follow = flag(&v),
                "previous" => o.previous = flag(&v),
                "timestamps" => o.timestamps = flag(&v),
                "tailLines" => o.tail_lines = Some(number("tailLines")?.max(0)),
                "limitBytes" => {
                    let n = number("limitBytes")?;
                    if n < 1 {
                        return Err(format!("limitBytes: invalid value {n}: must be greater than 0"));
                    }
                    o.limit_bytes = Some(n);
                }
                "sinceSeconds" => {
                    let n = number("sinceSeconds")?;
                    if n < 1 {
                        return Err(format!("sinceSeconds: invalid value {n}: must be greater than 0"));
                    }
                    let back = k8s_openapi::jiff::SignedDuration::from_secs(n);
                    o.since = Some(Timestamp::now().checked_sub(back).unwrap_or(Timestamp::MIN));
                }
                "sinceTime" => o.since = Some(v.parse().map_err(|e| format!("sinceTime: invalid value {v:?}: {e}"))?),
                _ => {}
            }
        }
        Ok(o)
    }
}

/// `k=v&k2=v2`, percent-decoded.
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

pub use crate::runtime::cri_log::{CriLine, parse_line};

/// Joins partial lines into whole ones and applies the per-line options.
/// Feed it file bytes; it returns what to send. Fragments of a long line
/// are passed on as they come (the runtime splits lines at 16 KiB), never
/// held: a container writing one endless line costs no memory here. The
/// first fragment's time decides `since` and `timestamps` for its line.
#[derive(Debug, Default)]
pub struct Joiner {
    pending: Vec<u8>,
    /// Dropping an overlong file line up to its newline.
    overlong: bool,
    /// Inside a line whose first fragment was already seen.
    in_line: bool,
    /// That line is before `since`: its fragments are dropped.
    skipping: bool,
    since: Option<Timestamp>,
    timestamps: bool,
    /// Bytes still allowed out; None = no limit.
    budget: Option<i64>,
}

impl Joiner {
    pub fn new(o: &LogOptions) -> Self {
        Joiner { since: o.since, timestamps: o.timestamps, budget: o.limit_bytes, ..Default::default() }
    }

    /// Whether the byte limit has been reached.
    pub fn exhausted(&self) -> bool {
        self.budget.is_some_and(|b| b <= 0)
    }

    /// Takes file bytes; returns the output for every complete file line in them.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<u8> {
        if self.overlong {
            match data.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    self.overlong = false;
                    data = &data[nl + 1..];
                }
                None => return Vec::new(),
            }
        }
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = self.pending[start..start + nl].to_vec();
            start += nl + 1;
            self.line(&line, &mut out);
            if self.exhausted() {
                break;
            }
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE {
            tracing::debug!(bytes = self.pending.len(), "a log file line longer than any runtime writes: dropped");
            self.pending = Vec::new();
            self.overlong = true;
        }
        out
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let Some(l) = parse_line(raw) else { return };
        let mut piece = Vec::with_capacity(l.text.len() + 40);
        if !self.in_line {
            self.skipping = self.since.is_some_and(|since| l.time.parse::<Timestamp>().is_ok_and(|t| t < since));
            if self.timestamps {
                piece.extend_from_slice(l.time.as_bytes());
                piece.push(b' ');
            }
        }
        self.in_line = l.partial;
        if self.skipping {
            return;
        }
        piece.extend_from_slice(l.text);
        if !l.partial {
            piece.push(b'\n');
        }
        if let Some(b) = &mut self.budget {
            let take = (*b).min(piece.len() as i64).max(0) as usize;
            piece.truncate(take);
            *b -= take as i64;
        }
        out.extend_from_slice(&piece);
    }
}

/// The longest file line kept while waiting for its newline: the runtime
/// splits lines at 16 KiB of text, plus its time, stream and tag.
pub const MAX_LINE: usize = 64 * 1024;

/// Opens the log file `path` for reading only if it is a regular file that
/// really lies in the pod's log directory, `<logs_root>/<pod_dir>`: the last
/// component is opened with O_NOFOLLOW, and the opened file's own path (from
/// /proc/self/fd, as the kernel resolved it) must be under the real
/// `logs_root` joined with `pod_dir`, so a link anywhere on the way (the
/// pod's directory, the container's, or the file) is refused.
pub async fn open_confined(path: &Path, logs_root: &Path, pod_dir: &str) -> std::io::Result<tokio::fs::File> {
    let (path, logs_root, pod_dir) = (path.to_path_buf(), logs_root.to_path_buf(), pod_dir.to_string());
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        let refused = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| if e.raw_os_error() == Some(nix::libc::ELOOP) { refused(format!("{} is a symbolic link", path.display())) } else { e })?;
        if !file.metadata()?.file_type().is_file() {
            return Err(refused(format!("{} is not a regular file", path.display())));
        }
        let real = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)))?;
        let dir = std::fs::canonicalize(&logs_root)?.join(&pod_dir);
        if pod_dir.is_empty() || pod_dir.contains('/') || !real.starts_with(&dir) {
            return Err(refused(format!("{} leads out of the pod's log directory {}", path.display(), dir.display())));
        }
        Ok(tokio::fs::File::from_std(file))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Where to start reading for the last `n` log lines: the offset after the
/// `n+1`-th newline from the end (whole CRI lines; a partial line counts as a
/// line here, as kubelet's tail counts file lines).
pub async fn tail_offset(file: &mut tokio::fs::File, n: i64) -> std::io::Result<u64> {
    let len = file.metadata().await?.len();
    if n <= 0 {
        return Ok(len);
    }
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut seen = 0i64;
    // The last byte is the final newline of the last line: skip it.
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let mut buf = vec![0u8; (end - start) as usize];
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut buf).await?;
        for i in (0..buf.len()).rev() {
            if buf[i] != b'\n' {
                continue;
            }
            if skip_last && start + i as u64 == len - 1 {
                skip_last = false;
                continue;
            }
            seen += 1;
            if seen == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

/// Streams a log file with the options into `tx`. `running` says whether the
/// container still runs (for `follow`). Ends when the client goes away.
pub async fn stream(
    path: PathBuf,
    (logs_root, pod_dir): (&Path, &str),
    o: LogOptions,
    tx: mpsc::Sender<Bytes>,
    running: impl Fn() -> futures::future::BoxFuture<'static, bool>,
) -> std::io::Result<()> {
    let mut file = open_confined(&path, logs_root, pod_dir).await?;
    let start = match o.tail_lines {
        Some(n) => tail_offset(&mut file, n).await?,
        None => 0,
    };
    file.seek(SeekFrom::Start(start)).await?;
    let mut joiner = Joiner::new(&o);
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle_checks = 0u32;
    loop {
        let n = file.read(&mut buf).await?;
        if n > 0 {
            idle_checks = 0;
            let out = joiner.feed(&buf[..n]);
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return Ok(());
            }
            if joiner.exhausted() {
                return Ok(());
            }
            continue;
        }
        if !o.follow {
            return Ok(());
        }
        // At the end of the file: wait for more, and stop once the
        // container has stopped (checked about every second).
        if tx.is_closed() {
            return Ok(());
        }
        // Rotated? While the path is missing the runtime still writes to the
        // renamed file; once the path is a new file it has reopened, so the
        // old one is complete (read to its end above): go on in the new one.
        if let Ok(now) = tokio::fs::metadata(&path).await {
            use std::os::unix::fs::MetadataExt;
            let open = file.metadata().await?;
            if now.ino() != open.ino() || now.dev() != open.dev() {
                // What reached the old file before the reopen.
                loop {
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    let out = joiner.feed(&buf[..n]);
                    if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                        return Ok(());
                    }
                }
                file = open_confined(&path, logs_root, pod_dir).await?;
                idle_checks = 0;
                continue;
            }
        }
        idle_checks += 1;
        if idle_checks.is_multiple_of(10) && !running().await {
            // One last read for what the container wrote as it exited.
            let n = file.read(&mut buf).await?;
            if n > 0 {
                let out = joiner.feed(&buf[..n]);
                let _ = tx.send(Bytes::from(out)).await;
                continue;
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:01.000000001Z stdout F one\n\
                       2026-01-01T00:00:02.5Z stderr F two\n\
                       2026-01-01T00:00:03Z stdout P thr\n\
                       2026-01-01T00:00:03.1Z stdout F ee\n\
                       2026-01-01T00:00:04Z stdout F \n";

    fn run(o: &LogOptions, data: &str) -> String {
        let mut j = Joiner::new(o);
        String::from_utf8(j.feed(data.as_bytes())).unwrap()
    }

    #[test]
    fn partial_lines_join_and_both_streams_come_in_order() {
        assert_eq!(run(&LogOptions::default(), LOG), "one\ntwo\nthree\n\n");
        let ts = LogOptions { timestamps: true, ..Default::default() };
        assert!(run(&ts, LOG).starts_with("2026-01-01T00:00:01.000000001Z one\n2026-01-01T00:00:02.5Z two\n2026-01-01T00:00:03Z three\n"));
        // Fed in pieces, the same output.
        let mut j = Joiner::new(&LogOptions::default());
        let mut out = Vec::new();
        for chunk in LOG.as_bytes().chunks(7) {
            out.extend(j.feed(chunk));
        }
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\nthree\n\n");
    }

    #[test]
    fn a_long_line_streams_without_being_held() {
        let mut j = Joiner::new(&LogOptions::default());
        let frag = format!("2026-01-01T00:00:03Z stdout P {}\n", "z".repeat(16 * 1024));
        for _ in 0..100 {
            assert_eq!(j.feed(frag.as_bytes()).len(), 16 * 1024, "each fragment goes out at once");
        }
        assert!(j.pending.capacity() < 64 * 1024 && j.pending.is_empty());
        assert_eq!(j.feed(b"2026-01-01T00:00:04Z stdout F end\n"), b"end\n");
    }

    #[test]
    fn since_and_limit_bytes() {
        let since = LogOptions { since: Some("2026-01-01T00:00:02Z".parse().unwrap()), ..Default::default() };
        assert_eq!(run(&since, LOG), "two\nthree\n\n");
        let limit = LogOptions { limit_bytes: Some(6), ..Default::default() };
        assert_eq!(run(&limit, LOG), "one\ntw");
    }

    #[test]
    fn options_come_from_the_query() {
        let o = LogOptions::from_query("follow=true&tailLines=10&timestamps=true&limitBytes=100&previous=false").unwrap();
        assert_eq!((o.follow, o.tail_lines, o.timestamps, o.limit_bytes, o.previous), (true, Some(10), true, Some(100), false));
        let o = LogOptions::from_query("sinceTime=2026-01-01T00%3A00%3A02Z").unwrap();
        assert_eq!(o.since, Some("2026-01-01T00:00:02Z".parse().unwrap()));
        assert_eq!(LogOptions::from_query("tailLines=ten").unwrap_err(), "tailLines: invalid value \"ten\": must be an integer");
        assert!(LogOptions::from_query("limitBytes=0").is_err());
        assert!(LogOptions::from_query("sinceSeconds=99999999999999999").is_ok(), "a huge since never overflows");
    }

    #[tokio::test]
    async fn tail_finds_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        let mut f = tokio::fs::File::open(&path).await.unwrap();
        let at = tail_offset(&mut f, 2).await.unwrap();
        assert_eq!(&LOG[at as usize..], "2026-01-01T00:00:03.1Z stdout F ee\n2026-01-01T00:00:04Z stdout F \n");
        assert_eq!(tail_offset(&mut f, 100).await.unwrap(), 0);
        assert_eq!(tail_offset(&mut f, 0).await.unwrap(), LOG.len() as u64);
    }

    #[test]
    fn an_overlong_file_line_is_dropped_to_its_end_not_held() {
        let mut j = Joiner::new(&LogOptions::default());
        let junk = vec![b'x'; 40 * 1024];
        assert!(j.feed(&junk).is_empty());
        assert!(j.feed(&junk).is_empty());
        assert!(j.pending.len() <= MAX_LINE, "{} bytes held", j.pending.len());
        for _ in 0..100 {
            assert!(j.feed(&junk).is_empty());
        }
        assert!(j.pending.capacity() <= 2 * MAX_LINE, "{} bytes held", j.pending.capacity());
        assert_eq!(j.feed(b"still junk\n2026-01-01T00:00:04Z stdout F after\n"), b"after\n", "the next line comes through");
    }

    #[tokio::test]
    async fn a_log_is_read_only_from_inside_its_pods_directory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("pods");
        let pod = "default_web_u1";
        std::fs::create_dir_all(root.join(pod).join("c")).unwrap();
        std::fs::write(root.join(pod).join("c/0.log"), LOG).unwrap();
        std::fs::write(t.path().join("secret"), "not yours").unwrap();
        let open = |p: PathBuf, pod: &'static str| {
            let root = root.clone();
            async move { open_confined(&p, &root, pod).await }
        };
        assert!(open(root.join(pod).join("c/0.log"), pod).await.is_ok());
        // The file a link.
        std::os::unix::fs::symlink(t.path().join("secret"), root.join(pod).join("c/1.log")).unwrap();
        let e = open(root.join(pod).join("c/1.log"), pod).await.unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // The container's directory a link.
        std::os::unix::fs::symlink(t.path(), root.join(pod).join("d")).unwrap();
        let e = open(root.join(pod).join("d/secret"), pod).await.unwrap_err();
        assert!(e.to_string().contains("leads out"), "{e}");
        // The pod's directory a link to another pod's.
        std::fs::create_dir_all(root.join("default_other_u2/c")).unwrap();
        std::fs::write(root.join("default_other_u2/c/0.log"), LOG).unwrap();
        std::os::unix::fs::symlink(root.join("default_other_u2"), root.join("default_evil_u3")).unwrap();
        let e = open(root.join("default_evil_u3/c/0.log"), "default_evil_u3").await.unwrap_err();
        assert!(e.to_string().contains("leads out"), "{e}");
        // Another pod's file by a path with `..`.
        let e = open(root.join(pod).join("../default_other_u2/c/0.log"), pod).await.unwrap_err();
        assert!(e.to_string().contains("leads out"), "{e}");
        // A FIFO neither blocks nor is read.
        nix::unistd::mkfifo(&root.join(pod).join("c/2.log"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(5), open(root.join(pod).join("c/2.log"), pod)).await.expect("no blocking").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
