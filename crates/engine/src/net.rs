//! Outbound HTTP policy: which destinations `http` steps may reach.
//!
//! By default only public addresses are allowed: loopback, private (RFC 1918, unique
//! local, carrier-grade NAT), link-local (including cloud metadata at 169.254.169.254),
//! multicast, broadcast and unspecified addresses are refused, so a flow cannot be used to
//! probe the network the engine runs in. Host names are resolved and every address checked;
//! redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Which non-public destinations are allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Allow private, link-local and loopback destinations (trusted networks only).
    #[serde(default)]
    pub allow_private_network: bool,
    /// Allow loopback destinations only (`127.0.0.0/8`, `::1`): local apps and tests.
    #[serde(default)]
    pub allow_loopback: bool,
}

/// Why an address is refused, or `None` when it is allowed.
pub fn refusal(policy: NetworkPolicy, ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return (!(policy.allow_loopback || policy.allow_private_network)).then_some("loopback");
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Some("unspecified or multicast");
    }
    let class = match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    };
    match class {
        Some(c) if !policy.allow_private_network => Some(c),
        _ => None,
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_broadcast() || o[0] == 0 {
        Some("reserved")
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if (s[0] & 0xfe00) == 0xfc00 {
        Some("private")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else {
        None
    }
}

/// Checks a URL's destination: resolves its host and refuses it if any address is not
/// allowed by `policy`.
pub async fn check_url(policy: NetworkPolicy, url: &url::Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme `{}` is not allowed (http or https only)",
            url.scheme()
        ));
    }
    let host = url.host().ok_or_else(|| format!("{url} has no host"))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    for ip in addrs {
        if let Some(why) = refusal(policy, ip) {
            return Err(format!(
                "destination {ip} ({why}) is refused; set allow_private_network (or allow_loopback) in the engine configuration to allow it"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn default_policy_refuses_non_public() {
        let p = NetworkPolicy::default();
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(refusal(p, ip(s)).is_some(), "{s}");
        }
        for s in ["93.184.216.34", "2606:4700::1111"] {
            assert!(refusal(p, ip(s)).is_none(), "{s}");
        }
    }

    #[test]
    fn loopback_and_private_can_be_allowed() {
        let lo = NetworkPolicy {
            allow_loopback: true,
            ..Default::default()
        };
        assert!(refusal(lo, ip("127.0.0.1")).is_none());
        assert!(refusal(lo, ip("10.0.0.1")).is_some());
        let all = NetworkPolicy {
            allow_private_network: true,
            ..Default::default()
        };
        assert!(refusal(all, ip("10.0.0.1")).is_none());
        assert!(refusal(all, ip("169.254.169.254")).is_none());
    }

    #[tokio::test]
    async fn urls() {
        let p = NetworkPolicy::default();
        let u = |s: &str| url::Url::parse(s).expect("url");
        assert!(check_url(p, &u("http://127.0.0.1:8080/x")).await.is_err());
        assert!(check_url(p, &u("http://localhost/x")).await.is_err());
        assert!(check_url(p, &u("ftp://93.184.216.34/")).await.is_err());
        assert!(check_url(p, &u("https://93.184.216.34/")).await.is_ok());
    }
}
