//! Abuse limits: who a client is (its address, through trusted proxies only), how many
//! connections one address may hold, and how fast one address may publish.
//!
//! Every limit is per client address because that is what a server without accounts can
//! tell apart. Behind a reverse proxy every connection comes from the proxy, so the proxy's
//! `X-Forwarded-For` is believed, but only from the addresses given with `--trusted-proxy`
//! (anyone else could send the header to pose as many clients, or as someone else).

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client a request or connection is attributed to, inserted into every request's
/// extensions by the accept loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The limits of one server and their live state.
pub struct Limits {
    trusted_proxies: Vec<IpAddr>,
    /// Open connections per address. A std mutex: held for a map update, never across an
    /// `.await`; taken once when a connection opens and once when it closes.
    conns: Mutex<HashMap<IpAddr, u32>>,
    max_conns_per_ip: u32,
    /// Token bucket per address (GCRA, `governor`), `None` when publishing is not limited.
    publish: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Limits {
    /// `publish_rate`: publishes per second per address (0: unlimited), with bursts of
    /// `publish_burst`; `max_conns_per_ip`: 0 is unlimited.
    pub fn new(
        trusted_proxies: Vec<IpAddr>,
        max_conns_per_ip: u32,
        publish_rate: u32,
        publish_burst: u32,
    ) -> Limits {
        let publish = NonZeroU32::new(publish_rate).map(|rate| {
            let burst = NonZeroU32::new(publish_burst.max(publish_rate)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Limits {
            trusted_proxies,
            conns: Mutex::new(HashMap::new()),
            max_conns_per_ip,
            publish,
        }
    }

    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.contains(&peer)
    }

    /// The client behind a request from `peer`: the peer itself, or, when the peer is a
    /// trusted proxy, the right-most `X-Forwarded-For` address that is not one (proxies
    /// append, so the left-most entries are whatever the client chose to send).
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.is_trusted_proxy(peer) {
            return bucket(peer);
        }
        bucket(
            forwarded_for
                .into_iter()
                .flat_map(|v| v.rsplit(','))
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map_while(|a| a.parse::<IpAddr>().ok())
                .find(|a| !self.is_trusted_proxy(*a))
                .unwrap_or(peer),
        )
    }

    /// Counts a new connection from `peer`, or refuses it past `--max-conns-per-ip`.
    /// Trusted proxies are not limited (they carry many clients; limit those at the proxy).
    pub fn open_connection(self: &Arc<Self>, peer: IpAddr) -> Option<ConnGuard> {
        if self.max_conns_per_ip == 0 || self.is_trusted_proxy(peer) {
            return Some(ConnGuard(None));
        }
        let peer = bucket(peer);
        let mut conns = self.conns.lock().expect("limits lock poisoned");
        let n = conns.entry(peer).or_insert(0);
        if *n >= self.max_conns_per_ip {
            return None;
        }
        *n += 1;
        Some(ConnGuard(Some((self.clone(), peer))))
    }

    /// Takes one publish from `client`'s bucket, or says how long until one is available.
    pub fn publish_allowed(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.publish else {
            return Ok(());
        };
        limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets buckets that are full again (an address that stopped publishing costs
    /// nothing after a while). Called periodically.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.publish {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn max_conns_per_ip(&self) -> u32 {
        self.max_conns_per_ip
    }
}

/// The address a limit counts: an IPv6 client by its /64 (one host or home network is
/// normally given a whole /64, so counting single addresses would let it pose as 2^64
/// clients), an IPv4 client by its address.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// One counted connection; uncounted when dropped. Shared (in every request's extensions
/// as [`Counted`]) so that a WebSocket taken over from the HTTP connection keeps counting.
pub struct ConnGuard(Option<(Arc<Limits>, IpAddr)>);

/// The count of the connection a request came on, held by whatever outlives the request
/// on that connection (an upgraded WebSocket).
#[derive(Clone)]
pub struct Counted {
    /// Held for its `Drop`.
    _guard: Arc<ConnGuard>,
}

impl Counted {
    pub fn new(guard: ConnGuard) -> Counted {
        Counted {
            _guard: Arc::new(guard),
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some((limits, peer)) = self.0.take() {
            let mut conns = limits.conns.lock().expect("limits lock poisoned");
            if let Some(n) = conns.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    conns.remove(&peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = Limits::new(vec![ip("10.0.0.1"), ip("10.0.0.2")], 0, 0, 0);
        // Not a proxy: its header is ignored.
        assert_eq!(l.client(ip("1.2.3.4"), Some("9.9.9.9")), ip("1.2.3.4"));
        // A proxy: the right-most address that is not a proxy.
        assert_eq!(
            l.client(ip("10.0.0.1"), Some("6.6.6.6, 5.5.5.5, 10.0.0.2")),
            ip("5.5.5.5")
        );
        assert_eq!(l.client(ip("10.0.0.1"), None), ip("10.0.0.1"));
        assert_eq!(l.client(ip("10.0.0.1"), Some("garbage")), ip("10.0.0.1"));
    }

    #[test]
    fn connections_per_address_are_counted_and_released() {
        let l = Arc::new(Limits::new(vec![ip("10.0.0.1")], 2, 0, 0));
        let a = l.open_connection(ip("1.1.1.1")).unwrap();
        let _b = l.open_connection(ip("1.1.1.1")).unwrap();
        assert!(l.open_connection(ip("1.1.1.1")).is_none());
        assert!(l.open_connection(ip("2.2.2.2")).is_some());
        let proxy: Vec<_> = (0..5)
            .map(|_| l.open_connection(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(proxy.len(), 5);
        drop(a);
        assert!(l.open_connection(ip("1.1.1.1")).is_some());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let l = Arc::new(Limits::new(vec![], 1, 1, 1));
        let _a = l.open_connection(ip("2001:db8::1")).unwrap();
        assert!(
            l.open_connection(ip("2001:db8::ffff:2")).is_none(),
            "same /64"
        );
        assert!(
            l.open_connection(ip("2001:db8:0:1::1")).is_some(),
            "another /64"
        );
        assert!(l.publish_allowed(l.client(ip("2001:db8::1"), None)).is_ok());
        assert!(l
            .publish_allowed(l.client(ip("2001:db8::2"), None))
            .is_err());
    }

    #[test]
    fn publishes_are_limited_per_address() {
        let l = Limits::new(vec![], 0, 2, 3);
        for _ in 0..3 {
            assert!(l.publish_allowed(ip("1.1.1.1")).is_ok());
        }
        let wait = l.publish_allowed(ip("1.1.1.1")).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(l.publish_allowed(ip("2.2.2.2")).is_ok());
        assert!(Limits::new(vec![], 0, 0, 0)
            .publish_allowed(ip("1.1.1.1"))
            .is_ok());
    }
}
