//! Ends what an exec session left running once its client has gone.
//!
//! CRI gives no handle on the process an Exec starts, and containerd keeps
//! it when the connection closes: with kubelet, a `kubectl exec -it` whose
//! terminal was closed leaves its shell in the container for good. nodelet
//! finds the session's process itself: runc starts it as a child of the
//! container's shim, in the container's mount namespace, so it is a child
//! of the init process's parent that shares the init's mount namespace and
//! was not there before the session began. When the connection closes and
//! that process is still alive, its session (a terminal's, when it has one)
//! is hung up as a terminal would be, then killed; a process that ended on
//! its own is left alone, and so are the background processes it started.
//!
//! A session's process is told apart by two things. Its command line: the
//! new process whose argv is exactly the command the client asked for (runc
//! execs it in place, so until then the process is `runc init` and is not
//! taken). And its turn: sessions on one container start one at a time, a
//! session beginning only once the one before it has found its process (or
//! given up looking), so no two sessions look at once. A process claimed by
//! one session is never claimed by another; processes that CRI ExecSync
//! starts (probes, `crictl exec -s`) have other command lines, and if two
//! new processes match, the session claims neither rather than guess. A
//! session only ever signals what it claimed (and that process's session or
//! descendants).

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process as /proc shows it: PID and start time (in clock ticks since
/// boot), which together survive PID reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Proc {
    pub pid: u32,
    pub start: u64,
}

/// The fields of /proc/<pid>/stat nodelet reads: parent, session, start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    pub session: u32,
    pub start: u64,
}

