//! Who may call the node API, as kubelet decides it.
//!
//! **Authentication**: a client certificate that the TLS handshake verified
//! against `authentication.x509.clientCAFile` names the user (CN) and groups
//! (O); else a bearer token, checked with a TokenReview to the apiserver
//! (`authentication.webhook`) and cached for `cacheTTL`; else, with
//! `authentication.anonymous.enabled`, `system:anonymous`; else 401.
//!
//! **Authorization**: with `authorization.mode: Webhook` a SubjectAccessReview
//! asks the apiserver whether the user may `<verb>` the node's `nodes/<sub>`,
//! the subresource chosen from the path as kubelet chooses it (`/stats` →
//! stats, `/metrics` → metrics, `/logs` → log, `/spec` → spec, anything else
//! → proxy) and the verb from the method; answers are cached for
//! `cacheAuthorizedTTL` / `cacheUnauthorizedTTL`. A denial is a 403.
//! `AlwaysAllow` lets every authenticated caller in.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::node_api::AuthorizationMode;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    pub fn anonymous() -> Self {
        User { name: "system:anonymous".into(), uid: String::new(), groups: vec!["system:unauthenticated".into()], extra: BTreeMap::new() }
    }

    /// The user a verified client certificate names: CN and O, as the
    /// apiserver reads them.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
        let mut groups: Vec<String> = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
        groups.push("system:authenticated".into());
        Some(User { name, uid: String::new(), groups, extra: BTreeMap::new() })
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credentials the node accepts: 401.
    #[error("Unauthorized")]
    Unauthenticated,
    /// Authenticated, not allowed: 403.
    #[error("Forbidden (user={user}, verb={verb}, resource=nodes, subresource={subresource})")]
    Forbidden { user: String, verb: String, subresource: String },
    /// The TokenReview failed: 401, as kubelet answers; the apiserver's
    /// words are logged, never returned to a caller not yet known.
    #[error("Unauthorized")]
    AuthenticationError(String),
    /// The SubjectAccessReview failed: 500 with kubelet's text; the
    /// apiserver's words are logged only.
    #[error("Authorization error (user={user}, verb={verb}, resource=nodes, subresource={subresource})")]
    AuthorizationError { user: String, verb: String, subresource: String, detail: String },
}

/// The verb and `nodes/<subresource>` kubelet asks about for a request.
pub fn attributes(method: &http::Method, path: &str) -> (&'static str, &'static str) {
    let verb = match *method {
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "",
    };
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let sub = if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else if under("/spec") {
        "spec"
    } else {
        "proxy"
    };
    (verb, sub)
}

/// A bearer token's SHA-256: the cache never holds the token itself.
type TokenHash = [u8; 32];
/// Who asks to do what: user, verb, `nodes/<subresource>`.
type Question = (User, &'static str, &'static str);

/// Authentication and authorization, with their caches.
pub struct Gate {
    client: Option<kube::Client>,
    node: String,
    anonymous: bool,
    webhook_authentication: bool,
    authentication_ttl: Duration,
    mode: AuthorizationMode,
    allowed_ttl: Duration,
    denied_ttl: Duration,
    tokens: Mutex<HashMap<TokenHash, (Instant, Option<User>)>>,
    decisions: Mutex<HashMap<Question, (Instant, bool)>>,
}

/// How long a token the apiserver rejected is remembered as rejected.
const REJECTED_TOKEN_TTL: Duration = Duration::from_secs(10);

