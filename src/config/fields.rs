//! Every field name of the configuration kinds operators hand nodelet, as
//! upstream defines them, so that a name nodelet does not use is told apart:
//! a known field nodelet does not implement is a warning that names it, and
//! a name that is no field but is one slip from a field (`evictonHard`) is an
//! error that says which one was meant. A name far from every field (another
//! tool's key) stays a warning, as kubelet's and kube-proxy's lenient
//! decoding accept it.

/// KubeletConfiguration (kubelet.config.k8s.io/v1beta1) top-level fields,
/// from upstream's staging/src/k8s.io/kubelet/config/v1beta1/types.go (v1.35),
/// with `enableCAdvisorJSONEndpoints`, which older versions had.
pub const KUBELET: &[&str] = &[
    "apiVersion", "kind",
    "enableServer", "staticPodPath", "podLogsDir", "syncFrequency", "fileCheckFrequency", "httpCheckFrequency", "staticPodURL",
    "staticPodURLHeader", "address", "port", "readOnlyPort", "tlsCertFile", "tlsPrivateKeyFile", "tlsCipherSuites",
    "tlsCurvePreferences", "tlsMinVersion", "rotateCertificates", "serverTLSBootstrap", "authentication", "authorization",
    "registryPullQPS", "registryBurst", "imagePullCredentialsVerificationPolicy", "preloadedImagesVerificationAllowlist",
    "eventRecordQPS", "eventBurst", "enableDebuggingHandlers", "enableContentionProfiling", "healthzPort",
    "healthzBindAddress", "oomScoreAdj", "clusterDomain", "clusterDNS", "streamingConnectionIdleTimeout",
    "nodeStatusUpdateFrequency", "nodeStatusReportFrequency", "nodeLeaseDurationSeconds", "imageMinimumGCAge",
    "imageMaximumGCAge", "imageGCHighThresholdPercent", "imageGCLowThresholdPercent", "volumeStatsAggPeriod",
    "kubeletCgroups", "systemCgroups", "cgroupRoot", "cgroupsPerQOS", "cgroupDriver", "cpuManagerPolicy",
    "singleProcessOOMKill", "cpuManagerPolicyOptions", "cpuManagerReconcilePeriod", "draManagerReconcilePeriod",
    "memoryManagerPolicy", "topologyManagerPolicy", "topologyManagerScope", "topologyManagerPolicyOptions", "qosReserved",
    "runtimeRequestTimeout", "hairpinMode", "maxPods", "podCIDR", "podPidsLimit", "resolvConf", "runOnce", "cpuCFSQuota",
    "cpuCFSQuotaPeriod", "nodeStatusMaxImages", "maxOpenFiles", "contentType", "kubeAPIQPS", "kubeAPIBurst",
    "serializeImagePulls", "maxParallelImagePulls", "evictionHard", "evictionSoft", "evictionSoftGracePeriod",
    "evictionPressureTransitionPeriod", "evictionMaxPodGracePeriod", "evictionMinimumReclaim", "mergeDefaultEvictionSettings",
    "podsPerCore", "enableControllerAttachDetach", "protectKernelDefaults", "makeIPTablesUtilChains",
    "iptablesMasqueradeBit", "iptablesDropBit", "featureGates", "failSwapOn", "memorySwap", "containerLogMaxSize",
    "containerLogMaxFiles", "containerLogMaxWorkers", "containerLogMonitorInterval",
    "configMapAndSecretChangeDetectionStrategy", "systemReserved", "kubeReserved", "reservedSystemCPUs",
    "showHiddenMetricsForVersion", "systemReservedCgroup", "kubeReservedCgroup", "enforceNodeAllocatable",
    "allowedUnsafeSysctls", "volumePluginDir", "providerID", "kernelMemcgNotification", "logging", "enableSystemLogHandler",
    "enableSystemLogQuery", "shutdownGracePeriod", "shutdownGracePeriodCriticalPods", "shutdownGracePeriodByPodPriority",
    "crashLoopBackOff", "reservedMemory", "enableProfilingHandler", "enableDebugFlagsHandler", "seccompDefault",
    "memoryThrottlingFactor", "memoryReservationPolicy", "registerWithTaints", "registerNode", "tracing",
    "localStorageCapacityIsolation", "containerRuntimeEndpoint", "imageServiceEndpoint", "failCgroupV1", "userNamespaces",
    "enableCAdvisorJSONEndpoints",
];

/// KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) top-level
/// fields, from upstream's staging/src/k8s.io/kube-proxy/config/v1alpha1/types.go,
/// with `udpIdleTimeout`, which kubeadm up to v1.24 writes.
pub const KUBE_PROXY: &[&str] = &[
    "apiVersion", "kind",
    "featureGates", "clientConnection", "logging", "hostnameOverride", "bindAddress", "healthzBindAddress",
    "metricsBindAddress", "bindAddressHardFail", "enableProfiling", "showHiddenMetricsForVersion", "serviceProxyName", "mode",
    "iptables", "ipvs", "nftables", "winkernel", "detectLocalMode", "detectLocal", "clusterCIDR", "nodePortAddresses",
    "oomScoreAdj", "conntrack", "configSyncPeriod", "portRange",
    "udpIdleTimeout",
];

/// What a name nodelet does not use is, among `known`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unused {
    /// A field of the kind that nodelet does not implement.
    Known,
    /// No field, but one slip from this one: a typo.
    Typo(&'static str),
    /// No field, and near none.
    Foreign,
}

/// Classifies `name` against `known` (see [`Unused`]).
pub fn classify(name: &str, known: &[&'static str]) -> Unused {
    if known.contains(&name) {
        return Unused::Known;
    }
    match did_you_mean(name, known) {
        Some(k) => Unused::Typo(k),
        None => Unused::Foreign,
    }
}

/// The field `name` most likely meant: the same name in another case, or
/// the nearest within one edit (names up to 5 letters) or two (longer),
/// counting a swap of neighbours as one edit. Ties go to the first listed.
pub fn did_you_mean(name: &str, known: &[&'static str]) -> Option<&'static str> {
    if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(name)) {
        return Some(k);
    }
    let limit = if name.chars().count() <= 5 { 1 } else { 2 };
    let lower = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance with adjacent transpositions (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for (i, row) in d.chunks_mut(w).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(w).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1).min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_told_from_unsupported_and_foreign_fields() {
        assert_eq!(classify("evictonHard", KUBELET), Unused::Typo("evictionHard"));
        assert_eq!(classify("clusterDns", KUBELET), Unused::Typo("clusterDNS"), "another case");
        assert_eq!(classify("maxPdos", KUBELET), Unused::Typo("maxPods"), "two letters swapped");
        assert_eq!(classify("staticPodPaht", KUBELET), Unused::Typo("staticPodPath"));
        assert_eq!(classify("cpuManagerPolicy", KUBELET), Unused::Known);
        assert_eq!(classify("topologyManagerPolicy", KUBELET), Unused::Known);
        assert_eq!(classify("someOtherToolsKey", KUBELET), Unused::Foreign);
        // kube-proxy's: the seed's flattened kubeconfig is no typo of a top-level field.
        assert_eq!(classify("kubeconfig", KUBE_PROXY), Unused::Foreign);
        assert_eq!(classify("clusterCIRD", KUBE_PROXY), Unused::Typo("clusterCIDR"));
        assert_eq!(classify("conntrack", KUBE_PROXY), Unused::Known);
        assert_eq!(classify("mdoe", KUBE_PROXY), Unused::Typo("mode"));
        assert_eq!(classify("port", KUBE_PROXY), Unused::Foreign, "short names get one edit at most");
    }

    #[test]
    fn the_lists_have_no_duplicates_and_every_name_is_its_own_nearest() {
        for list in [KUBELET, KUBE_PROXY] {
            let mut seen = std::collections::BTreeSet::new();
            for f in list {
                assert!(seen.insert(f), "{f} twice");
                assert_eq!(did_you_mean(f, list), Some(*f));
            }
        }
        assert_eq!(distance("abc", "acb"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
