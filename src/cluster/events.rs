//! Events to the apiserver (events.k8s.io/v1), reported as kubelet on this
//! node. Recording never blocks a pod worker: events queue, and a full queue
//! drops the newest with a log.
//!
//! Correlated as kubelet's recorder correlates them (client-go's
//! EventCorrelator), on events.k8s.io series: the same event again (pod,
//! type, reason and message) within six minutes counts in the first one's
//! series; another message is another event ("Created container: init",
//! then "Created container: app"), until a pod has had ten different
//! messages for one reason within ten minutes, when the rest are one event
//! "(combined from similar events): ...". (kube-runtime's recorder keys a
//! series by reason alone, so a second message would be lost in the first's
//! count.) Notes are cut to the apiserver's 1024 bytes.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

use crate::pods::events::{EventRecorder, EventType, LogRecorder};
use crate::runtime::labels::PodIdentity;

type Queued = (PodIdentity, EventType, String, String);

/// How long a series stays open (kube-runtime's and the apiserver's sense
/// of "the same event again").
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// Similar events (one object and reason, other messages): how many get
/// their own event, and how long the count lasts after the last one.
const SIMILAR_OWN: usize = 9;
const SIMILAR_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The apiserver's limit on an Event's note.
pub const NOTE_LIMIT: usize = 1024;
const COMBINED: &str = "(combined from similar events): ";

/// One object's events of one type and reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Similar {
    namespace: String,
    name: String,
    uid: String,
    warning: bool,
    reason: String,
}

/// A series: `Similar` and its note (None: the combined event).
type Key = (Similar, Option<String>);

#[derive(Debug, Clone)]
struct Open {
    name: String,
    count: i32,
    last: Instant,
}

/// What to send for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new Event with this note.
    Create { note: String },
    /// The open Event `name`'s series, now `count`.
    Series { name: String, count: i32 },
}

/// The correlation state (pure: the clock is passed in).
#[derive(Default)]
pub struct Correlator {
    open: HashMap<Key, Open>,
    similar: HashMap<Similar, (BTreeSet<String>, Instant)>,
}

/// `note` cut to the apiserver's limit, on a character boundary.
pub fn cut(note: &str) -> &str {
    if note.len() <= NOTE_LIMIT {
        return note;
    }
    let mut end = NOTE_LIMIT;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    &note[..end]
}

impl Correlator {
    /// What an event becomes, and the series key to confirm it under.
    fn observe(&mut self, pod: &PodIdentity, kind: EventType, reason: &str, note: &str, now: Instant) -> (Key, Step) {
        self.open.retain(|_, o| now.duration_since(o.last) < SERIES_TTL);
        self.similar.retain(|_, (_, last)| now.duration_since(*last) <= SIMILAR_WINDOW);
        let similar = Similar {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            warning: kind == EventType::Warning,
            reason: reason.to_string(),
        };
        let (notes, last) = self.similar.entry(similar.clone()).or_insert_with(|| (BTreeSet::new(), now));
        *last = now;
        let (key_note, note) = if notes.contains(note) || notes.len() < SIMILAR_OWN {
            notes.insert(note.to_string());
            (Some(note.to_string()), cut(note).to_string())
        } else {
            (None, cut(&format!("{COMBINED}{note}")).to_string())
        };
        let key = (similar, key_note);
        let step = match self.open.get(&key) {
            Some(o) => Step::Series { name: o.name.clone(), count: o.count + 1 },
            None => Step::Create { note },
        };
        (key, step)
    }

    /// The apiserver has the event as `name` with `count`.
    fn confirm(&mut self, key: Key, name: String, count: i32, now: Instant) {
        self.open.insert(key, Open { name, count, last: now });
    }

    /// The open event is gone from the apiserver (expired, deleted).
    fn forget(&mut self, key: &Key) {
        self.open.remove(key);
    }
}

pub struct ApiRecorder {
    tx: mpsc::Sender<Queued>,
}

impl ApiRecorder {
    /// Starts the sender task; it ends when the recorder is dropped.
    /// `rate`: eventRecordQPS and eventBurst (None: no limit); events wait
    /// their turn in the queue.
    pub fn start(client: kube::Client, node: &str, rate: Option<crate::config::Rate>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Queued>(1024);
        let limiter = rate.map(|r| governor::RateLimiter::direct(super::client::quota(r)));
        let node = node.to_string();
        tokio::spawn(async move {
            let mut correlator = Correlator::default();
            while let Some((pod, kind, reason, message)) = rx.recv().await {
                if let Some(l) = &limiter {
                    l.until_ready().await;
                }
                let events: Api<Event> = Api::namespaced(client.clone(), &pod.namespace);
                let (key, step) = correlator.observe(&pod, kind, &reason, &message, Instant::now());
                let result = match step {
                    Step::Series { name, count } => {
                        let patch = serde_json::json!({"series": EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) }});
                        match events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                            Ok(_) => Ok((name, count)),
                            // Gone (the apiserver's TTL): a new event.
                            Err(kube::Error::Api(s)) if s.code == 404 => {
                                correlator.forget(&key);
                                let note = if key.1.is_some() { cut(&message).to_string() } else { cut(&format!("{COMBINED}{message}")).to_string() };
                                create(&events, &pod, kind, &reason, note, &node).await.map(|name| (name, 1))
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Step::Create { note } => create(&events, &pod, kind, &reason, note, &node).await.map(|name| (name, 1)),
                };
                match result {
                    Ok((name, count)) => correlator.confirm(key, name, count, Instant::now()),
                    Err(e) => tracing::debug!(error = %e, reason, "posting an event failed"),
                }
            }
        });
        Self { tx }
    }
}