/// Parses /proc/<pid>/stat (the command may hold spaces and parentheses:
/// the fields start after the last `)`).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is the state (field 3): ppid is field 4, session 6, starttime 22.
    Some(Stat { ppid: f.get(1)?.parse().ok()?, session: f.get(3)?.parse().ok()?, start: f.get(19)?.parse().ok()? })
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A process's argv, from /proc/<pid>/cmdline.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
    Some(raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

fn mount_ns(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The processes exec sessions run in the container whose init is `init`.
pub fn exec_processes(init: u32) -> BTreeSet<Proc> {
    let (Some(init_stat), Some(ns)) = (stat(init), mount_ns(init)) else { return BTreeSet::new() };
    all_pids()
        .into_iter()
        .filter(|p| *p != init)
        .filter_map(|p| {
            let s = stat(p)?;
            (s.ppid == init_stat.ppid && mount_ns(p).as_ref() == Some(&ns)).then_some(Proc { pid: p, start: s.start })
        })
        .collect()
}

fn alive(p: Proc) -> bool {
    stat(p.pid).is_some_and(|s| s.start == p.start)
}

/// The processes to signal for `root`: its session when it leads one (what
/// a terminal hangup reaches), else it and its descendants.
fn group_of(root: Proc) -> Vec<u32> {
    let stats: Vec<(u32, Stat)> = all_pids().into_iter().filter_map(|p| Some((p, stat(p)?))).collect();
    let leads_session = stats.iter().any(|(p, s)| *p == root.pid && s.session == root.pid);
    if leads_session {
        return stats.iter().filter(|(_, s)| s.session == root.pid).map(|(p, _)| *p).collect();
    }
    let mut out = vec![root.pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(stats.iter().filter(|(_, s)| s.ppid == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// Containers with a session starting (its process not yet found), and
/// the processes sessions own.
static STARTING: std::sync::Mutex<BTreeSet<u32>> = std::sync::Mutex::new(BTreeSet::new());
static CLAIMED: std::sync::Mutex<BTreeSet<Proc>> = std::sync::Mutex::new(BTreeSet::new());
static RELEASED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The turn of one session to start on a container; released on drop.
struct Turn(u32);

impl Drop for Turn {
    fn drop(&mut self) {
        STARTING.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
        RELEASED.notify_waiters();
    }
}

/// How long a session waits for the one before it on the same container.
const TURN_WAIT: Duration = Duration::from_secs(10);
/// How long a session looks for its process once the client is connected.
const FIND_WAIT: Duration = Duration::from_secs(5);

/// An exec session being watched.
pub struct Session {
    init: u32,
    command: Vec<String>,
    before: BTreeSet<Proc>,
    turn: Option<Turn>,
}

impl Session {
    /// Waits for this container's previous session to have found its
    /// process, then notes the container's exec processes before this one
    /// starts.
    pub async fn begin(init: u32, command: Vec<String>) -> Self {
        let deadline = tokio::time::Instant::now() + TURN_WAIT;
        let turn = loop {
            let released = RELEASED.notified();
            if STARTING.lock().unwrap_or_else(|e| e.into_inner()).insert(init) {
                break Some(Turn(init));
            }
            // (A session that never ends its turn holds nobody longer than this.)
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                break None;
            }
        };
        let before = tokio::task::spawn_blocking(move || exec_processes(init)).await.unwrap_or_default();
        tracing::debug!(init, ?command, turn = turn.is_some(), before = before.len(), "exec session begins");
        Self { init, command, before, turn }
    }

    /// Runs until `closed` resolves (the client's connection ended), then
    /// ends the session's process if it still runs.
    pub async fn watch(mut self, closed: impl Future<Output = ()>) {
        tokio::pin!(closed);
        // The runtime starts the process once the client has connected.
        let mut mine = BTreeSet::new();
        let mut ended = false;
        let deadline = tokio::time::Instant::now() + FIND_WAIT;
        // Scans left once the client has gone: its process may have
        // started all the same (a client can leave within a moment).
        let mut after_close = 3;
        while tokio::time::Instant::now() < deadline && after_close > 0 {
            if ended {
                after_close -= 1;
            } else {
                tokio::select! {
                    _ = &mut closed => ended = true,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            let (init, command) = (self.init, self.command.clone());
            let claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let before = std::mem::take(&mut self.before);
            let (found, before) = tokio::task::spawn_blocking(move || {
                let found: BTreeSet<Proc> = exec_processes(init)
                    .into_iter()
                    .filter(|p| !before.contains(p) && !claimed.contains(p) && cmdline(p.pid).as_deref() == Some(command.as_slice()))
                    .collect();
                (found, before)
            })
            .await
            .unwrap_or_default();
            self.before = before;
            match found.len() {
                0 => {
                    if ended {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
                1 => mine = found,
                _ => tracing::warn!(init = self.init, "two new processes run the exec session's command; neither is claimed"),
            }
            break;
        }
        // A session that waited past its turn shares the container's start
        // with another: what appeared cannot be told apart, so it claims
        // nothing rather than risk another session's process.
        if self.turn.is_none() {
            mine.clear();
        }
        CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).extend(mine.iter().copied());
        // The next session on this container may start now.
        drop(self.turn.take());
        tracing::debug!(init = self.init, command = ?self.command, session = ?mine, ended, turn = self.turn.is_some(), "exec session's processes");
        let release = Claimed(mine.clone());
        if !ended {
            closed.await;
        }
        let left: Vec<Proc> = mine.into_iter().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            drop(release);
            return;
        }
        tracing::info!(pids = ?left.iter().map(|p| p.pid).collect::<Vec<_>>(), "the exec client has gone; ending its processes");
        for (signal, wait) in [(Signal::SIGHUP, Duration::from_secs(2)), (Signal::SIGKILL, Duration::ZERO)] {
            for p in left.iter().filter(|p| alive(**p)) {
                for pid in group_of(*p) {
                    let _ = kill(Pid::from_raw(pid as i32), signal);
                }
            }
            if left.iter().all(|p| !alive(*p)) {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// A session's claimed processes, let go of when it ends.
struct Claimed(BTreeSet<Proc>);

impl Drop for Claimed {
    fn drop(&mut self) {
        let mut c = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        for p in &self.0 {
            c.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_odd_command_name() {
        let line = "4321 (sh (odd) name) S 100 4321 4321 34816 4321 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3";
        assert_eq!(parse_stat(line), Some(Stat { ppid: 100, session: 4321, start: 987654 }));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_command_line_is_read_as_its_argv() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30; true", "an argument with spaces"]).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cmdline(child.id()).is_some_and(|a| a[0] != "sh") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cmdline(child.id()).unwrap(), ["sh", "-c", "sleep 30; true", "an argument with spaces"]);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn this_process_is_seen_and_its_children_are_its_group() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert!(alive(Proc { pid: me, start: s.start }));
        assert!(!alive(Proc { pid: me, start: s.start + 1 }), "a reused PID is not the same process");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let group = group_of(Proc { pid: me, start: s.start });
        assert!(group.contains(&child.id()) || s.session == me, "{group:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
