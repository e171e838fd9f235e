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
//! Two sessions on one container that begin within the same moment cannot
//! be told apart; each then also claims the other's process.

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

/// An exec session being watched.
pub struct Session {
    init: u32,
    before: BTreeSet<Proc>,
}

impl Session {
    /// Notes the container's exec processes before the session starts.
    pub fn begin(init: u32) -> Self {
        Self { init, before: exec_processes(init) }
    }

    /// Runs until `closed` resolves (the client's connection ended), then
    /// ends the session's process if it still runs.
    pub async fn watch(self, closed: impl Future<Output = ()>) {
        tokio::pin!(closed);
        // The runtime starts the process once the client has connected.
        let mut mine = BTreeSet::new();
        let mut ended = false;
        for _ in 0..20 {
            tokio::select! {
                _ = &mut closed => {
                    ended = true;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let init = self.init;
            mine = tokio::task::spawn_blocking(move || exec_processes(init)).await.unwrap_or_default();
            mine.retain(|p| !self.before.contains(p));
            if !mine.is_empty() {
                break;
            }
        }
        tracing::debug!(init = self.init, session = ?mine, "exec session's processes");
        if !ended {
            closed.await;
        }
        let left: Vec<Proc> = mine.into_iter().filter(|p| alive(*p)).collect();
        if left.is_empty() {
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
