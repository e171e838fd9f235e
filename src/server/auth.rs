//! Who may call the node API, as kubelet decides it.
//!
//! **Authentication**: a client certificate that the TLS handshake verified
//! against `authentication.x509.clientCAFile` names the user (the subject's
//! last CN, as Go's x509 reads it; an empty one names nobody) and groups (O);
//! else a bearer token, checked with a TokenReview to the apiserver
//! (`authentication.webhook`) and cached for `cacheTTL` (a rejected token for
//! 10 s at most); else, with `authentication.anonymous.enabled`,
//! `system:anonymous`; else 401.
//!
//! **Authorization**: with `authorization.mode: Webhook` a SubjectAccessReview
//! asks the apiserver whether the user may `<verb>` the node's `nodes/<sub>`,
//! the subresources chosen from the path as current kubelet chooses them
//! (KubeletFineGrainedAuthz, on by default since 1.33): `/pods` and
//! `/runningpods` ask `pods`, `/healthz` `healthz`, `/configz` `configz`,
//! each then falling back to `proxy`; `/stats` asks `stats`, `/metrics`
//! `metrics`, `/logs` `log`, `/checkpoint` `checkpoint`, anything else
//! `proxy`. The first allowed lets the request in; the verb comes from the
//! method. Answers are cached for `cacheAuthorizedTTL` /
//! `cacheUnauthorizedTTL`. A denial is a 403. `AlwaysAllow` lets every
//! authenticated caller in.
//!
//! Concurrent requests with one token (or one question) wait for one review,
//! never send one each; the caches are pruned when they have doubled since
//! the last pruning, so pruning costs constant time per insertion, and hold
//! at most [`CACHE_LIMIT`] entries each, however many tokens a caller makes
//! up.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
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

    /// The user a verified client certificate names, as the apiserver's
    /// x509 authenticator reads it: the subject's CN (Go keeps the last of
    /// several) and its Os as groups. A certificate without a CN, or with
    /// an empty one, names nobody: the request goes on as if it had none.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject.iter_common_name().last()?.as_str().ok()?.to_string();
        if name.is_empty() {
            return None;
        }
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
    /// Authenticated, allowed none of the subresources asked: 403, kubelet's
    /// text (the subresources as Go prints a slice).
    #[error("Forbidden (user={user}, verb={verb}, resource=nodes, subresource(s)=[{}])", subresources.join(" "))]
    Forbidden { user: String, verb: String, subresources: Vec<String> },
    /// The TokenReview failed: 401, as kubelet answers; the apiserver's
    /// words are logged, never returned to a caller not yet known.
    #[error("Unauthorized")]
    AuthenticationError(String),
    /// The SubjectAccessReview failed: 500 with kubelet's text; the
    /// apiserver's words are logged only.
    #[error("Authorization error (user={user}, verb={verb}, resource=nodes, subresource={subresource})")]
    AuthorizationError { user: String, verb: String, subresource: String, detail: String },
}

/// The verb and the `nodes/<subresource>`s kubelet asks about for a
/// request, in the order asked.
pub fn attributes(method: &http::Method, path: &str) -> (&'static str, Vec<&'static str>) {
    let verb = match *method {
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "",
    };
    let under = |prefix: &str| path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    let mut subs = Vec::with_capacity(2);
    if under("/pods") || under("/runningpods") {
        subs.push("pods");
    } else if under("/healthz") {
        subs.push("healthz");
    } else if under("/configz") {
        subs.push("configz");
    }
    subs.push(if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else if under("/checkpoint") {
        "checkpoint"
    } else {
        "proxy"
    });
    (verb, subs)
}

/// The most entries each cache holds.
pub const CACHE_LIMIT: usize = 16_384;

/// Answers remembered for a time that depends on the answer; pruned when
/// the map has doubled since it was last pruned (amortised constant time
/// per insertion), never larger than [`CACHE_LIMIT`].
struct TtlCache<K, V> {
    entries: HashMap<K, (Instant, V)>,
    prune_at: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        TtlCache { entries: HashMap::new(), prune_at: 64 }
    }

    fn get(&self, key: &K, ttl: impl Fn(&V) -> Duration) -> Option<V> {
        let (at, v) = self.entries.get(key)?;
        (at.elapsed() < ttl(v)).then(|| v.clone())
    }

    fn insert(&mut self, key: K, value: V, ttl: impl Fn(&V) -> Duration) {
        if self.entries.len() >= self.prune_at {
            self.entries.retain(|_, (at, v)| at.elapsed() < ttl(v));
            if self.entries.len() >= CACHE_LIMIT {
                // Still full of live answers: a flood of made-up
                // credentials. Forget them all rather than grow.
                self.entries.clear();
            }
            self.prune_at = (2 * self.entries.len()).clamp(64, CACHE_LIMIT);
        }
        self.entries.insert(key, (Instant::now(), value));
    }
}

