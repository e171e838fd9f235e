//! Image garbage collection and the node's image list, as kubelet's image
//! GC manager: every period (5 minutes) the runtime's images are listed and
//! each is remembered with when it was first seen and last in use (by any
//! container, running or not, or as the sandbox image). Images unused for
//! `imageMaximumGCAge` go; then, when the image filesystem is at least
//! `imageGCHighThresholdPercent` full, unused images go, least recently used
//! first, none younger than `imageMinimumGCAge`, until it is down to
//! `imageGCLowThresholdPercent`. Never an image in use, pinned, or the
//! sandbox image. The same listing gives the node status its `images`
//! (largest first, at most `nodeStatusMaxImages`).

#![deny(clippy::arithmetic_side_effects)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ContainerImage;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ImageGcPolicy;
use crate::clock::UnixNanos;
use crate::runtime::{Runtime, cri};

/// kubelet's MaxNamesPerImageInNodeStatus.
const MAX_NAMES_PER_IMAGE: usize = 5;

/// One image as the collector sees it. Times are ns since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: String,
    pub size: u64,
    pub in_use: bool,
    pub pinned: bool,
    pub first_detected: UnixNanos,
    pub last_used: UnixNanos,
}

/// The image filesystem: its size and what is free, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub capacity: u64,
    pub available: u64,
}

impl FsStats {
    /// Used space in whole percent, as kubelet rounds it.
    pub fn usage_percent(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        let free = u128::from(self.available).saturating_mul(100).checked_div(u128::from(self.capacity)).unwrap_or(0);
        100u64.saturating_sub(u64::try_from(free).unwrap_or(100))
    }

    /// What must go to get down to `low` percent.
    pub fn to_free(&self, low: u8) -> u64 {
        let target_free = u128::from(self.capacity).saturating_mul(u128::from(100u8.saturating_sub(low))).checked_div(100).unwrap_or(0);
        u64::try_from(target_free).unwrap_or(u64::MAX).saturating_sub(self.available)
    }
}

/// Why an image is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Unused for longer than imageMaximumGCAge.
    MaxAge,
    /// The disk is past the high threshold.
    DiskUsage,
}

/// What one collection does: the images to remove, in order, and how many
/// bytes the disk needed freed (0: it was under the high threshold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    pub remove: Vec<(String, Why)>,
    pub wanted: u64,
    pub freed: u64,
}

/// Pure: which images to remove, given the images, the disk and the policy.
pub fn plan(images: &[ImageRecord], fs: Option<FsStats>, policy: &ImageGcPolicy, now: UnixNanos) -> GcPlan {
    let mut out = GcPlan::default();
    let evictable: Vec<&ImageRecord> = images.iter().filter(|i| !i.in_use && !i.pinned).collect();
    let mut chosen: HashSet<&str> = HashSet::new();
    if let Some(max) = policy.max_age {
        for i in &evictable {
            if now.since(i.last_used) > max {
                out.remove.push((i.id.clone(), Why::MaxAge));
                out.freed = out.freed.saturating_add(i.size);
                chosen.insert(&i.id);
            }
        }
    }
    let Some(fs) = fs.filter(|f| f.capacity > 0) else { return out };
    // 100 % disables collection by disk usage, as in kubelet.
    if policy.high_percent >= 100 || fs.usage_percent() < u64::from(policy.high_percent) {
        return out;
    }
    out.wanted = fs.to_free(policy.low_percent);
    let mut candidates: Vec<&ImageRecord> = evictable.into_iter().filter(|i| !chosen.contains(i.id.as_str())).collect();
    candidates.sort_by_key(|i| (i.last_used, i.first_detected));
    for i in candidates {
        if out.freed >= out.wanted {
            break;
        }
        if now.since(i.first_detected) < policy.min_age {
            continue;
        }
        out.remove.push((i.id.clone(), Why::DiskUsage));
        out.freed = out.freed.saturating_add(i.size);
    }
    out
}

/// The node status's `images`: largest first, at most `max`, each with its
/// digests then tags (at most five names).
pub fn node_images(images: &[cri::Image], max: Option<usize>) -> Vec<ContainerImage> {
    let mut list: Vec<&cri::Image> = images.iter().collect();
    list.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
    list.into_iter()
        .take(max.unwrap_or(usize::MAX))
        .map(|i| ContainerImage {
            names: Some(i.repo_digests.iter().chain(&i.repo_tags).take(MAX_NAMES_PER_IMAGE).cloned().collect()),
            size_bytes: i64::try_from(i.size).ok(),
        })
        .collect()
}

fn statfs(path: &Path) -> Option<FsStats> {
    crate::files::usage(path).map(|u| FsStats { capacity: u.capacity, available: u.available })
}