impl Gate {
    /// `client` talks to the apiserver for TokenReview and
    /// SubjectAccessReview; without one, tokens are not accepted and Webhook
    /// authorization refuses.
    pub fn new(client: Option<kube::Client>, node: &str, s: &crate::config::node_api::NodeApiSettings) -> Self {
        Gate {
            client,
            node: node.to_string(),
            anonymous: s.anonymous,
            webhook_authentication: s.webhook_authentication,
            authentication_ttl: s.authentication_cache_ttl,
            mode: s.authorization,
            allowed_ttl: s.authorized_ttl,
            denied_ttl: s.unauthorized_ttl,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// Who is calling: the certificate's user, else the token's, else
    /// anonymous when allowed.
    pub async fn authenticate(&self, certificate: Option<&User>, bearer: Option<&str>) -> Result<User, Refusal> {
        if let Some(u) = certificate {
            return Ok(u.clone());
        }
        if let Some(token) = bearer.filter(|t| !t.is_empty())
            && self.webhook_authentication
            && let Some(u) = self.review_token(token).await?
        {
            return Ok(u);
        }
        if self.anonymous && bearer.is_none() {
            return Ok(User::anonymous());
        }
        Err(Refusal::Unauthenticated)
    }

    async fn review_token(&self, token: &str) -> Result<Option<User>, Refusal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((at, user)) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned() {
            let ttl = if user.is_some() { self.authentication_ttl } else { REJECTED_TOKEN_TTL.min(self.authentication_ttl) };
            if at.elapsed() < ttl {
                return Ok(user);
            }
        }
        let Some(client) = &self.client else { return Ok(None) };
        let review = TokenReview { spec: TokenReviewSpec { token: Some(token.to_string()), ..Default::default() }, ..Default::default() };
        let answer = Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::AuthenticationError(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.filter(|_| status.authenticated == Some(true)).map(|u| User {
            name: u.username.unwrap_or_default(),
            uid: u.uid.unwrap_or_default(),
            groups: u.groups.unwrap_or_default(),
            extra: u.extra.unwrap_or_default(),
        });
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (at, _)| at.elapsed() < self.authentication_ttl);
        cache.insert(key, (Instant::now(), user.clone()));
        Ok(user)
    }

    /// Whether `user` may do `verb` on `nodes/<subresource>` of this node.
    pub async fn authorize(&self, user: &User, verb: &'static str, subresource: &'static str) -> Result<(), Refusal> {
        let forbidden = || Refusal::Forbidden { user: user.name.clone(), verb: verb.into(), subresource: subresource.into() };
        if self.mode == AuthorizationMode::AlwaysAllow {
            return Ok(());
        }
        let key = (user.clone(), verb, subresource);
        if let Some((at, allowed)) = self.decisions.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied() {
            let ttl = if allowed { self.allowed_ttl } else { self.denied_ttl };
            if at.elapsed() < ttl {
                return if allowed { Ok(()) } else { Err(forbidden()) };
            }
        }
        let Some(client) = &self.client else { return Err(forbidden()) };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(String::new()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(subresource.into()),
                    name: Some(self.node.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::AuthorizationError {
                user: user.name.clone(),
                verb: verb.into(),
                subresource: subresource.into(),
                detail: format!("SubjectAccessReview: {e}"),
            })?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let mut cache = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        let longest = self.allowed_ttl.max(self.denied_ttl);
        cache.retain(|_, (at, _)| at.elapsed() < longest);
        cache.insert(key, (Instant::now(), allowed));
        if allowed { Ok(()) } else { Err(forbidden()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_kubelets_subresources() {
        use http::Method;
        assert_eq!(attributes(&Method::GET, "/stats/summary"), ("get", "stats"));
        assert_eq!(attributes(&Method::GET, "/metrics/resource"), ("get", "metrics"));
        assert_eq!(attributes(&Method::GET, "/metrics"), ("get", "metrics"));
        assert_eq!(attributes(&Method::GET, "/logs/syslog"), ("get", "log"));
        assert_eq!(attributes(&Method::GET, "/spec/"), ("get", "spec"));
        assert_eq!(attributes(&Method::GET, "/containerLogs/default/p/c"), ("get", "proxy"));
        assert_eq!(attributes(&Method::POST, "/exec/default/p/c"), ("create", "proxy"));
        assert_eq!(attributes(&Method::GET, "/statsx"), ("get", "proxy"), "a prefix is a path segment");
    }

    #[tokio::test]
    async fn without_credentials_a_caller_is_anonymous_only_when_allowed() {
        let mut s = crate::config::node_api::NodeApiSettings::resolve(&Default::default(), &Default::default()).unwrap();
        let gate = Gate::new(None, "n1", &s);
        assert_eq!(gate.authenticate(None, None).await, Err(Refusal::Unauthenticated));
        assert_eq!(gate.authenticate(None, Some("tok")).await, Err(Refusal::Unauthenticated), "no apiserver, no tokens");
        let cert_user = User { name: "admin".into(), uid: String::new(), groups: vec![], extra: BTreeMap::new() };
        assert_eq!(gate.authenticate(Some(&cert_user), None).await, Ok(cert_user.clone()));
        assert!(matches!(gate.authorize(&cert_user, "get", "proxy").await, Err(Refusal::Forbidden { .. })), "Webhook without an apiserver refuses");
        s.anonymous = true;
        s.authorization = AuthorizationMode::AlwaysAllow;
        let open = Gate::new(None, "n1", &s);
        let anon = open.authenticate(None, None).await.unwrap();
        assert_eq!(anon.name, "system:anonymous");
        assert_eq!(open.authorize(&anon, "get", "proxy").await, Ok(()));
        assert_eq!(open.authenticate(None, Some("bad")).await, Err(Refusal::Unauthenticated), "a bad token is not anonymous");
    }
}
