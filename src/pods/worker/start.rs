//! Starting things: the sandbox, images per pull policy, containers, and
//! the postStart hook.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};

use super::stop::StopTarget;
use super::{Failed, SandboxInUse, Worker, grace_of};
use crate::clock::UnixNanos;
use crate::pods::backoff::Failure;
use crate::pods::events::EventType;
use crate::pods::plan::Waiting;
use crate::pods::env::{self, EnvSources};
use crate::pods::{ContainerKind, container, logs, sandbox};
use crate::volumes::objects::{ObjectKey, ObjectKind};
use crate::probes::handler::{self, Outcome};
use crate::runtime::{RuntimePod, cri, observe};

/// How long a postStart hook may run (kubelet sets no limit; an endless
/// hook would hold the pod's worker).
const POST_START_TIMEOUT: Duration = Duration::from_secs(120);

impl Worker {
    pub(super) async fn create_sandbox(&mut self, pod: &Pod, attempt: u32) -> Result<SandboxInUse, Failed> {
        let node = &self.ctx.node;
        let (config, warnings) = sandbox::sandbox_config(pod, attempt, node);
        if !self.warned_dns {
            for w in &warnings {
                self.event(EventType::Warning, w.reason, &w.message);
            }
            self.warned_dns = true;
        }
        if attempt > 0 {
            self.event(EventType::Normal, "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.");
        }
        let pod_dir = match sandbox::pod_dir(node, &self.identity.uid) {
            Ok(d) => d,
            Err(e) => {
                self.event(EventType::Warning, "FailedCreatePodSandBox", &e.to_string());
                return Err(self.retry_later());
            }
        };
        // A dry run writes nothing outside its own output.
        let dirs = if self.ctx.dry_run { vec![] } else { vec![std::path::PathBuf::from(&config.log_directory), pod_dir] };
        for dir in dirs {
            if let Err(e) = make_dir(&dir) {
                self.event(EventType::Warning, "FailedCreatePodSandBox", &format!("Failed to create {}: {e}", dir.display()));
                return Err(self.retry_later());
            }
        }
        if node.cgroup_driver == crate::pods::CgroupDriver::Cgroupfs && !self.ctx.dry_run && node.cgroups_per_qos {
            let parent = config.linux.as_ref().map(|l| l.cgroup_parent.clone()).unwrap_or_default();
            if let Err(e) = crate::pods::cgroups::ensure_pod_cgroup(&parent, &crate::pods::cgroups::pod_limits(pod), node.pod_pids_limit) {
                self.event(EventType::Warning, "FailedCreatePodSandBox", &format!("Failed to set up the pod cgroup {parent}: {e}"));
                return Err(self.retry_later());
            }
        }
        // runtimeClassName names a RuntimeClass; its handler is what CRI
        // gets (kubelet's LookupRuntimeHandler), never the class's name.
        let handler = match pod.spec.as_ref().and_then(|s| s.runtime_class_name.clone()).filter(|n| !n.is_empty()) {
            None => String::new(),
            Some(class) => {
                let found = match self.ctx.objects.as_ref() {
                    Some(objects) => objects.runtime_class(&class).await.map_err(|e| e.to_string()),
                    None => Err("RuntimeClasses need an apiserver (static pods cannot use one)".to_string()),
                };
                match found {
                    Ok(Some(rc)) => rc.handler,
                    Ok(None) => {
                        self.event(EventType::Warning, "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: runtimeclass.node.k8s.io {class:?} not found"));
                        return Err(self.retry_later());
                    }
                    Err(e) => {
                        self.event(EventType::Warning, "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: looking up RuntimeClass {class:?}: {e}"));
                        return Err(self.retry_later());
                    }
                }
            }
        };
        self.ctx.metrics.started_pods.inc();
        let id = match self.ctx.runtime.run_pod_sandbox(&config, &handler).await {
            Ok(id) => id,
            Err(e) => {
                self.ctx.metrics.started_pods_errors.inc();
                self.event(EventType::Warning, "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: {e}"));
                return Err(self.retry_later());
            }
        };
        let ips = self.ctx.runtime.pod_sandbox_status(&id).await.map(|s| observe::sandbox_ips(&s)).unwrap_or_default();
        Ok(SandboxInUse { id, config, ips: super::pod_ips(Some(pod), node, &ips) })
    }

    pub(super) fn fail_container(&mut self, name: &str, reason: &str, message: String) -> Failed {
        self.event(EventType::Warning, "Failed", &format!("Error: {message}"));
        self.errors.insert(name.to_string(), Waiting::new(reason, message));
        self.retry_later()
    }

    /// The pod's pull secrets as a keyring. A secret that cannot be read
    /// is reported once per round (kubelet's FailedToRetrieveImagePullSecret)
    /// and the pull goes on without it.
    async fn pull_secrets(&mut self, pod: &Pod) -> crate::credentials::Keyring {
        let names: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .map(|v| v.iter().filter(|r| !r.name.is_empty()).map(|r| r.name.clone()).collect())
            .unwrap_or_default();
        let Some(objects) = self.ctx.objects.clone() else { return Default::default() };
        if names.is_empty() {
            return Default::default();
        }
        let namespace = self.identity.namespace.clone();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            let key = ObjectKey { kind: ObjectKind::Secret, namespace: namespace.clone(), name: name.clone() };
            match objects.get(&key, &self.identity.uid).await {
                Ok(Some(data)) => found.push((namespace.clone(), name, (*data).clone())),
                Ok(None) => missing.push(name),
                Err(e) => {
                    tracing::warn!(secret = %key, error = %e, "cannot read an image pull secret");
                    missing.push(name);
                }
            }
        }
        if !missing.is_empty() {
            self.event(
                EventType::Warning,
                "FailedToRetrieveImagePullSecret",
                &format!("Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.", missing.join(", ")),
            );
        }
        let (ring, problems) = crate::credentials::secrets_keyring(&found);
        for p in problems {
            tracing::warn!("{p}");
        }
        ring
    }

    /// ImageStatus, then a pull when the policy (or the credential check)
    /// says so; the image.
    async fn ensure_image(&mut self, pod: &Pod, c: &Container, sb: &SandboxInUse) -> Result<cri::Image, Failed> {
        let image = c.image.clone().unwrap_or_default();
        let reference = match crate::reference::parse(&image) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("Failed to apply default image tag {image:?}: {e}");
                self.event(EventType::Warning, "InspectFailed", &msg);
                self.errors.insert(c.name.clone(), Waiting::new("InvalidImageName", msg));
                return Err(self.retry_later());
            }
        };
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| crate::pods::manifest::default_pull_policy(&image).into());
        let present = match self.ctx.runtime.image_status(&image).await {
            Ok(p) => p,
            Err(e) => return Err(self.fail_container(&c.name, "ImageInspectError", format!("Failed to inspect image {image:?}: {e}"))),
        };
        let secrets = self.pull_secrets(pod).await;
        let repo = reference.repository();
        if policy != "Always"
            && let Some(img) = present.clone()
        {
            let held = crate::pulls::Puller::pod_secrets(&secrets, &repo);
            if self.ctx.pulls.may_use_present(&reference, &img.id, &held) {
                self.event(EventType::Normal, "Pulled", &format!("Container image {image:?} already present on machine"));
                return Ok(img);
            }
            tracing::info!(image, "the image on the node was pulled with credentials this pod does not hold; pulling it with the pod's own");
        }
        if policy == "Never" {
            let msg = format!("Container image {image:?} is not present with pull policy of Never");
            self.event(EventType::Warning, "ErrImageNeverPull", &msg);
            self.errors.insert(c.name.clone(), Waiting::new("ErrImageNeverPull", msg));
            return Err(self.retry_later());
        }
        let now = UnixNanos::now();
        if let Some((last, why)) = self.pull_failures.get(&image).cloned()
            && let Some(until) = self.pull_backoff.blocked_until(&image, Failure::instant(last), now)
        {
            self.event(EventType::Normal, "BackOff", &format!("Back-off pulling image {image:?}"));
            self.event(EventType::Warning, "Failed", "Error: ImagePullBackOff");
            let msg = format!("Back-off pulling image {image:?}: ErrImagePull: {why}");
            self.errors.insert(c.name.clone(), Waiting::new("ImagePullBackOff", msg));
            return Err(Failed { retry_at: until });
        }
        self.event(EventType::Normal, "Pulling", &format!("Pulling image {image:?}"));
        let who = format!("{}/{}", self.identity.namespace, self.identity.name);
        let pulls = self.ctx.pulls.clone();
        match pulls.pull(&image, &reference, &who, &secrets, &sb.config).await {
            Ok(p) => {
                self.pull_failures.remove(&image);
                self.event(
                    EventType::Normal,
                    "Pulled",
                    &format!(
                        "Successfully pulled image {image:?} in {} ({} including waiting). Image size: {} bytes.",
                        go_seconds(p.took),
                        go_seconds(p.with_waiting),
                        p.image.size
                    ),
                );
                Ok(p.image)
            }
            Err(e) => {
                let failed_at = UnixNanos::now();
                self.pull_backoff.next(&image, Failure::instant(failed_at));
                self.pull_failures.insert(image.clone(), (failed_at, e.clone()));
                self.event(EventType::Warning, "Failed", &format!("Failed to pull image {image:?}: {e}"));
                self.event(EventType::Warning, "Failed", "Error: ErrImagePull");
                self.errors.insert(c.name.clone(), Waiting::new("ErrImagePull", e));
                Err(self.retry_later())
            }
        }
    }

    pub(super) async fn start_container(
        &mut self,
        pod: &Pod,
        c: &Container,
        kind: ContainerKind,
        attempt: u32,
        sb: &SandboxInUse,
        target_id: Option<&str>,
    ) -> Result<(), Failed> {
        let image = self.ensure_image(pod, c, sb).await?;
        if let Err(msg) = check_non_root(pod, c, &image) {
            return Err(self.fail_container(&c.name, "CreateContainerConfigError", msg));
        }
        let sources = self.env_sources(pod, c).await;
        let etc_hosts = match crate::volumes::write_etc_hosts(pod, &self.ctx.node, &sb.ips, self.ctx.dry_run) {
            Ok(p) => p,
            Err(e) => return Err(self.fail_container(&c.name, "CreateContainerConfigError", format!("writing /etc/hosts: {e}"))),
        };
        let Some(volumes) = self.volumes.clone() else {
            return Err(self.retry_later());
        };
        let termination_log = match self.termination_log(pod, c) {
            Ok(p) => p,
            Err(e) => return Err(self.fail_container(&c.name, "CreateContainerConfigError", format!("creating the termination log: {e}"))),
        };
        let req = container::ContainerRequest {
            pod,
            container: c,
            kind,
            attempt,
            image_ref: &image.id,
            pod_ips: &sb.ips,
            node: &self.ctx.node,
            env_sources: &sources,
            volumes: &volumes,
            etc_hosts: etc_hosts.as_deref(),
            termination_log: termination_log.as_deref(),
            target_id,
            dry_run: self.ctx.dry_run,
        };
        let mut config = match container::container_config(&req) {
            Ok((cfg, skipped)) => {
                if !skipped.is_empty() {
                    self.event(
                        EventType::Warning,
                        "InvalidEnvironmentVariableNames",
                        &format!("Keys [{}] from the EnvFrom of container {} were skipped since they are considered invalid environment variable names.", skipped.join(", "), c.name),
                    );
                }
                cfg
            }
            Err(e) => return Err(self.fail_container(&c.name, "CreateContainerConfigError", e.to_string())),
        };
        // The CPU manager's cpuset: its exclusive CPUs, or the shared pool.
        if let (Some(cpus), Some(res)) = (self.ctx.cpus.cpuset_for(&self.identity.uid, &c.name), config.linux.as_mut().and_then(|l| l.resources.as_mut())) {
            res.cpuset_cpus = cpus;
        }
        // The memory manager's NUMA nodes (static policy, Guaranteed pods).
        if let (Some(mems), Some(res)) = (self.ctx.memory.cpuset_mems(&self.identity.uid, &c.name), config.linux.as_mut().and_then(|l| l.resources.as_mut())) {
            res.cpuset_mems = mems;
        }
        // The container's devices: what their plugins' Allocate answered (a
        // dry run: what the checkpoint holds of it).
        if self.ctx.dry_run {
            let (opts, unasked) = self.ctx.devices.planned_options(&self.identity.uid, &c.name);
            container::add_devices(&mut config, opts);
            for (resource, ids) in unasked {
                tracing::info!(pod = %self.identity, container = %c.name, resource = %resource, devices = ?ids, "dry run: the device plugin's Allocate would be called");
            }
        } else {
            match self.ctx.devices.run_options(&self.identity.uid, &c.name).await {
                Ok(opts) => container::add_devices(&mut config, opts),
                Err(e) => return Err(self.fail_container(&c.name, "CreateContainerConfigError", format!("devices: {e}"))),
            }
            // DRA: the CDI devices of the claims the container names (the
            // runtime injects them; no annotations, as kubelet since 1.31).
            match self.ctx.dra.cdi_devices(pod, c) {
                Ok(ids) => {
                    for name in ids {
                        if !config.cdi_devices.iter().any(|d| d.name == name) {
                            config.cdi_devices.push(crate::runtime::cri::CdiDevice { name });
                        }
                    }
                }
                Err(e) => return Err(self.fail_container(&c.name, "CreateContainerConfigError", format!("resource claims: {e}"))),
            }
        }
        let log_dir = std::path::Path::new(&sb.config.log_directory).join(&c.name);
        if !self.ctx.dry_run
            && let Err(e) = make_dir(&log_dir)
        {
            return Err(self.fail_container(&c.name, "CreateContainerError", format!("{}: {e}", log_dir.display())));
        }
        let metric_type = match kind {
            ContainerKind::Init | ContainerKind::Sidecar => "init_container",
            ContainerKind::App => "container",
            ContainerKind::Ephemeral => "ephemeral_container",
        };
        let id = match self.ctx.runtime.create_container(&sb.id, &config, &sb.config).await {
            Ok(id) => {
                // The container runs at the pod's allocation (in-place resize).
                if matches!(kind, ContainerKind::App | ContainerKind::Sidecar) {
                    self.ctx.actuated.set_container(&self.identity.uid, &c.name, c.resources.clone().unwrap_or_default());
                }
                id
            }
            Err(e) => {
                self.ctx.metrics.container_started(metric_type, Some(&e.code()));
                return Err(self.fail_container(&c.name, "CreateContainerError", e.to_string()));
            }
        };
        self.event(EventType::Normal, "Created", &format!("Created container: {}", c.name));
        if let Err(e) = self.ctx.runtime.start_container(&id).await {
            self.ctx.metrics.container_started(metric_type, Some(&e.code()));
            return Err(self.fail_container(&c.name, "RunContainerError", e.to_string()));
        }
        self.ctx.metrics.container_started(metric_type, None);
        self.event(EventType::Normal, "Started", &format!("Started container {}", c.name));
        logs::link(&self.ctx.node, &self.identity, &c.name, &id, &std::path::Path::new(&sb.config.log_directory).join(&config.log_path));
        self.errors.remove(&c.name);
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            self.post_start(pod, c, &id, hook, sb).await;
        }
        Ok(())
    }

    /// Reads what the container's environment needs from the apiserver:
    /// the ConfigMaps and Secrets it names, and the Services.
    async fn env_sources(&self, pod: &Pod, c: &Container) -> EnvSources {
        let mut s = EnvSources::default();
        let (cms, secrets) = env::references(c);
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let links = pod.spec.as_ref().and_then(|sp| sp.enable_service_links) != Some(false);
        let Some(objects) = &self.ctx.objects else {
            for (kind, names) in [("configmap", &cms), ("secret", &secrets)] {
                for n in names {
                    s.errors.insert(format!("{kind}/{n}"), format!("{kind} {n:?}: no apiserver to read it from"));
                }
            }
            return s;
        };
        match objects.services() {
            Ok(list) => s.services = env::service_env(&list, &namespace, links),
            Err(e) if crate::pods::from_api(pod) => {
                s.errors.insert("services".into(), e.to_string());
            }
            Err(_) => {}
        }
        for (kind, names) in [(ObjectKind::ConfigMap, &cms), (ObjectKind::Secret, &secrets)] {
            for n in names {
                let key = ObjectKey { kind, namespace: namespace.clone(), name: n.clone() };
                let slot = if kind == ObjectKind::ConfigMap { &mut s.config_maps } else { &mut s.secrets };
                match objects.get(&key, &self.identity.uid).await {
                    Ok(d) => {
                        slot.insert(n.clone(), d);
                    }
                    Err(e) => {
                        s.errors.insert(format!("{}/{n}", kind.as_str()), e.to_string());
                    }
                }
            }
        }
        s
    }

    /// Runs postStart right after the start. If it fails, the container is
    /// killed and its restart policy decides what follows, as kubelet does.
    async fn post_start(&mut self, pod: &Pod, c: &Container, id: &str, hook: &LifecycleHandler, sb: &SandboxInUse) {
        let pod_ip = sb.ips.first().map(String::as_str).unwrap_or("");
        let outcome = match handler::hook_target(hook, c, pod_ip, &format!("{}.lifecycle.postStart", c.name)) {
            Ok(Some(target)) => self.run_hook(&target, id, POST_START_TIMEOUT).await,
            Ok(None) => Outcome::Success,
            Err(e) => Outcome::Failure(e.to_string()),
        };
        let why = match outcome {
            Outcome::Success | Outcome::Warning(_) => return,
            Outcome::Failure(w) | Outcome::Unknown(w) => w,
        };
        self.event(EventType::Warning, "FailedPostStartHook", &format!("PostStartHook failed: {why}"));
        self.errors.insert(c.name.clone(), Waiting::new("PostStartHookError", why));
        let grace = grace_of(Some(pod), &RuntimePod::empty(self.identity.clone()));
        let target = StopTarget { id, name: &c.name, spec: Some(c), pod_ip, recorded: None };
        self.stop_container(&target, "FailedPostStartHook", grace).await;
    }

}

