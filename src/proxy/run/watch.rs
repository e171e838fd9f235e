//! The proxy's watches: Services and EndpointSlices followed into one
//! store, each object decoded on its own (a bad one is refused by name,
//! the others stand).

use super::*;

/// The watched objects, each decoded on its own: one that does not decode
/// is skipped with a log line and disturbs nothing else.
#[derive(Default)]
pub(super) struct Objects {
    pub(super) services: BTreeMap<(String, String), Service>,
    pub(super) slices: BTreeMap<(String, String), EndpointSlice>,
    pub(super) services_listed: bool,
    pub(super) slices_listed: bool,
    /// The proxy's node's `topology.kubernetes.io/zone` (topology hints).
    pub(super) zone: Option<String>,
}

/// Follows the proxy's own Node for its zone label, as kube-proxy watches
/// its node: topology hints for zones are used once it is known. Reading
/// the Node is never needed for the rules otherwise, so a watch that fails
/// only logs (with back-off) and the Services are programmed meanwhile.
pub(super) async fn follow_zone(client: kube::Client, node: String, objects: Arc<Mutex<Objects>>, changed: Arc<Notify>) {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = crate::kubeapi::backed_off(watcher::watcher(api, config)).boxed();
    let mut outage = crate::kubeapi::Outage::default();
    while let Some(ev) = stream.next().await {
        if crate::kubeapi::answered(&ev) {
            outage.works("the proxy's Node watch");
        }
        let zone = match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                n.metadata.labels.as_ref().and_then(|l| l.get("topology.kubernetes.io/zone")).cloned()
            }
            Ok(watcher::Event::Delete(_)) => None,
            Ok(_) => continue,
            Err(e) => {
                outage.failed("the proxy's Node watch", &e);
                continue;
            }
        };
        let mut o = objects.lock().unwrap_or_else(|e| e.into_inner());
        if o.zone != zone {
            tracing::info!(zone = ?zone, "the proxy's node zone, for topology hints");
            o.zone = zone;
            changed.notify_one();
        }
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(obj: &DynamicObject, kind: &str) -> Result<T, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let ns = obj.metadata.namespace.as_deref().unwrap_or("");
        let name = obj.metadata.name.as_deref().unwrap_or("");
        format!("{kind} {ns}/{name}: {}: {}", e.path(), e.inner())
    })
}

pub(super) fn key_of(obj: &DynamicObject) -> (String, String) {
    (obj.metadata.namespace.clone().unwrap_or_default(), obj.metadata.name.clone().unwrap_or_default())
}

/// Follows one kind into `objects`; `put` stores a decoded object.
/// Where `follow` keeps one kind: its objects and whether they were listed.
pub(super) type Slot<T> = fn(&mut Objects) -> (&mut BTreeMap<(String, String), T>, &mut bool);

pub(super) async fn follow<T>(
    client: kube::Client,
    kind: &'static str,
    objects: Arc<Mutex<Objects>>,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
    pick: Slot<T>,
    counter: fn(&Metrics) -> &AtomicU64,
) where
    T: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + Send + 'static,
{
    let ar = ApiResource::erase::<T>(&());
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    // As kube-proxy: Services that name another proxy, and headless ones,
    // are not watched (nor their slices).
    let config = watcher::Config::default().labels("!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless");
    let mut stream = crate::kubeapi::backed_off(watcher::watcher(api, config)).boxed();
    let mut fresh: Option<BTreeMap<(String, String), T>> = None;
    let mut logged: HashMap<(String, String), String> = HashMap::new();
    let mut decode_logged = |obj: &DynamicObject| -> Option<T> {
        match decode::<T>(obj, kind) {
            Ok(t) => {
                logged.remove(&key_of(obj));
                Some(t)
            }
            Err(e) => {
                if logged.get(&key_of(obj)) != Some(&e) {
                    tracing::error!("skipping {e}");
                    logged.insert(key_of(obj), e);
                }
                None
            }
        }
    };
    let mut outage = crate::kubeapi::Outage::default();
    let what = format!("the {kind} watch");
    while let Some(ev) = stream.next().await {
        if crate::kubeapi::answered(&ev) {
            outage.works(&what);
        }
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                outage.failed(&what, &e);
                continue;
            }
        };
        let mut o = objects.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            watcher::Event::Init => fresh = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                if let (Some(f), Some(t)) = (fresh.as_mut(), decode_logged(&obj)) {
                    f.insert(key_of(&obj), t);
                }
            }
            watcher::Event::InitDone => {
                let (map, listed) = pick(&mut o);
                if let Some(f) = fresh.take() {
                    *map = f;
                }
                *listed = true;
                counter(&metrics).fetch_add(1, Ordering::Relaxed);
                changed.notify_one();
            }
            watcher::Event::Apply(obj) => {
                let (map, _) = pick(&mut o);
                match decode_logged(&obj) {
                    Some(t) => map.insert(key_of(&obj), t),
                    None => map.remove(&key_of(&obj)),
                };
                counter(&metrics).fetch_add(1, Ordering::Relaxed);
                changed.notify_one();
            }
            watcher::Event::Delete(obj) => {
                let (map, _) = pick(&mut o);
                map.remove(&key_of(&obj));
                counter(&metrics).fetch_add(1, Ordering::Relaxed);
                changed.notify_one();
            }
        }
    }
}
