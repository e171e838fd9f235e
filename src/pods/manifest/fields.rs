//! The field names a static pod manifest may use where it used an unknown
//! one, for a did-you-mean: each object's names are the ones its
//! k8s-openapi type's deserializer accepts (asked of the type itself, so
//! they follow the API release nodelet is built against), found by walking
//! the path from the Pod.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{self, Deserialize, Visitor};

/// The names `T`'s deserializer takes (what it passes to
/// `deserialize_struct`); empty for a type that is no struct.
pub fn names_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Ask;
    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields found")
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Found(&[])
        }
    }
    impl<'de> de::Deserializer<'de> for Ask {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(Ask) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

/// The object types of a pod that a manifest writes by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pod,
    Meta,
    Spec,
    Container,
    Ephemeral,
    Probe,
    HttpGet,
    Exec,
    TcpSocket,
    Grpc,
    Port,
    Env,
    EnvFrom,
    Mount,
    Resources,
    SecurityContext,
    PodSecurityContext,
    Lifecycle,
    Handler,
    Volume,
    HostPath,
    EmptyDir,
    ConfigMapVolume,
    SecretVolume,
    Toleration,
    DnsConfig,
    HostAlias,
}

impl Kind {
    fn names(self) -> &'static [&'static str] {
        match self {
            Kind::Pod => names_of::<core::Pod>(),
            Kind::Meta => names_of::<ObjectMeta>(),
            Kind::Spec => names_of::<core::PodSpec>(),
            Kind::Container => names_of::<core::Container>(),
            Kind::Ephemeral => names_of::<core::EphemeralContainer>(),
            Kind::Probe => names_of::<core::Probe>(),
            Kind::HttpGet => names_of::<core::HTTPGetAction>(),
            Kind::Exec => names_of::<core::ExecAction>(),
            Kind::TcpSocket => names_of::<core::TCPSocketAction>(),
            Kind::Grpc => names_of::<core::GRPCAction>(),
            Kind::Port => names_of::<core::ContainerPort>(),
            Kind::Env => names_of::<core::EnvVar>(),
            Kind::EnvFrom => names_of::<core::EnvFromSource>(),
            Kind::Mount => names_of::<core::VolumeMount>(),
            Kind::Resources => names_of::<core::ResourceRequirements>(),
            Kind::SecurityContext => names_of::<core::SecurityContext>(),
            Kind::PodSecurityContext => names_of::<core::PodSecurityContext>(),
            Kind::Lifecycle => names_of::<core::Lifecycle>(),
            Kind::Handler => names_of::<core::LifecycleHandler>(),
            Kind::Volume => names_of::<core::Volume>(),
            Kind::HostPath => names_of::<core::HostPathVolumeSource>(),
            Kind::EmptyDir => names_of::<core::EmptyDirVolumeSource>(),
            Kind::ConfigMapVolume => names_of::<core::ConfigMapVolumeSource>(),
            Kind::SecretVolume => names_of::<core::SecretVolumeSource>(),
            Kind::Toleration => names_of::<core::Toleration>(),
            Kind::DnsConfig => names_of::<core::PodDNSConfig>(),
            Kind::HostAlias => names_of::<core::HostAlias>(),
        }
    }

    /// The type of field `name` of this one (list items for a list).
    fn child(self, name: &str) -> Option<Kind> {
        use Kind::*;
        Some(match (self, name) {
            (Pod, "metadata") => Meta,
            (Pod, "spec") => Spec,
            (Spec, "containers" | "initContainers") => Container,
            (Spec, "ephemeralContainers") => Ephemeral,
            (Spec, "volumes") => Volume,
            (Spec, "securityContext") => PodSecurityContext,
            (Spec, "tolerations") => Toleration,
            (Spec, "dnsConfig") => DnsConfig,
            (Spec, "hostAliases") => HostAlias,
            (Container | Ephemeral, "livenessProbe" | "readinessProbe" | "startupProbe") => Probe,
            (Container | Ephemeral, "ports") => Port,
            (Container | Ephemeral, "env") => Env,
            (Container | Ephemeral, "envFrom") => EnvFrom,
            (Container | Ephemeral, "volumeMounts") => Mount,
            (Container | Ephemeral, "resources") => Resources,
            (Container | Ephemeral, "securityContext") => SecurityContext,
            (Container | Ephemeral, "lifecycle") => Lifecycle,
            (Lifecycle, "postStart" | "preStop") => Handler,
            (Probe | Handler, "httpGet") => HttpGet,
            (Probe | Handler, "exec") => Exec,
            (Probe | Handler, "tcpSocket") => TcpSocket,
            (Probe, "grpc") => Grpc,
            (Volume, "hostPath") => HostPath,
            (Volume, "emptyDir") => EmptyDir,
            (Volume, "configMap") => ConfigMapVolume,
            (Volume, "secret") => SecretVolume,
            _ => return None,
        })
    }
}

/// The names allowed where `path` (`spec.containers[0].imagePullPolcy`,
/// as the decoder reports an unknown field) put its last one; `None` where
/// this table does not reach.
pub fn siblings(path: &str) -> Option<&'static [&'static str]> {
    // A PodList's item (a manifest URL may serve one) is a Pod.
    let path = match path.strip_prefix("items[") {
        Some(rest) => rest.split_once("].").map_or(path, |(_, p)| p),
        None => path,
    };
    let mut parts: Vec<&str> = path.split('.').map(|p| p.split('[').next().unwrap_or(p)).collect();
    parts.pop()?;
    let mut kind = Kind::Pod;
    for p in parts {
        kind = kind.child(p)?;
    }
    Some(kind.names())
}

/// The field meant by an unknown one at `path`, when it is one slip from a
/// field of that object (the rule of the configuration files' did-you-mean).
pub fn meant(path: &str) -> Option<&'static str> {
    let last = path.rsplit('.').next()?;
    crate::config::fields::did_you_mean(last, siblings(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_come_from_the_types_and_the_path_finds_the_object() {
        assert!(names_of::<core::Container>().contains(&"imagePullPolicy"));
        assert!(names_of::<core::PodSpec>().contains(&"terminationGracePeriodSeconds"));
        assert_eq!(meant("spec.containers[0].imagePullPolcy"), Some("imagePullPolicy"));
        assert_eq!(meant("spec.containers[1].livenessProbe.httpGet.prot"), Some("port"));
        assert_eq!(meant("spec.initContainers[0].livenesProbe"), Some("livenessProbe"));
        assert_eq!(meant("items[2].spec.restartPolcy"), Some("restartPolicy"), "a PodList's item");
        assert_eq!(meant("spec.hostnetwork"), Some("hostNetwork"));
        assert_eq!(meant("metadata.annotation"), Some("annotations"));
        assert_eq!(meant("spec.volumes[0].hostpath"), Some("hostPath"));
        // Nothing near: no guess.
        assert_eq!(meant("spec.containers[0].colour"), None);
        assert_eq!(meant("spec.nosuch.thing"), None);
    }
}