/// One review in flight per key: the first caller asks, the others wait
/// for its answer. A caller that goes away mid-review leaves the review to
/// the next waiter (tokio's OnceCell), so nothing is asked twice and no
/// waiter is stranded.
struct Inflight<K, V> {
    cells: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Inflight<K, V> {
    fn new() -> Self {
        Inflight { cells: Mutex::new(HashMap::new()) }
    }

    async fn run<F, Fut>(&self, key: &K, ask: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = V>,
    {
        let cell = self.cells.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        // Whether the caller finishes or goes away mid-review, the entry
        // goes once nobody else waits on it: cancelled reviews of made-up
        // tokens leave nothing behind.
        let leave = Leave { cells: &self.cells, key, cell };
        leave.cell.get_or_init(ask).await.clone()
    }
}

/// Takes a caller's entry out of the in-flight map when it is the last to
/// hold it (besides the map).
struct Leave<'a, K: Eq + Hash, V> {
    cells: &'a Mutex<HashMap<K, Arc<OnceCell<V>>>>,
    key: &'a K,
    cell: Arc<OnceCell<V>>,
}

impl<K: Eq + Hash, V> Drop for Leave<'_, K, V> {
    fn drop(&mut self) {
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and this guard's: no other caller waits.
        let alone = Arc::strong_count(&self.cell) <= 2;
        if (alone || self.cell.initialized()) && cells.get(self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) {
            cells.remove(self.key);
        }
    }
}

