//! The start-up access check: before a role starts, ask the apiserver
//! (SelfSubjectAccessReview, which any authenticated user may send) whether
//! its identity may do what the role needs, and log one line per missing
//! permission naming the binding that would grant it. On a stock cluster
//! the node identity gets its rights from the Node authorizer and the proxy
//! from the `system:node-proxier` ClusterRole, and nothing else; a missing
//! binding otherwise shows only as a stream of 403s from a watch.

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

/// One thing a role does through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    /// Empty for cluster-wide.
    pub namespace: &'static str,
}

const fn p(verb: &'static str, group: &'static str, resource: &'static str, subresource: &'static str, namespace: &'static str) -> Permission {
    Permission { verb, group, resource, subresource, namespace }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if self.namespace.is_empty() { write!(f, " (all namespaces)") } else { write!(f, " in namespace {}", self.namespace) }
    }
}

/// What the kubelet role does with the node's identity: its Node and
/// status, its Lease, the pods bound to it (their status, mirror pods,
/// the deletion handshake), events, certificate renewal, and the Services
/// for pods' environment variables. The Node authorizer grants all of it.
pub const NODE: &[Permission] = &[
    p("get", "", "nodes", "", ""),
    p("create", "", "nodes", "", ""),
    p("patch", "", "nodes", "", ""),
    p("patch", "", "nodes", "status", ""),
    p("get", "coordination.k8s.io", "leases", "", "kube-node-lease"),
    p("create", "coordination.k8s.io", "leases", "", "kube-node-lease"),
    p("update", "coordination.k8s.io", "leases", "", "kube-node-lease"),
    p("list", "", "pods", "", ""),
    p("watch", "", "pods", "", ""),
    p("create", "", "pods", "", ""),
    p("delete", "", "pods", "", ""),
    p("patch", "", "pods", "status", ""),
    p("create", "events.k8s.io", "events", "", ""),
    p("create", "certificates.k8s.io", "certificatesigningrequests", "", ""),
    p("list", "", "services", "", ""),
    p("watch", "", "services", "", ""),
];

/// What the proxy role watches: the rules of ClusterRole `system:node-proxier`
/// that it uses.
pub const PROXY: &[Permission] = &[
    p("list", "", "services", "", ""),
    p("watch", "", "services", "", ""),
    p("list", "discovery.k8s.io", "endpointslices", "", ""),
    p("watch", "discovery.k8s.io", "endpointslices", "", ""),
];

/// Where the node role's rights come from.
pub const NODE_GRANT: &str = "the Node authorizer grants it to a user system:node:<node name> in group system:nodes \
    (kube-apiserver --authorization-mode=Node,RBAC); check the subject of the node's client certificate";
/// Where the proxy role's rights come from when it runs as the node.
pub const PROXY_AS_NODE_GRANT: &str = "bind ClusterRole system:node-proxier to Group system:nodes \
    (kubectl apply -f nodelet-rbac.yaml: manifests/ in nodelet's source, /usr/share/doc/nodelet/ on the node), \
    or set clientConnection.kubeconfig in the KubeProxyConfiguration to kube-proxy's kubeconfig";
/// Where the proxy role's rights come from with its own kubeconfig.
pub const PROXY_OWN_GRANT: &str = "bind ClusterRole system:node-proxier to the user of clientConnection.kubeconfig \
    (the default ClusterRoleBinding system:node-proxier names User system:kube-proxy)";

/// Asks whether the client's identity may do each of `needs`; logs one line
/// per permission it lacks and returns them. A review the apiserver does
/// not answer is skipped (logged at debug): the role then finds out by
/// doing.
pub async fn check(client: &kube::Client, role: &str, needs: &[Permission], grant: &str) -> Vec<Permission> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let asks = needs.iter().map(|perm| {
        let reviews = reviews.clone();
        async move {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(perm.verb.into()),
                        group: Some(perm.group.into()),
                        resource: Some(perm.resource.into()),
                        subresource: (!perm.subresource.is_empty()).then(|| perm.subresource.into()),
                        namespace: (!perm.namespace.is_empty()).then(|| perm.namespace.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            (perm, reviews.create(&PostParams::default(), &review).await)
        }
    });
    let mut missing = Vec::new();
    let mut unanswered = 0;
    for (perm, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(r) => {
                let reason = r.status.and_then(|s| s.reason).unwrap_or_default();
                tracing::warn!(role, permission = %perm, %reason, "missing permission: the {role} role cannot {perm}; {grant}");
                missing.push(*perm);
            }
            Err(e) => {
                unanswered += 1;
                tracing::debug!(role, permission = %perm, error = %e, "cannot check a permission");
            }
        }
    }
    if unanswered > 0 {
        tracing::info!(role, unanswered, "some permissions could not be checked (SelfSubjectAccessReview failed)");
    } else if missing.is_empty() {
        tracing::info!(role, checked = needs.len(), "the {role} role has every permission it needs");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_kubectl_auth_can_i_would_say_them() {
        assert_eq!(PROXY[2].to_string(), "list endpointslices.discovery.k8s.io (all namespaces)");
        assert_eq!(NODE[3].to_string(), "patch nodes/status (all namespaces)");
        assert_eq!(NODE[4].to_string(), "get leases.coordination.k8s.io in namespace kube-node-lease");
    }
}
