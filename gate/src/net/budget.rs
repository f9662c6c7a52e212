//! One file budget for the process: every socket is a file, and a process
//! that reaches its file limit (`EMFILE`) can accept nobody — a flood on
//! one listener would stall logins on all of them.
//!
//! At start the soft limit is raised to the hard one ([`raise_file_limit`]);
//! then each listener gets a share of what is left after a reserve for the
//! process's own files (logs, the accounts file, Redis, outgoing links),
//! and its configured bound is lowered to that share ([`fit`]): the shares
//! add up to less than the limit, so no listener can starve another and
//! the process never runs out. Configuration can only lower a bound, never
//! raise it past its share.

use crate::config::Config;

/// Files kept for the process itself, whatever the limit.
pub const RESERVE: u64 = 128;

/// Each listener's share of the files left after [`RESERVE`], in percent.
/// Players hold most connections; logins are short but come in crowds;
/// service and control links are few and must never be crowded out;
/// operations need a handful.
const SHARES: Shares<u64> = Shares {
    players: 70,
    logins: 15,
    links: 5,
    control: 5,
    ops: 5,
};

/// Bounds per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares<T> {
    /// Player connections: the gate's TCP and WebSocket listeners together
    /// (`gate.maxclient`).
    pub players: T,
    /// Login dialogues: TCP and WebSocket (`login.max_connections`).
    pub logins: T,
    /// Backend service links (`backend.max_links`).
    pub links: T,
    /// Cluster control links, on a gate node.
    pub control: T,
    /// Operations (metrics, admin) connections.
    pub ops: T,
}

impl Shares<usize> {
    /// The bounds a process with `limit` files can keep.
    pub fn of(limit: u64) -> Shares<usize> {
        let left = limit.saturating_sub(RESERVE);
        let share = |percent: u64| usize::try_from(left * percent / 100).unwrap_or(usize::MAX);
        Shares {
            players: share(SHARES.players),
            logins: share(SHARES.logins),
            links: share(SHARES.links),
            control: share(SHARES.control),
            ops: share(SHARES.ops),
        }
    }
}

/// Raises the soft file limit to the hard one and returns it (or the
/// limit as it was, if it cannot be read or raised). `None` where the
/// platform has no such limit.
pub fn raise_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let now = getrlimit(Resource::Nofile);
        let raised = Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        if now.current != now.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
            return now.maximum.or(Some(u64::MAX));
        }
        now.current.or(Some(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Lowers every listener bound of `config` to its share of `limit` files
/// (bounds already lower stay) and returns the shares. A bound of 0
/// ("none") for per-source limits is left alone; the totals are what
/// protects the process.
pub fn fit(config: &mut Config, limit: u64) -> Shares<usize> {
    let shares = Shares::of(limit);
    let lower = |bound: &mut usize, share: usize| *bound = (*bound).min(share.max(1));
    lower(&mut config.gate.maxclient, shares.players);
    lower(&mut config.login.max_connections, shares.logins);
    // Service links: the authenticated ones and those still proving the
    // secret share the links' part.
    lower(&mut config.backend.max_links, shares.links / 2);
    lower(&mut config.backend.max_pending_links, shares.links / 2);
    lower(&mut config.cluster.control_max_pending, shares.control);
    lower(&mut config.ops.max_connections, shares.ops);
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_in_the_limit_with_the_reserve_left() {
        for limit in [256, 1024, 20_000, 1 << 20] {
            let s = Shares::of(limit);
            let total = s.players + s.logins + s.links + s.control + s.ops;
            assert!(total as u64 + RESERVE <= limit, "{limit}: {s:?}");
            assert!(s.players > s.logins && s.logins > s.ops);
        }
        assert_eq!(Shares::of(100).players, 0);
    }

    #[test]
    fn configuration_only_lowers_bounds() {
        let mut config = Config::default();
        config.login.max_connections = 10;
        let shares = fit(&mut config, 20_000);
        assert_eq!(config.gate.maxclient, shares.players);
        assert!(config.gate.maxclient < 20_000);
        assert_eq!(config.login.max_connections, 10);
        assert_eq!(config.backend.max_links, 1024.min(shares.links / 2));
        assert_eq!(config.ops.max_connections, 64.min(shares.ops));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_file_limit();
        if cfg!(unix) {
            let limit = limit.unwrap();
            assert!(limit >= 64);
        }
    }
}