/// First seen and last used, per image ID.
#[derive(Debug, Clone, Copy)]
struct Seen {
    first: UnixNanos,
    last_used: UnixNanos,
}

/// The collector: runs every `policy.period` (and once at start, for the
/// node status), publishing the node's images on `images`.
pub struct ImageGc {
    runtime: Arc<dyn Runtime>,
    policy: ImageGcPolicy,
    seen: HashMap<String, Seen>,
    images: watch::Sender<Vec<ContainerImage>>,
    /// The eviction manager's requests to reclaim disk now: every unused
    /// image old enough goes; the reply is the bytes freed.
    reclaim: Option<mpsc::Receiver<oneshot::Sender<u64>>>,
    /// `--pod-infra-container-image`: kept as the runtime's sandbox image is.
    pinned: Option<String>,
}

/// Asks the image collector to free what it can now; the bytes freed.
pub type ReclaimRequests = mpsc::Sender<oneshot::Sender<u64>>;

impl ImageGc {
    pub fn new(runtime: Arc<dyn Runtime>, policy: ImageGcPolicy, images: watch::Sender<Vec<ContainerImage>>) -> Self {
        Self { runtime, policy, seen: HashMap::new(), images, reclaim: None, pinned: None }
    }

    /// Answers reclaim requests (node-level reclaim under disk pressure).
    pub fn with_reclaim(mut self, rx: mpsc::Receiver<oneshot::Sender<u64>>) -> Self {
        self.reclaim = Some(rx);
        self
    }

    /// Never collect `image` (kubelet's `--pod-infra-container-image`).
    pub fn with_pinned(mut self, image: Option<String>) -> Self {
        self.pinned = image;
        self
    }

    pub async fn run(mut self) {
        loop {
            if let Err(e) = self.collect(false).await {
                tracing::warn!(error = %e, "image garbage collection failed");
            }
            let sleep = tokio::time::sleep(self.policy.period);
            tokio::pin!(sleep);
            loop {
                let request = async {
                    match self.reclaim.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut sleep => break,
                    Some(reply) = request => {
                        let freed = match self.collect(true).await {
                            Ok(p) => p.freed,
                            Err(e) => {
                                tracing::warn!(error = %e, "reclaiming images failed");
                                0
                            }
                        };
                        let _ = reply.send(freed);
                    }
                }
            }
        }
    }

    /// One round: detect, plan, remove, publish. `all_unused`: every unused
    /// image old enough goes, whatever the thresholds (a reclaim).
    pub async fn collect(&mut self, all_unused: bool) -> Result<GcPlan, crate::runtime::RuntimeError> {
        let now = UnixNanos::now();
        let images = self.runtime.list_images().await?;
        let mut in_use: HashSet<String> =
            self.runtime.list_containers(None).await?.into_iter().flat_map(|c| [c.image_ref, c.image_id]).filter(|i| !i.is_empty()).collect();
        let sandbox = self.runtime.sandbox_image().await.ok().flatten();
        for image in sandbox.iter().chain(self.pinned.iter()) {
            if let Ok(Some(img)) = self.runtime.image_status(image).await {
                in_use.insert(img.id);
            }
        }
        self.seen.retain(|id, _| images.iter().any(|i| &i.id == id));
        let records: Vec<ImageRecord> = images
            .iter()
            .map(|i| {
                let used = in_use.contains(&i.id);
                let s = self.seen.entry(i.id.clone()).or_insert(Seen { first: now, last_used: now });
                if used {
                    s.last_used = now;
                }
                ImageRecord { id: i.id.clone(), size: i.size, in_use: used, pinned: i.pinned, first_detected: s.first, last_used: s.last_used }
            })
            .collect();
        let fs = match self.runtime.image_fs_info().await {
            Ok(list) => list.iter().filter_map(|u| u.fs_id.as_ref()).find_map(|id| statfs(Path::new(&id.mountpoint))),
            Err(e) => {
                tracing::debug!(error = %e, "ImageFsInfo failed; no collection by disk usage");
                None
            }
        };
        let plan = if all_unused {
            // As if the disk were full: down to 0 % usage, i.e. everything
            // that may go.
            let mut p = self.policy;
            p.high_percent = 0;
            p.low_percent = 0;
            plan(&records, Some(FsStats { capacity: u64::MAX / 2, available: 0 }), &p, now)
        } else {
            plan(&records, fs, &self.policy, now)
        };
        if all_unused {
            tracing::info!(images = plan.remove.len(), "disk pressure: removing every unused image old enough");
        } else if plan.wanted > 0 {
            tracing::info!(
                usage = fs.map_or(0, |f| f.usage_percent()),
                high = self.policy.high_percent,
                low = self.policy.low_percent,
                to_free = plan.wanted,
                "the image filesystem is past the high threshold; removing unused images"
            );
        }
        let mut removed = HashSet::new();
        for (id, why) in &plan.remove {
            let name = images.iter().find(|i| &i.id == id).and_then(|i| i.repo_tags.first().cloned()).unwrap_or_else(|| id.clone());
            match self.runtime.remove_image(id).await {
                Ok(()) => {
                    tracing::info!(image = %name, id = %id, reason = ?why, "removed an unused image");
                    removed.insert(id.clone());
                }
                Err(e) => tracing::warn!(image = %name, error = %e, "removing an unused image failed"),
            }
        }
        if !all_unused && plan.freed < plan.wanted {
            tracing::warn!(
                wanted = plan.wanted,
                freed = plan.freed,
                "cannot free enough of the image filesystem: the rest is in use or too young"
            );
        }
        let left: Vec<cri::Image> = images.into_iter().filter(|i| !removed.contains(&i.id)).collect();
        let list = node_images(&left, self.policy.status_max_images);
        self.images.send_if_modified(|old| {
            let changed = *old != list;
            *old = list;
            changed
        });
        Ok(plan)
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: i64 = 1_000_000_000;
    const NOW: UnixNanos = UnixNanos(10_000 * S);

    fn policy() -> ImageGcPolicy {
        ImageGcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
            max_age: None,
            period: Duration::from_secs(300),
            status_max_images: Some(50),
        }
    }

