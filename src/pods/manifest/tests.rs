use super::*;

const NODE: &str = "Node-1";

fn file() -> StaticOrigin {
    StaticOrigin::File("/etc/kubernetes/manifests/web.yaml".into())
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: app
    image: nodelet.local/busybox:1
    command: ["sh", "-c", "sleep 3600"]
    ports: [{containerPort: 80}]
    resources:
      limits: {cpu: 1, memory: 64Mi}
"#;

#[test]
fn static_pods_get_kubelet_defaults() {
    let (pod, unknown) = load_static(WEB.as_bytes(), NODE, &file()).unwrap();
    assert!(unknown.is_empty(), "{unknown:?}");
    assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
    let uid = pod.metadata.uid.clone().unwrap();
    assert_eq!(uid.len(), 32);
    let ann = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[ANNOTATION_CONFIG_HASH], uid);
    assert_eq!(ann[ANNOTATION_CONFIG_SOURCE], "file");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(NODE));
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
    let c = &spec.containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(c.ports.as_ref().unwrap()[0].protocol.as_deref(), Some("TCP"));
    let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(req["cpu"].0, "1", "numeric quantities are accepted and requests default to limits");
}

#[test]
fn uid_follows_content_node_and_file() {
    let a = load_static(WEB.as_bytes(), NODE, &file()).unwrap().0.metadata.uid;
    let b = load_static(WEB.as_bytes(), NODE, &file()).unwrap().0.metadata.uid;
    assert_eq!(a, b, "same content, same UID");
    let edited = WEB.replace("sleep 3600", "sleep 3601");
    assert_ne!(a, load_static(edited.as_bytes(), NODE, &file()).unwrap().0.metadata.uid);
    assert_ne!(a, load_static(WEB.as_bytes(), "other", &file()).unwrap().0.metadata.uid);
    let reformatted = WEB.replace("labels: {app: web}", "labels:\n    app: web\n");
    assert_eq!(a, load_static(reformatted.as_bytes(), NODE, &file()).unwrap().0.metadata.uid);
}

#[test]
fn pull_policy_follows_the_tag() {
    assert_eq!(default_pull_policy("busybox"), "Always");
    assert_eq!(default_pull_policy("busybox:latest"), "Always");
    assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
    assert_eq!(default_pull_policy("reg:5000/busybox"), "Always");
    assert_eq!(default_pull_policy("reg:5000/busybox:v1"), "IfNotPresent");
    assert_eq!(default_pull_policy("busybox@sha256:abc"), "IfNotPresent");
}

fn err(yaml: &str) -> String {
    load_static(yaml.as_bytes(), NODE, &file()).unwrap_err().to_string()
}

#[test]
fn errors_name_the_file_and_the_field() {
    let e = err(&WEB.replace("containerPort: 80", "containerPort: eighty"));
    assert!(e.starts_with("/etc/kubernetes/manifests/web.yaml: spec.containers[0].ports[0].containerPort: "), "{e}");
    let e = err(&WEB.replace("kind: Pod", "kind: Deployment"));
    assert!(e.contains(": kind: Unsupported value"), "{e}");
    let e = err(&WEB.replace("image: nodelet.local/busybox:1", "image: \"\""));
    assert!(e.contains("spec.containers[0].image: Required value"), "{e}");
    let e = err(&WEB.replace("name: app", "name: App_1"));
    assert!(e.contains("spec.containers[0].name: Invalid value: \"App_1\""), "{e}");
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [\n");
    assert!(e.contains("not valid YAML or JSON"), "{e}");
    let e = err("");
    assert!(e.contains("empty"), "{e}");
    let e = err(&WEB.replace("limits: {cpu: 1, memory: 64Mi}", "limits: {cpu: lots}"));
    assert!(e.contains("spec.containers[0].resources.limits[cpu]"), "{e}");
    let e = err(&WEB.replace("  containers:", "  restartPolicy: Sometimes\n  containers:"));
    assert!(e.contains("spec.restartPolicy: Unsupported value: \"Sometimes\""), "{e}");
}

#[test]
fn json_manifests_work_too() {
    let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},"spec":{"containers":[{"name":"c","image":"busybox:1"}]}}"#;
    let (pod, _) = load_static(json.as_bytes(), NODE, &file()).unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some("j-node-1"));
}

