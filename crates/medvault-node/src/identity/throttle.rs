//! The login throttle: attempts per client address and per account name, in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Login attempts accepted per client address, and per account name, per [`THROTTLE_WINDOW`]
/// by default.
pub const THROTTLE_ATTEMPTS: u32 = 20;
/// Window of the login throttle.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// The key per-address limits count under: the address itself for IPv4, its /64 network for
/// IPv6 (one subscriber usually holds a whole /64, so counting single IPv6 addresses would
/// let one client spread over 2^64 of them).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    }
}

/// What the login throttle counts attempts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ThrottleKey {
    /// A client address (IPv6: its /64).
    Address(IpAddr),
    /// An account name (SHA-256 of the normalised name: a name need not exist to be counted,
    /// so the throttle says nothing about which accounts do).
    Account([u8; 32]),
}

/// Login attempts per client address and per account name, in memory (each server process
/// counts its own; the lockout after repeated failures is stored and shared).
#[derive(Debug, Default)]
pub struct LoginThrottle(Mutex<HashMap<ThrottleKey, (u32, Instant)>>);

impl LoginThrottle {
    /// Counts an attempt from `ip`; false once the address is over `limit` attempts in the
    /// window.
    pub fn admit_address(&self, ip: IpAddr, limit: u32) -> bool {
        self.admit(ThrottleKey::Address(limit_key(ip)), limit)
    }

    /// Counts an attempt for the account name `username`; false once the name is over `limit`
    /// attempts in the window (from any address).
    pub fn admit_account(&self, username: &str, limit: u32) -> bool {
        let name = username.trim().to_lowercase();
        let mut input = b"medvault-login-throttle\0".to_vec();
        input.extend_from_slice(name.as_bytes());
        self.admit(ThrottleKey::Account(medvault_crypto::sha256(&input)), limit)
    }

    fn admit(&self, key: ThrottleKey, limit: u32) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        if m.len() > 100_000 {
            m.retain(|_, (_, since)| since.elapsed() < THROTTLE_WINDOW);
        }
        let entry = m.entry(key).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= THROTTLE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
        entry.0 <= limit
    }
}
