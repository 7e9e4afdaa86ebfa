//! Which hosts a service or ingress rule answers on: the names generated from the
//! templates (default, tag and cluster-local names) and the exact hosts written in the config.
//! Validation uses this to find duplicates; the compiler uses it to fill the host map.

use crate::model::{Config, Service, Visibility};

/// What a host of a service sends its traffic to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostTarget {
    /// The service's weighted split.
    Split,
    /// One traffic target, by its index in `traffic` (a tag host).
    Tag(usize),
}

/// One host a service answers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHost {
    pub host: String,
    /// Served only on the internal (cluster-local) listener.
    pub internal_only: bool,
    pub target: HostTarget,
    /// Where the host comes from, for error messages (see [`ServiceHost::origin`]).
    pub from: Origin,
}

/// Which part of a service a host comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// The tag host of `traffic[t]`.
    Tag(usize),
    /// `hosts[h]`, written in the config.
    Extra(usize),
    ClusterLocal,
    /// A cluster-local name of the tag host of `traffic[t]`.
    ClusterLocalTag(usize),
}

impl ServiceHost {
    /// Where the host comes from in the service at `at`, e.g.
    /// `services[0].traffic[1] (tag host of "current")`. Formatted only for an error.
    pub fn origin(&self, at: &str, svc: &Service) -> String {
        let tag = |t: usize| svc.traffic[t].tag.as_deref().unwrap_or_default();
        match self.from {
            Origin::Default => format!("{at} (default host)"),
            Origin::Tag(t) => format!("{at}.traffic[{t}] (tag host of {:?})", tag(t)),
            Origin::Extra(h) => format!("{at}.hosts[{h}]"),
            Origin::ClusterLocal => format!("{at} (cluster-local host)"),
            Origin::ClusterLocalTag(t) => {
                format!("{at}.traffic[{t}] (cluster-local tag host of {:?})", tag(t))
            }
        }
    }

    /// The path an error about this host points at: `at`, `at.traffic[t]` or `at.hosts[h]`.
    pub fn path(&self, at: &str) -> String {
        match self.from {
            Origin::Default | Origin::ClusterLocal => at.to_string(),
            Origin::Tag(t) | Origin::ClusterLocalTag(t) => format!("{at}.traffic[{t}]"),
            Origin::Extra(h) => format!("{at}.hosts[{h}]"),
        }
    }
}

/// Fills `{name}`, `{namespace}`, `{domain}` (and `{tag}`) in a template.
pub fn fill(template: &str, name: &str, namespace: &str, domain: &str, tag: &str) -> String {
    template
        .replace("{name}", name)
        .replace("{namespace}", namespace)
        .replace("{domain}", domain)
        .replace("{tag}", tag)
}

/// Every host of a service, in a stable order: default, tags, extra hosts, then the
/// cluster-local names (default, then tags).
pub fn service_hosts(cfg: &Config, svc: &Service) -> Vec<ServiceHost> {
    let tags = svc.traffic.iter().filter(|t| t.tag.is_some()).count();
    let mut out = Vec::with_capacity(4 + svc.hosts.len() + 4 * tags);
    let external = svc.visibility == Visibility::External;
    if external {
        out.push(ServiceHost {
            host: fill(
                &cfg.domain_template,
                &svc.name,
                &svc.namespace,
                &cfg.domain,
                "",
            ),
            internal_only: false,
            target: HostTarget::Split,
            from: Origin::Default,
        });
        for (t, target) in svc.traffic.iter().enumerate() {
            if let Some(tag) = &target.tag {
                let tag_name = fill(&cfg.tag_template, &svc.name, &svc.namespace, "", tag);
                out.push(ServiceHost {
                    host: fill(
                        &cfg.domain_template,
                        &tag_name,
                        &svc.namespace,
                        &cfg.domain,
                        "",
                    ),
                    internal_only: false,
                    target: HostTarget::Tag(t),
                    from: Origin::Tag(t),
                });
            }
        }
    }
    for (h, host) in svc.hosts.iter().enumerate() {
        out.push(ServiceHost {
            host: host.clone(),
            internal_only: !external,
            target: HostTarget::Split,
            from: Origin::Extra(h),
        });
    }
    for name in cluster_local_names(cfg, &svc.name, &svc.namespace) {
        out.push(ServiceHost {
            host: name,
            internal_only: true,
            target: HostTarget::Split,
            from: Origin::ClusterLocal,
        });
    }
    for (t, target) in svc.traffic.iter().enumerate() {
        if let Some(tag) = &target.tag {
            let tag_name = fill(&cfg.tag_template, &svc.name, &svc.namespace, "", tag);
            for name in cluster_local_names(cfg, &tag_name, &svc.namespace) {
                out.push(ServiceHost {
                    host: name,
                    internal_only: true,
                    target: HostTarget::Tag(t),
                    from: Origin::ClusterLocalTag(t),
                });
            }
        }
    }
    out
}

/// `name.ns`, `name.ns.svc` and `name.ns.svc.<cluster_domain>`, as Knative names them.
pub fn cluster_local_names(cfg: &Config, name: &str, namespace: &str) -> [String; 3] {
    [
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.{}", cfg.cluster_domain),
    ]
}

/// Whether `host` is a DNS name Weir can route: labels of `[a-z0-9-]` (any case), 1–63
/// characters, not starting or ending with `-`, 253 characters at most.
pub fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty() && host.len() <= 253 && host.split('.').all(is_dns_label_any_case)
}

fn is_dns_label_any_case(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// DNS-1123 label: lowercase letters, digits and `-`, 1–63 characters, alphanumeric at both ends.
pub fn is_dns1123_label(l: &str) -> bool {
    is_dns_label_any_case(l) && !l.bytes().any(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knative_names() {
        let cfg: Config = serde_json::from_str(
            r#"{"services":[{"name":"hello","traffic":[
                {"revision":"a","percent":100,"tag":"current"}]}]}"#,
        )
        .unwrap();
        let hosts: Vec<_> = service_hosts(&cfg, &cfg.services[0])
            .into_iter()
            .map(|h| (h.host, h.internal_only))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("hello.default.example.com".to_string(), false),
                ("current-hello.default.example.com".to_string(), false),
                ("hello.default".to_string(), true),
                ("hello.default.svc".to_string(), true),
                ("hello.default.svc.cluster.local".to_string(), true),
                ("current-hello.default".to_string(), true),
                ("current-hello.default.svc".to_string(), true),
                ("current-hello.default.svc.cluster.local".to_string(), true),
            ]
        );
    }

    #[test]
    fn labels() {
        assert!(is_dns1123_label("hello-00001"));
        assert!(!is_dns1123_label("Hello"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns_name("Hello.Example.com."));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("a_b.com"));
    }
}
