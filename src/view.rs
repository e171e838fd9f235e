//! `nodelet pods`: the local endpoint's pod list as a table for a person.

use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

#[derive(Deserialize)]
struct Item {
    metadata: ObjectMeta,
    #[serde(default)]
    status: Option<PodStatus>,
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<Item>,
}

/// "5s", "3m", "2h", "4d", as kubectl prints ages.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let s = (now.as_second() - since.as_second()).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn state(c: &ContainerStatus, now: Timestamp) -> String {
    let st = c.state.clone().unwrap_or_default();
    if let Some(r) = st.running {
        let since = r.started_at.map(|t| format!(" for {}", age(t.0, now))).unwrap_or_default();
        return format!("Running{since}");
    }
    if let Some(t) = st.terminated {
        return format!("Terminated: exit {} ({})", t.exit_code, t.reason.unwrap_or_default());
    }
    if let Some(w) = st.waiting {
        return format!("Waiting: {}", w.reason.unwrap_or_default());
    }
    "Unknown".into()
}

fn last_exit(c: &ContainerStatus, now: Timestamp) -> String {
    let Some(t) = c.last_state.as_ref().and_then(|l| l.terminated.as_ref()) else { return "-".into() };
    let when = t.finished_at.as_ref().map(|f| format!(", {} ago", age(f.0, now))).unwrap_or_default();
    format!("exit {} ({}){when}", t.exit_code, t.reason.clone().unwrap_or_default())
}

/// Renders the `/pods` answer.
pub fn pods_table(body: &[u8], now: Timestamp) -> Result<String, serde_json::Error> {
    let mut list: List = serde_json::from_slice(body)?;
    list.items.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    let mut rows = vec![[
        "NAMESPACE".to_string(),
        "NAME".into(),
        "PHASE".into(),
        "READY".into(),
        "RESTARTS".into(),
        "AGE".into(),
        "IP".into(),
    ]];
    let mut details = Vec::new();
    for item in &list.items {
        let st = item.status.clone().unwrap_or_default();
        let cs = st.container_statuses.clone().unwrap_or_default();
        let ready = cs.iter().filter(|c| c.ready).count();
        let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
        rows.push([
            item.metadata.namespace.clone().unwrap_or_default(),
            item.metadata.name.clone().unwrap_or_default(),
            st.phase.clone().unwrap_or_default(),
            format!("{ready}/{}", cs.len()),
            restarts.to_string(),
            st.start_time.as_ref().map(|t| age(t.0, now)).unwrap_or_else(|| "-".into()),
            st.pod_ip.clone().unwrap_or_else(|| "-".into()),
        ]);
        let mut lines = Vec::new();
        let init = st.init_container_statuses.clone().unwrap_or_default();
        for c in &init {
            // An init container's ready and started flags say nothing a
            // person needs: it has either completed or not.
            let done = c.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0);
            let state = if done { "Completed".to_string() } else { state(c, now) };
            lines.push(format!("  init {}: {state}  restarts={}  last={}", c.name, c.restart_count, last_exit(c, now)));
        }
        for c in &cs {
            lines.push(format!(
                "  {}: {}  ready={} started={}  restarts={}  last={}",
                c.name,
                state(c, now),
                c.ready,
                c.started.unwrap_or(false),
                c.restart_count,
                last_exit(c, now)
            ));
        }
        details.push(lines);
    }
    let widths: Vec<usize> = (0..7).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let line: Vec<String> = row.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
        if n > 0 {
            for d in &details[n - 1] {
                out.push_str(d);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_phase_restarts_and_last_exit() {
        let body = serde_json::json!({"items": [{
            "metadata": {"name": "web-n1", "namespace": "default"},
            "status": {"phase": "Running", "podIP": "10.88.0.4", "startTime": "2026-01-01T00:00:00Z",
              "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 2,
                "state": {"running": {"startedAt": "2026-01-01T00:01:00Z"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T00:00:59Z"}}}]}
        }]});
        let now: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let out = pods_table(body.to_string().as_bytes(), now).unwrap();
        assert!(out.contains("default     web-n1   Running   1/1     2          5m    10.88.0.4"), "{out}");
        assert!(out.contains("  app: Running for 4m  ready=true started=false  restarts=2  last=exit 1 (Error), 4m ago"), "{out}");
    }

    #[test]
    fn a_completed_init_container_says_so() {
        let body = serde_json::json!({"items": [{
            "metadata": {"name": "web-n1", "namespace": "default"},
            "status": {"phase": "Running",
              "initContainerStatuses": [{"name": "prep", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
              "containerStatuses": []}
        }]});
        let now: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let out = pods_table(body.to_string().as_bytes(), now).unwrap();
        assert!(out.contains("  init prep: Completed  restarts=0  last=-"), "{out}");
        assert!(!out.contains("ready=true started=false"), "{out}");
    }
}

/// The pulls in flight under the pods table (nothing when there are none).
pub fn pulls_table(pulls: &[crate::pulls::Progress]) -> String {
    use std::fmt::Write;
    if pulls.is_empty() {
        return String::new();
    }
    let mut s = String::from("\nPULLING IMAGE                                    PODS                     PROGRESS\n");
    for p in pulls {
        let pct = if p.total_bytes > 0 { format!(" ({}%)", p.done_bytes.saturating_mul(100) / p.total_bytes) } else { String::new() };
        let _ = writeln!(
            s,
            "{:<48} {:<24} {} of {}{pct}, {:.0}s",
            p.image,
            p.pods.join(","),
            crate::pulls::mib(p.done_bytes),
            crate::pulls::mib(p.total_bytes),
            p.seconds
        );
    }
    s
}