/// A bearer token's SHA-256: the caches never hold the token itself.
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
    tokens: Mutex<TtlCache<TokenHash, Option<User>>>,
    decisions: Mutex<TtlCache<Question, bool>>,
    reviewing: Inflight<TokenHash, Result<Option<User>, Refusal>>,
    asking: Inflight<Question, Result<bool, Refusal>>,
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
            tokens: Mutex::new(TtlCache::new()),
            decisions: Mutex::new(TtlCache::new()),
            reviewing: Inflight::new(),
            asking: Inflight::new(),
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

    fn token_ttl(&self) -> impl Fn(&Option<User>) -> Duration + '_ {
        |user| if user.is_some() { self.authentication_ttl } else { REJECTED_TOKEN_TTL.min(self.authentication_ttl) }
    }

    async fn review_token(&self, token: &str) -> Result<Option<User>, Refusal> {
        let key: TokenHash = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key, self.token_ttl()) {
            return Ok(user);
        }
        let Some(client) = &self.client else { return Ok(None) };
        self.reviewing
            .run(&key, || async {
                // Answered while this caller waited for the lock.
                if let Some(user) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key, self.token_ttl()) {
                    return Ok(user);
                }
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
                self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(key, user.clone(), self.token_ttl());
                Ok(user)
            })
            .await
    }

    /// Whether `user` may do `verb` on any of `subresources` (asked in
    /// order, the first allowed wins) of this node.
    pub async fn authorize(&self, user: &User, verb: &'static str, subresources: &[&'static str]) -> Result<(), Refusal> {
        if self.mode == AuthorizationMode::AlwaysAllow {
            return Ok(());
        }
        for sub in subresources {
            if self.allowed(user, verb, sub).await? {
                return Ok(());
            }
        }
        Err(Refusal::Forbidden { user: user.name.clone(), verb: verb.into(), subresources: subresources.iter().map(|s| s.to_string()).collect() })
    }

    fn decision_ttl(&self) -> impl Fn(&bool) -> Duration + '_ {
        |allowed| if *allowed { self.allowed_ttl } else { self.denied_ttl }
    }

    async fn allowed(&self, user: &User, verb: &'static str, subresource: &'static str) -> Result<bool, Refusal> {
        let key = (user.clone(), verb, subresource);
        if let Some(allowed) = self.decisions.lock().unwrap_or_else(|e| e.into_inner()).get(&key, self.decision_ttl()) {
            return Ok(allowed);
        }
        let Some(client) = &self.client else { return Ok(false) };
        self.asking
            .run(&key, || async {
                if let Some(allowed) = self.decisions.lock().unwrap_or_else(|e| e.into_inner()).get(&key, self.decision_ttl()) {
                    return Ok(allowed);
                }
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
                let answer = Api::<SubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &review).await.map_err(|e| {
                    Refusal::AuthorizationError {
                        user: user.name.clone(),
                        verb: verb.into(),
                        subresource: subresource.into(),
                        detail: format!("SubjectAccessReview: {e}"),
                    }
                })?;
                let allowed = answer.status.is_some_and(|s| s.allowed);
                self.decisions.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), allowed, self.decision_ttl());
                Ok(allowed)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_kubelets_subresources() {
        use http::Method;
        assert_eq!(attributes(&Method::GET, "/stats/summary"), ("get", vec!["stats"]));
        assert_eq!(attributes(&Method::GET, "/metrics/resource"), ("get", vec!["metrics"]));
        assert_eq!(attributes(&Method::GET, "/metrics"), ("get", vec!["metrics"]));
        assert_eq!(attributes(&Method::GET, "/logs/syslog"), ("get", vec!["log"]));
        assert_eq!(attributes(&Method::GET, "/spec/"), ("get", vec!["proxy"]), "current kubelet has no nodes/spec check");
        assert_eq!(attributes(&Method::GET, "/containerLogs/default/p/c"), ("get", vec!["proxy"]));
        assert_eq!(attributes(&Method::POST, "/exec/default/p/c"), ("create", vec!["proxy"]));
        assert_eq!(attributes(&Method::GET, "/statsx"), ("get", vec!["proxy"]), "a prefix is a path segment");
        // KubeletFineGrainedAuthz: the narrow subresource, then proxy.
        assert_eq!(attributes(&Method::GET, "/pods"), ("get", vec!["pods", "proxy"]));
        assert_eq!(attributes(&Method::GET, "/runningpods/"), ("get", vec!["pods", "proxy"]));
        assert_eq!(attributes(&Method::GET, "/healthz/ping"), ("get", vec!["healthz", "proxy"]));
        assert_eq!(attributes(&Method::GET, "/configz"), ("get", vec!["configz", "proxy"]));
        assert_eq!(attributes(&Method::GET, "/podsx"), ("get", vec!["proxy"]));
    }

    #[test]
    fn a_certificate_names_its_last_common_name_and_an_empty_one_nobody() {
        let cert = |cn: &[&str], o: &[&str]| {
            let mut params = rcgen::CertificateParams::default();
            let mut dn = rcgen::DistinguishedName::new();
            for c in cn {
                dn.push(rcgen::DnType::CommonName, *c);
            }
            for g in o {
                dn.push(rcgen::DnType::OrganizationName, *g);
            }
            params.distinguished_name = dn;
            params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
        };
        let u = User::from_certificate(&cert(&["system:node:n1"], &["system:nodes"])).unwrap();
        assert_eq!((u.name.as_str(), u.groups.as_slice()), ("system:node:n1", &["system:nodes".to_string(), "system:authenticated".to_string()][..]));
        assert_eq!(User::from_certificate(&cert(&["first", "last"], &[])).unwrap().name, "last", "Go's pkix keeps the last CN");
        assert_eq!(User::from_certificate(&cert(&[""], &["system:masters"])), None, "an empty CN names nobody");
        assert_eq!(User::from_certificate(&cert(&[], &["system:masters"])), None, "no CN names nobody");
    }

    #[tokio::test]
    async fn without_credentials_a_caller_is_anonymous_only_when_allowed() {
        let mut s = crate::config::node_api::NodeApiSettings::resolve(&Default::default(), &Default::default()).unwrap();
        let gate = Gate::new(None, "n1", &s);
        assert_eq!(gate.authenticate(None, None).await, Err(Refusal::Unauthenticated));
        assert_eq!(gate.authenticate(None, Some("tok")).await, Err(Refusal::Unauthenticated), "no apiserver, no tokens");
        let cert_user = User { name: "admin".into(), uid: String::new(), groups: vec![], extra: BTreeMap::new() };
        assert_eq!(gate.authenticate(Some(&cert_user), None).await, Ok(cert_user.clone()));
        assert!(matches!(gate.authorize(&cert_user, "get", &["proxy"]).await, Err(Refusal::Forbidden { .. })), "Webhook without an apiserver refuses");
        s.anonymous = true;
        s.authorization = AuthorizationMode::AlwaysAllow;
        let open = Gate::new(None, "n1", &s);
        let anon = open.authenticate(None, None).await.unwrap();
        assert_eq!(anon.name, "system:anonymous");
        assert_eq!(open.authorize(&anon, "get", &["proxy"]).await, Ok(()));
        assert_eq!(open.authenticate(None, Some("bad")).await, Err(Refusal::Unauthenticated), "a bad token is not anonymous");
    }

    /// An apiserver that answers TokenReviews (token "good" is alice's)
    /// and SubjectAccessReviews (alice may get nodes/pods only) after
    /// 50 ms, counting what it is asked.
    fn fake_apiserver(asked: Arc<Mutex<Vec<String>>>) -> kube::Client {
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let asked = asked.clone();
            async move {
                use http_body_util::BodyExt;
                let path = req.uri().path().to_string();
                let body: serde_json::Value = serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let answer = if path.ends_with("/tokenreviews") {
                    let token = body["spec"]["token"].as_str().unwrap().to_string();
                    asked.lock().unwrap().push(format!("token {token}"));
                    let ok = token == "good";
                    serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                        "status": {"authenticated": ok, "user": {"username": "alice", "groups": ["team"]}}})
                } else {
                    let sub = body["spec"]["resourceAttributes"]["subresource"].as_str().unwrap().to_string();
                    asked.lock().unwrap().push(format!("sar {sub}"));
                    serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {}, "status": {"allowed": sub == "pods"}})
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(answer.to_string()))))
            }
        });
        kube::Client::new(svc, "default")
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_review_and_fine_grained_checks_fall_back_to_proxy() {
        let mut s = crate::config::node_api::NodeApiSettings::resolve(&Default::default(), &Default::default()).unwrap();
        s.webhook_authentication = true;
        let asked = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Gate::new(Some(fake_apiserver(asked.clone())), "n1", &s));
        let many = |token: &'static str| {
            let gate = gate.clone();
            futures::future::join_all((0..20).map(move |_| {
                let gate = gate.clone();
                async move { gate.authenticate(None, Some(token)).await }
            }))
        };
        let (good, bad) = tokio::join!(many("good"), many("bad"));
        assert!(good.iter().all(|r| r.as_ref().is_ok_and(|u| u.name == "alice")), "{good:?}");
        assert!(bad.iter().all(|r| *r == Err(Refusal::Unauthenticated)), "{bad:?}");
        let mut seen = asked.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ["token bad", "token good"], "one review per token, however many ask at once");

        asked.lock().unwrap().clear();
        let alice = good[0].clone().unwrap();
        let (_, pods) = attributes(&http::Method::GET, "/pods");
        let answers = futures::future::join_all((0..10).map(|_| gate.authorize(&alice, "get", &pods))).await;
        assert!(answers.iter().all(Result::is_ok), "nodes/pods lets /pods in: {answers:?}");
        assert_eq!(*asked.lock().unwrap(), ["sar pods"], "asked once, and proxy never");
        let (_, configz) = attributes(&http::Method::GET, "/configz");
        let e = gate.authorize(&alice, "get", &configz).await.unwrap_err();
        assert_eq!(e.to_string(), "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[configz proxy])");
        assert_eq!(*asked.lock().unwrap(), ["sar pods", "sar configz", "sar proxy"]);
        // Denials are cached too.
        let _ = gate.authorize(&alice, "get", &configz).await;
        assert_eq!(asked.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_review_whose_caller_goes_away_leaves_nothing_in_flight() {
        let inflight: Inflight<u32, u32> = Inflight::new();
        for k in 0..100 {
            let never = inflight.run(&k, || std::future::pending::<u32>());
            assert!(tokio::time::timeout(Duration::from_millis(1), never).await.is_err());
        }
        assert!(inflight.cells.lock().unwrap().is_empty(), "cancelled reviews leave no entry");
        assert_eq!(inflight.run(&7, || async { 7 }).await, 7);
        assert!(inflight.cells.lock().unwrap().is_empty());
    }

    #[test]
    fn the_caches_stay_bounded_whatever_is_put_in() {
        let mut c: TtlCache<u32, bool> = TtlCache::new();
        for i in 0..(3 * CACHE_LIMIT as u32) {
            c.insert(i, false, |_| Duration::from_secs(3600));
            assert!(c.entries.len() <= CACHE_LIMIT, "{} entries after {i}", c.entries.len());
        }
        assert_eq!(c.get(&(3 * CACHE_LIMIT as u32 - 1), |_| Duration::from_secs(3600)), Some(false), "the newest kept");
        let mut c: TtlCache<u32, bool> = TtlCache::new();
        for i in 0..1000 {
            c.insert(i, true, |_| Duration::ZERO);
        }
        assert!(c.entries.len() <= 128, "expired answers pruned as it grows: {}", c.entries.len());
        assert_eq!(c.get(&999, |_| Duration::ZERO), None);
    }
}