#[test]
fn unknown_fields_are_reported_and_a_misspelt_one_is_an_error_that_says_which_was_meant() {
    // Nothing like any field of a container: a warning (kubelet's decoder
    // drops it silently).
    let yaml = WEB.replace("    command:", "    colour: blue\n    command:");
    let (_, unknown) = load_static(yaml.as_bytes(), NODE, &file()).unwrap();
    assert_eq!(unknown, vec!["spec.containers[0].colour: unknown field".to_string()]);
    // One slip from imagePullPolicy: the pod is refused, naming the field.
    let yaml = WEB.replace("    command:", "    imagePullPolcy: Always\n    command:");
    let e = load_static(yaml.as_bytes(), NODE, &file()).unwrap_err().to_string();
    assert!(e.contains("spec.containers[0].imagePullPolcy: unknown field; did you mean \"imagePullPolicy\"?"), "{e}");
}

#[test]
fn features_a_pod_must_get_are_refused_rather_than_ignored() {
    let pod = WEB
        .replace("  containers:", "  hostUsers: false\n  resources: {limits: {memory: 64Mi}}\n  securityContext: {supplementalGroupsPolicy: Strict}\n  volumes: [{name: data, emptyDir: {}}]\n  containers:")
        .replace("    command:", "    volumeMounts: [{name: data, mountPath: /d, readOnly: true, recursiveReadOnly: Enabled}]\n    command:");
    let e = err(&pod);
    assert!(e.contains("spec.hostUsers: Unsupported value: false: user namespaces are not implemented"), "{e}");
    assert!(e.contains("spec.resources: Unsupported value: pod-level resources"), "{e}");
    assert!(e.contains("spec.securityContext.supplementalGroupsPolicy: Unsupported value: \"Strict\""), "{e}");
    assert!(e.contains("spec.containers[0].volumeMounts[0].recursiveReadOnly: Unsupported value: \"Enabled\""), "{e}");
    let fallback = WEB
        .replace("  containers:", "  hostUsers: true\n  volumes: [{name: data, emptyDir: {}}]\n  containers:")
        .replace("    command:", "    volumeMounts: [{name: data, mountPath: /d, readOnly: true, recursiveReadOnly: IfPossible}]\n    command:");
    load_static(fallback.as_bytes(), NODE, &file()).unwrap();
}

#[test]
fn volumes_are_checked_and_unknown_kinds_refused() {
    let ok = WEB.replace(
        "  containers:",
        "  volumes: [{name: data, emptyDir: {}}, {name: etc, hostPath: {path: /etc, type: Directory}}]\n  containers:",
    )
    .replace("    command:", "    volumeMounts: [{name: data, mountPath: /data, subPath: a/b}]\n    command:");
    load_static(ok.as_bytes(), NODE, &file()).unwrap();

    let dev = WEB.replace("  containers:", "  volumes: [{name: data, emptyDir: {}}]\n  containers:").replace("    command:", "    volumeDevices: [{name: data, devicePath: /dev/xvda}]\n    command:");
    let e = err(&dev);
    assert!(e.contains("volumeDevices[0].name: Invalid value: \"data\": can only use volume source type of PersistentVolumeClaim or Ephemeral for block mode"), "{e}");

    let pvc = WEB.replace("  containers:", "  volumes: [{name: data, persistentVolumeClaim: {claimName: c}}]\n  containers:");
    let e = err(&pvc);
    assert!(e.contains("spec.volumes[0]: Forbidden"), "static pods may not use claims: {e}");

    let bad = WEB
        .replace("  containers:", "  volumes: [{name: data, hostPath: {path: /x, type: Dir}}]\n  containers:")
        .replace(
            "    command:",
            "    volumeMounts: [{name: data, mountPath: /d, subPath: ../up, mountPropagation: Bidirectional}]\n    command:",
        );
    let e = err(&bad);
    assert!(e.contains("spec.volumes[0].hostPath.type: Unsupported value: \"Dir\""), "{e}");
    assert!(e.contains("spec.containers[0].volumeMounts[0].subPath: Invalid value: \"../up\": must not contain '..'"), "{e}");
    assert!(e.contains("spec.containers[0].volumeMounts[0].mountPropagation: Forbidden"), "{e}");
}

#[test]
fn static_pods_may_not_reference_api_objects() {
    let yaml = WEB.replace(
        "    command:",
        "    env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]\n    command:",
    );
    let e = err(&yaml);
    assert!(e.contains("spec.containers[0].env[0].valueFrom.secretKeyRef: Forbidden"), "{e}");
}

#[test]
fn pod_lists_decode_for_the_url_source() {
    let list = r#"{"kind":"PodList","apiVersion":"v1","items":[
            {"metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i:1"}]}},
            {"metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}]}"#;
    let pods = decode_pods(list.as_bytes(), "http://x").unwrap();
    assert_eq!(pods.len(), 2);
    assert!(decode_pods(b"  ", "http://x").unwrap().is_empty());
}
