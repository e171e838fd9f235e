//! The CRI log format (`<time> <stream> <P|F> <text>` per line) and
//! kubelet's termination messages: what a container wrote to its
//! `terminationMessagePath` (a file nodelet bind-mounts there), or, with
//! `FallbackToLogsOnError` and a failure, the end of its log.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses one line (without its newline); None when it is not CRI format.
pub fn parse_line(line: &[u8]) -> Option<CriLine<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(CriLine { time, stream, partial: tag.split(|b| *b == b':').next() == Some(b"P"), text })
}

/// kubelet's MaxContainerTerminationMessageLength: the file's last 4 KiB.
pub const MAX_MESSAGE: u64 = 4 * 1024;
/// kubelet's MaxContainerTerminationMessageLogLength and ...LogLines.
pub const MAX_MESSAGE_FROM_LOG: usize = 2 * 1024;
pub const MESSAGE_LOG_LINES: usize = 80;

/// The last `max` bytes of a file.
fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// What the message file says: `(message, read the log instead)`, as
/// kubelet's getTerminationMessage. `host_file` is the bind-mounted file,
/// `fallback` whether FallbackToLogsOnError applies (the policy, and a
/// non-zero exit).
pub fn message_from_file(host_file: Option<&Path>, fallback: bool) -> (String, bool) {
    let Some(path) = host_file else { return (String::new(), fallback) };
    match read_tail(path, MAX_MESSAGE) {
        Ok(data) => {
            let empty = data.is_empty();
            (String::from_utf8_lossy(&data).into_owned(), fallback && empty)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), fallback),
        Err(e) => (format!("Error on reading termination log {}: {e}", path.display()), false),
    }
}

/// The end of a container's CRI log as text: its last 80 lines, at most
/// 2 KiB (the last bytes of them), partial lines joined. A line the
/// container never ended (the runtime writes it as partial when the stream
/// closes) gets no newline, as kubelet reads it: `echo -n DONE` is "DONE".
pub fn message_from_log(log: &Path) -> String {
    // 80 lines of up to 16 KiB each are more than enough to look at.
    let Ok(raw) = read_tail(log, 256 * 1024) else { return String::new() };
    // Each line's text, and whether it was ended.
    let mut lines: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut open = false;
    for l in raw.split(|b| *b == b'\n') {
        let Some(line) = parse_line(l) else { continue };
        if open && let Some(last) = lines.last_mut() {
            last.0.extend_from_slice(line.text);
            last.1 = !line.partial;
        } else {
            lines.push((line.text.to_vec(), !line.partial));
        }
        open = line.partial;
    }
    let start = lines.len().saturating_sub(MESSAGE_LOG_LINES);
    let mut text: Vec<u8> = Vec::new();
    for (l, ended) in &lines[start..] {
        text.extend_from_slice(l);
        if *ended {
            text.push(b'\n');
        }
    }
    let cut = text.len().saturating_sub(MAX_MESSAGE_FROM_LOG);
    String::from_utf8_lossy(&text[cut..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_and_its_last_4_kib_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("msg");
        std::fs::write(&f, "x".repeat(5000) + "end").unwrap();
        let (m, logs) = message_from_file(Some(&f), true);
        assert_eq!(m.len(), 4096);
        assert!(m.ends_with("end") && !logs);
        std::fs::write(&f, "").unwrap();
        assert_eq!(message_from_file(Some(&f), true), (String::new(), true), "empty: the logs, under FallbackToLogsOnError");
        assert_eq!(message_from_file(Some(&f), false), (String::new(), false));
        assert_eq!(message_from_file(Some(&dir.path().join("gone")), true), (String::new(), true));
    }

    #[test]
    fn the_log_fallback_joins_partials_and_keeps_the_last_80_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("2026-01-01T00:00:00Z stdout F line {i}\n"));
        }
        text.push_str("2026-01-01T00:00:01Z stderr P fatal: \n2026-01-01T00:00:01Z stderr F disk full\n");
        std::fs::write(&log, text).unwrap();
        let m = message_from_log(&log);
        assert!(m.ends_with("line 99\nfatal: disk full\n"), "{m}");
        assert!(m.starts_with("line 21\n"), "80 lines: {m}");
        // `echo -n DONE; false`: containerd writes the unended line as partial
        // when the stream closes; kubelet's message is "DONE" (upstream's
        // "should report termination message from log output" case).
        std::fs::write(&log, "2026-01-01T00:00:00Z stdout P DONE\n").unwrap();
        assert_eq!(message_from_log(&log), "DONE");
    }
}