impl Worker {
    /// kubelet's termination-message file for a new container instance:
    /// `<pod-dir>/containers/<name>/<random>`, empty, mode 0666 (the
    /// container may run as any user), bind-mounted at its
    /// terminationMessagePath.
    fn termination_log(&self, pod: &Pod, c: &Container) -> std::io::Result<Option<std::path::PathBuf>> {
        if self.ctx.dry_run || c.termination_message_path.as_deref().is_none_or(str::is_empty) {
            return Ok(None);
        }
        use std::os::unix::fs::PermissionsExt;
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let invalid = |e: crate::files::NotAComponent| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let dir = crate::files::child(&self.ctx.node.pod_dir(uid).map_err(invalid)?.join("containers"), &c.name, "name").map_err(invalid)?;
        make_dir(&dir)?;
        let file = dir.join(format!("{:08x}", rand::random::<u32>()));
        std::fs::File::create(&file)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
        Ok(Some(file))
    }
}

fn make_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)
}

/// runAsNonRoot: the effective user (from the spec, else the image) must be
/// a non-zero numeric UID.
fn check_non_root(pod: &Pod, c: &Container, image: &cri::Image) -> Result<(), String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    if sc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
        return Ok(());
    }
    if let Some(uid) = sc.run_as_user.or(psc.run_as_user) {
        return if uid == 0 { Err("container's runAsUser breaks non-root policy".into()) } else { Ok(()) };
    }
    match (&image.uid, image.username.as_str()) {
        (Some(u), _) if u.value == 0 => Err("container has runAsNonRoot and image will run as root".into()),
        (Some(_), _) => Ok(()),
        (None, "") => Err("container has runAsNonRoot and image will run as root".into()),
        (None, user) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root"
        )),
    }
}


/// A duration as Go prints it in kubelet's messages (`1.234s`, `850ms`).
fn go_seconds(d: Duration) -> String {
    if d >= Duration::from_secs(1) { format!("{:.3}s", d.as_secs_f64()) } else { format!("{}ms", d.as_millis()) }
}
