//! What a client (or a proxy) writes into `X-Forwarded-For` / `Forwarded`, and the networks an
//! administrator gives `serve --trusted-proxy`: any bytes give an address (never a panic), and
//! an untrusted peer's headers never change it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use medvault_server::client_addr::{ForwardedHeader, IpNet, TrustedProxies};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let nets: Vec<IpNet> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    let header = if selector & 1 == 0 {
        ForwardedHeader::XForwardedFor
    } else {
        ForwardedHeader::Forwarded
    };
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Ok(v) = http::HeaderValue::from_str(line) {
            let name = if selector & 2 == 0 { "x-forwarded-for" } else { "forwarded" };
            headers.append(name, v);
        }
    }
    let proxies = TrustedProxies::new(nets, header);
    let trusted_peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let _ = proxies.client_ip(trusted_peer, &headers);
    // A peer that is not a trusted proxy is counted under its own address, whatever it sent.
    let outsider = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    if !proxies.is_trusted(outsider) {
        assert_eq!(proxies.client_ip(outsider, &headers), outsider);
    }
    let _ = medvault_server::client_addr::limit_key(proxies.client_ip(trusted_peer, &headers));
});