/// Posts a new Event about the pod; its name.
async fn create(events: &Api<Event>, pod: &PodIdentity, kind: EventType, reason: &str, note: String, node: &str) -> Result<String, kube::Error> {
    let now = Timestamp::now();
    let event = Event {
        metadata: ObjectMeta { name: Some(format!("{}.{:x}", pod.name, now.as_nanosecond())), namespace: Some(pod.namespace.clone()), ..Default::default() },
        event_time: Some(MicroTime(now)),
        type_: Some(if kind == EventType::Warning { "Warning" } else { "Normal" }.into()),
        reason: Some(reason.to_string()),
        action: Some(reason.to_string()),
        note: Some(note),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        }),
        reporting_controller: Some("kubelet".into()),
        reporting_instance: Some(node.to_string()),
        ..Default::default()
    };
    let made = events.create(&PostParams::default(), &event).await?;
    Ok(made.metadata.name.unwrap_or_default())
}

impl EventRecorder for ApiRecorder {
    fn record(&self, pod: &PodIdentity, kind: EventType, reason: &str, message: &str) {
        LogRecorder.record(pod, kind, reason, message);
        if self.tx.try_send((pod.clone(), kind, reason.to_string(), message.to_string())).is_err() {
            tracing::debug!(reason, "the event queue is full; event dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodIdentity {
        PodIdentity { namespace: "ns".into(), name: "p".into(), uid: "u".into() }
    }

    #[test]
    fn the_same_event_counts_another_message_is_another_event_and_many_are_combined() {
        let mut c = Correlator::default();
        let t0 = Instant::now();
        let (k, s) = c.observe(&pod(), EventType::Normal, "Created", "Created container: init", t0);
        assert_eq!(s, Step::Create { note: "Created container: init".into() });
        c.confirm(k, "p.1".into(), 1, t0);
        let (k, s) = c.observe(&pod(), EventType::Normal, "Created", "Created container: init", t0);
        assert_eq!(s, Step::Series { name: "p.1".into(), count: 2 });
        c.confirm(k, "p.1".into(), 2, t0);
        // Another message, same reason: its own event.
        let (k2, s) = c.observe(&pod(), EventType::Normal, "Created", "Created container: app", t0);
        assert_eq!(s, Step::Create { note: "Created container: app".into() });
        c.confirm(k2, "p.2".into(), 1, t0);
        // A Warning of the same reason and message is not the Normal one.
        assert!(matches!(c.observe(&pod(), EventType::Warning, "Created", "Created container: init", t0).1, Step::Create { .. }));
        // After six minutes the series is closed: a new event.
        let later = t0 + SERIES_TTL;
        assert!(matches!(c.observe(&pod(), EventType::Normal, "Created", "Created container: init", later).1, Step::Create { .. }));

        // Nine messages of one reason get their own events; the tenth and
        // later are one combined event, counting on.
        let mut c = Correlator::default();
        for i in 0..SIMILAR_OWN {
            let (k, s) = c.observe(&pod(), EventType::Warning, "Unhealthy", &format!("probe failed: {i}"), t0);
            assert_eq!(s, Step::Create { note: format!("probe failed: {i}") });
            c.confirm(k, format!("p.{i}"), 1, t0);
        }
        let (k, s) = c.observe(&pod(), EventType::Warning, "Unhealthy", "probe failed: 9", t0);
        assert_eq!(s, Step::Create { note: "(combined from similar events): probe failed: 9".into() });
        c.confirm(k, "p.c".into(), 1, t0);
        assert_eq!(c.observe(&pod(), EventType::Warning, "Unhealthy", "probe failed: 10", t0).1, Step::Series { name: "p.c".into(), count: 2 });
        assert_eq!(c.observe(&pod(), EventType::Warning, "Unhealthy", "probe failed: 3", t0).1, Step::Series { name: "p.3".into(), count: 2 }, "a message seen before keeps its own");
        // Ten quiet minutes: the count starts again.
        let quiet = t0 + SIMILAR_WINDOW + Duration::from_secs(1);
        assert_eq!(c.observe(&pod(), EventType::Warning, "Unhealthy", "probe failed: 11", quiet).1, Step::Create { note: "probe failed: 11".into() });
    }

    #[test]
    fn a_long_note_is_cut_on_a_character_boundary() {
        let long = "é".repeat(NOTE_LIMIT);
        let cut = cut(&long);
        assert!(cut.len() <= NOTE_LIMIT && cut.len() >= NOTE_LIMIT - 1);
        assert!(long.starts_with(cut));
        assert_eq!(super::cut("short"), "short");
    }
}
