//! Static pods from a URL (`--manifest-url`, `staticPodURL`): a Pod or a
//! PodList in YAML or JSON, fetched every `httpCheckFrequency` (20 s) with
//! the configured headers. A failed fetch or a bad document keeps the last
//! good set, with one error line per distinct problem.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::{Problems, SeenTimes, SourceName, SourceUpdate, drop_duplicates};
use crate::pods::manifest::{self, StaticOrigin};

pub struct HttpSource {
    url: String,
    headers: Vec<(String, String)>,
    node_name: String,
    check_every: Duration,
    client: reqwest::Client,
    seen: SeenTimes,
    problems: Problems,
    last_body: Option<Vec<u8>>,
    last_errors: Option<Vec<String>>,
}

impl HttpSource {
    pub fn new(url: String, headers: Vec<(String, String)>, node_name: String, check_every: Duration) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Self {
            url,
            headers,
            node_name,
            check_every,
            client,
            seen: SeenTimes::default(),
            problems: Problems::default(),
            last_body: None,
            last_errors: None,
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let mut req = self.client.get(&self.url);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| format!("{}: fetch failed: {e}", self.url))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("{}: fetch failed: HTTP {status}", self.url));
        }
        // Read no further than the largest document nodelet decodes.
        let max = crate::decode::MAX_DOCUMENT_BYTES;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(format!("{}: the body is larger than {max} bytes (the most nodelet reads)", self.url));
        }
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{}: reading the body: {e}", self.url))? {
            if body.len().saturating_add(chunk.len()) > max {
                return Err(format!("{}: the body is larger than {max} bytes (the most nodelet reads)", self.url));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Decodes a body into the pods it defines.
    pub fn decode(&mut self, body: &[u8]) -> Result<Vec<Pod>, String> {
        let origin = StaticOrigin::Http(self.url.clone());
        let decoded = manifest::decode_pods(body, &self.url).map_err(|e| e.to_string())?;
        let mut pods = Vec::new();
        let mut unknown_fields = Vec::new();
        for (i, d) in decoded.into_iter().enumerate() {
            let (pod, unknown) = manifest::finish_static(d, &self.node_name, &origin).map_err(|e| e.to_string())?;
            unknown_fields.extend(unknown);
            pods.push((format!("{} item {i}", self.url), pod));
        }
        let fields = (!unknown_fields.is_empty()).then(|| format!("{}: ignored: {}", self.url, unknown_fields.join("; ")));
        self.problems.set("unknown", fields, true);
        let (mut pods, dropped) = drop_duplicates(pods);
        self.problems.set("duplicates", (!dropped.is_empty()).then(|| dropped.join("; ")), false);
        self.seen.stamp(&mut pods);
        Ok(pods)
    }

    /// Runs until the receiver goes away.
    pub async fn run(mut self, tx: mpsc::Sender<SourceUpdate>) {
        let mut tick = tokio::time::interval(self.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            let pods = match self.fetch().await {
                Err(e) => {
                    self.problems.set("fetch", Some(e), false);
                    None
                }
                Ok(body) if self.last_body.as_ref() == Some(&body) => {
                    self.problems.set("fetch", None, false);
                    None
                }
                Ok(body) => {
                    self.problems.set("fetch", None, false);
                    match self.decode(&body) {
                        Ok(pods) => {
                            self.last_body = Some(body);
                            self.problems.set("decode", None, false);
                            Some(pods.into_iter().map(Arc::new).collect())
                        }
                        Err(e) => {
                            self.problems.set("decode", Some(format!("{e} (the last good set of pods from this URL stays)")), false);
                            None
                        }
                    }
                }
            };
            let errors = self.problems.errors();
            if pods.is_some() || self.last_errors.as_ref() != Some(&errors) {
                self.last_errors = Some(errors.clone());
                if tx.send(SourceUpdate { source: SourceName::Http, pods, errors }).await.is_err() {
                    return;
                }
            }
        }
    }
}