    fn img(id: &str, size: u64, in_use: bool, first: i64, last: i64) -> ImageRecord {
        ImageRecord { id: id.into(), size, in_use, pinned: false, first_detected: UnixNanos(NOW.0 - first * S), last_used: UnixNanos(NOW.0 - last * S) }
    }

    #[test]
    fn under_the_high_threshold_nothing_goes() {
        let images = [img("a", 100, false, 1000, 1000)];
        let p = plan(&images, Some(FsStats { capacity: 1000, available: 200 }), &policy(), NOW);
        assert_eq!(p, GcPlan::default(), "80 % used < 85 %");
    }

    #[test]
    fn past_it_least_recently_used_go_down_to_the_low_one_never_in_use_or_young_or_pinned() {
        let mut pinned = img("pinned", 500, false, 5000, 5000);
        pinned.pinned = true;
        let images = [
            img("in-use", 500, true, 5000, 0),
            img("young", 500, false, 60, 60),
            img("old", 40, false, 3000, 3000),
            img("older", 60, false, 4000, 4000),
            img("recent", 100, false, 3000, 200),
            pinned,
        ];
        // 90 % used: free down to 80 % of 1000, i.e. 100 bytes.
        let p = plan(&images, Some(FsStats { capacity: 1000, available: 100 }), &policy(), NOW);
        assert_eq!(p.wanted, 100);
        let ids: Vec<&str> = p.remove.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["older", "old"], "least recently used first, until 100 bytes are free");
        assert_eq!(p.freed, 100);
    }

    #[test]
    fn the_maximum_age_removes_long_unused_images_whatever_the_disk() {
        let mut pol = policy();
        pol.max_age = Some(Duration::from_secs(3600));
        let images = [img("stale", 10, false, 9000, 7200), img("fresh", 10, false, 9000, 60), img("busy", 10, true, 9000, 7200)];
        let p = plan(&images, Some(FsStats { capacity: 1000, available: 900 }), &pol, NOW);
        assert_eq!(p.remove, vec![("stale".to_string(), Why::MaxAge)]);
    }

    #[test]
    fn a_high_threshold_of_100_turns_disk_collection_off() {
        let mut pol = policy();
        pol.high_percent = 100;
        let p = plan(&[img("a", 10, false, 9000, 9000)], Some(FsStats { capacity: 100, available: 0 }), &pol, NOW);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn the_node_lists_its_largest_images_first_with_five_names_at_most() {
        let image = |id: &str, size: u64, tags: usize| cri::Image {
            id: id.into(),
            size,
            repo_tags: (0..tags).map(|n| format!("{id}:{n}")).collect(),
            repo_digests: vec![format!("{id}@sha256:0")],
            ..Default::default()
        };
        let list = node_images(&[image("small", 1, 1), image("big", 9, 7), image("mid", 5, 1)], Some(2));
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].size_bytes, Some(9));
        assert_eq!(list[0].names.as_ref().unwrap().len(), 5);
        assert_eq!(list[0].names.as_ref().unwrap()[0], "big@sha256:0", "digests first");
        assert_eq!(list[1].size_bytes, Some(5));
    }
}
