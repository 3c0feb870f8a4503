//! The client's address, for per-address limits (login throttle, anonymous traffic) and the
//! access log.
//!
//! It is the socket peer's address, unless the peer is a configured trusted proxy (`serve
//! --trusted-proxy IP_OR_CIDR`): then it is taken from the forwarding header the proxy writes
//! (`X-Forwarded-For` by default, or RFC 7239 `Forwarded`), read from the right — the entry the
//! nearest proxy appended — skipping addresses of further trusted proxies. The first address
//! that is not a trusted proxy's is the client's; entries to its left were written by the
//! client and are never believed. Without `--trusted-proxy` the headers are ignored, so no
//! client can choose the address it is counted under. An entry that cannot be parsed (a
//! `Forwarded: for=unknown` or an obfuscated identifier) stops the walk at the last trusted
//! hop's address.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// Forwarding entries looked at, at most (the rightmost ones).
const MAX_HOPS: usize = 32;
/// Header bytes looked at, at most.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `fd00::/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// True if `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr.trim())
            .map_err(|_| format!("{s:?} is not an IP address or network (e.g. 10.0.0.0/8)"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

/// Which forwarding header trusted proxies write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx `$proxy_add_x_forwarded_for`, HAProxy
    /// `option forwardfor`, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// The proxies whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Proxies in `nets` that write `header`.
    pub fn new(nets: Vec<IpNet>, header: ForwardedHeader) -> Self {
        Self { nets, header }
    }

    /// True if `ip` is a trusted proxy's address.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client's address for a request that came from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut current = peer.to_canonical();
        if !self.is_trusted(current) {
            return current;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => x_forwarded_for(headers),
            ForwardedHeader::Forwarded => forwarded(headers),
        };
        for hop in hops.into_iter().rev() {
            match hop {
                Some(ip) if self.is_trusted(ip) => current = ip,
                Some(ip) => return ip,
                None => return current,
            }
        }
        current
    }
}

/// The client address `observe` determined for a request (in its extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client's address of a request: as `observe` determined it, else the socket peer's.
pub fn of(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ClientAddr>()
        .map_or_else(|| crate::tls::peer_ip(extensions).to_canonical(), |c| c.0)
}

/// The key per-address limits count under (IPv4: the address; IPv6: its /64).
pub use medvault_node::identity::throttle::limit_key;

/// The values of every `name` header, in order, comma-separated (within [`MAX_HEADER_BYTES`]).
fn joined(headers: &HeaderMap, name: &str) -> String {
    let mut out = String::new();
    for v in headers.get_all(name) {
        let Ok(text) = v.to_str() else {
            // Not visible ASCII: one entry that parses as nothing.
            out.push_str(",?");
            continue;
        };
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(text);
        if out.len() > MAX_HEADER_BYTES {
            // Too long to be a real proxy chain; keep the rightmost part (what proxies wrote).
            let cut = out.len() - MAX_HEADER_BYTES;
            let cut = (cut..out.len())
                .find(|i| out.is_char_boundary(*i))
                .unwrap_or(out.len());
            out.drain(..cut);
        }
    }
    out
}

fn last_hops<T>(mut hops: Vec<T>) -> Vec<T> {
    if hops.len() > MAX_HOPS {
        hops.drain(..hops.len() - MAX_HOPS);
    }
    hops
}

fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let text = joined(headers, "x-forwarded-for");
    if text.is_empty() {
        return Vec::new();
    }
    last_hops(text.split(',').map(|e| parse_node(e.trim())).collect())
}

/// RFC 7239: elements separated by `,`, pairs by `;`, values possibly quoted.
fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let text = joined(headers, "forwarded");
    if text.is_empty() {
        return Vec::new();
    }
    let mut elements = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                elements.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    elements.push(&text[start..]);
    last_hops(
        elements
            .into_iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v.trim().trim_matches('"')))
            })
            .collect(),
    )
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`; `None` for anything else (`unknown`, `_hidden`).
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(text) {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = SocketAddr::from_str(text) {
        return Some(sock.ip().to_canonical());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| IpAddr::from_str(t).ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn networks_parse_and_match() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(
            net.contains(ip("::ffff:10.1.0.9")),
            "IPv4-mapped counts as IPv4"
        );
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_count_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            ForwardedHeader::XForwardedFor,
        );
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.5")]);
        // From an untrusted peer the header is ignored.
        assert_eq!(proxies.client_ip(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        // From the proxy: the rightmost entry is what the proxy appended; the entry to its left
        // was written by the client and is not believed.
        assert_eq!(proxies.client_ip(ip("10.0.0.2"), &h), ip("203.0.113.5"));
        // Trusted hops are skipped.
        let h = headers(&[("x-forwarded-for", "203.0.113.5, 10.9.9.9")]);
        assert_eq!(proxies.client_ip(ip("10.0.0.2"), &h), ip("203.0.113.5"));
        // Several header lines are one list; ports and brackets are understood.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "[2001:db8::5]:443"),
        ]);
        assert_eq!(proxies.client_ip(ip("10.0.0.2"), &h), ip("2001:db8::5"));
        // Garbage or no header: the proxy's own address.
        let h = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(proxies.client_ip(ip("10.0.0.2"), &h), ip("10.0.0.2"));
        assert_eq!(
            proxies.client_ip(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
        // The other header is not read.
        let h = headers(&[("forwarded", "for=203.0.113.5")]);
        assert_eq!(proxies.client_ip(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn rfc7239_forwarded() {
        let proxies = TrustedProxies::new(
            vec!["127.0.0.1".parse().unwrap()],
            ForwardedHeader::Forwarded,
        );
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, For=\"[2001:db8:cafe::17]:4711\";by=203.0.113.43",
        )]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &h),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", "for=192.0.2.60, for=unknown")]);
        assert_eq!(
            proxies.client_ip(ip("127.0.0.1"), &h),
            ip("127.0.0.1"),
            "an unknown hop stops the walk at the proxy"
        );
    }

    #[test]
    fn ipv6_limits_count_per_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
