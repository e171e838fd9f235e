//! Static pods from a URL (`--manifest-url`, `staticPodURL`): a Pod or a
//! PodList in YAML or JSON, fetched every `httpCheckFrequency` (20 s) with
//! the configured headers. A failed fetch or a bad document keeps the last
//! good set, with one error line per distinct problem.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::{SeenTimes, SourceName, SourceUpdate, drop_duplicates};
use crate::pods::manifest::{self, StaticOrigin};

pub struct HttpSource {
    url: String,
    headers: Vec<(String, String)>,
    node_name: String,
    check_every: Duration,
    client: reqwest::Client,
    seen: SeenTimes,
    reported: HashSet<String>,
    last_body: Option<Vec<u8>>,
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
            reported: HashSet::new(),
            last_body: None,
        }
    }

    fn report(&mut self, msg: String) {
        if self.reported.insert(msg.clone()) {
            tracing::error!("{msg}");
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
        resp.bytes().await.map(|b| b.to_vec()).map_err(|e| format!("{}: reading the body: {e}", self.url))
    }

    /// Decodes a body into the pods it defines.
    pub fn decode(&mut self, body: &[u8]) -> Result<Vec<Pod>, String> {
        let origin = StaticOrigin::Http(self.url.clone());
        let decoded = manifest::decode_pods(body, &self.url).map_err(|e| e.to_string())?;
        let mut pods = Vec::new();
        for (i, d) in decoded.into_iter().enumerate() {
            let (pod, unknown) = manifest::finish_static(d, &self.node_name, &origin).map_err(|e| e.to_string())?;
            for field in unknown {
                let msg = format!("{}: {field}: unknown field, ignored", self.url);
                if self.reported.insert(msg.clone()) {
                    tracing::warn!("{msg}");
                }
            }
            pods.push((format!("{} item {i}", self.url), pod));
        }
        let mut pods = drop_duplicates(pods, &mut self.reported);
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
            let body = match self.fetch().await {
                Ok(b) => b,
                Err(e) => {
                    self.report(e);
                    continue;
                }
            };
            if self.last_body.as_ref() == Some(&body) {
                continue;
            }
            match self.decode(&body) {
                Ok(pods) => {
                    self.last_body = Some(body);
                    self.reported.clear();
                    let update = SourceUpdate { source: SourceName::Http, pods: pods.into_iter().map(Arc::new).collect() };
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
                Err(e) => self.report(format!("{e} (the last good set of pods from this URL stays)")),
            }
        }
    }
}
