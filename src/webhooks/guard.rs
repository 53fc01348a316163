//! The SSRF guard: webhook URLs are `http` or `https` only, and unless
//! `webhooks.allow_private` is on, every address a host resolves to must be a public
//! one. The check runs at registration (a clear 422) and again on every delivery, in
//! the HTTP client's own resolver: the connection goes to an address that was checked
//! (no second lookup that DNS rebinding could answer differently). Redirects are not
//! followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

/// Longest URL accepted.
pub const MAX_URL: usize = 2048;

/// Why a URL or an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL this service sends to.
    #[error("{0}")]
    Url(String),
    /// It resolves to an address that is not public.
    #[error("{0}")]
    Private(String),
}

/// Parses and checks the form of a webhook URL (not its addresses: see [`check_host`]).
pub fn parse(text: &str) -> Result<Url, Refused> {
    if text.len() > MAX_URL {
        return Err(Refused::Url(format!("is longer than {MAX_URL} bytes")));
    }
    let url = Url::parse(text).map_err(|e| Refused::Url(format!("{} is not a URL: {e}", crate::text::echo(text))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::Url(format!("scheme {} is not http or https", crate::text::echo(url.scheme()))));
    }
    if url.host().is_none() {
        return Err(Refused::Url("has no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused::Url("must not carry credentials (user:password@)".into()));
    }
    if url.fragment().is_some() {
        return Err(Refused::Url("must not have a #fragment".into()));
    }
    Ok(url)
}

/// Whether `ip` is one a webhook may be sent to without `allow_private`: not loopback,
/// private, link-local, unique-local, shared (100.64/10), unspecified, broadcast,
/// multicast, documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (could reach anything v4)
                || v6 == Ipv6Addr::from([0, 0, 0, 0, 0, 0, s[6], s[7]]) && (s[6] != 0 || s[7] > 1)) // v4-compatible
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

/// Resolves `host` (a name or an address literal) and checks every address; returns them.
pub async fn check_host(host: &str, port: u16, allow_private: bool) -> Result<Vec<SocketAddr>, Refused> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Refused::Url(format!("host {} does not resolve: {e}", crate::text::echo(host))))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refused::Url(format!("host {} has no address", crate::text::echo(host))));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(Refused::Private(format!(
            "host {} resolves to {}, which is not a public address (webhooks.allow_private is off)",
            crate::text::echo(host),
            bad.ip()
        )));
    }
    Ok(addrs)
}

/// Checks a parsed URL's host (see [`check_host`]).
pub async fn check_url(url: &Url, allow_private: bool) -> Result<(), Refused> {
    let host = url.host_str().ok_or_else(|| Refused::Url("has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(443);
    check_host(host, port, allow_private).await.map(|_| ())
}

/// The HTTP client's resolver: resolves a name and refuses it unless every address is
/// allowed; the client connects only to the addresses it returns.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    /// `webhooks.allow_private`.
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = check_host(name.as_str(), 0, allow_private).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// A shared resolver for a client builder.
pub fn resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:93.184.216.34"] {
            assert!(is_public(good.parse().unwrap()), "{good} is public");
        }
    }

    #[test]
    fn urls_are_http_or_https_without_credentials() {
        assert!(parse("https://hooks.example.com/x?y=1").is_ok());
        assert!(parse("http://hooks.example.com:8080/").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://x/",
            "https://u:p@example.com/",
            "not a url",
            "https://example.com/#f",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(&format!("https://example.com/{}", "a".repeat(MAX_URL))).is_err());
    }

    #[tokio::test]
    async fn literals_and_names_are_checked() {
        assert!(matches!(check_host("127.0.0.1", 80, false).await, Err(Refused::Private(_))));
        assert!(matches!(check_host("[::1]", 80, false).await, Err(Refused::Private(_))));
        assert!(matches!(check_host("localhost", 80, false).await, Err(Refused::Private(_))));
        assert!(check_host("127.0.0.1", 80, true).await.is_ok());
    }
}
