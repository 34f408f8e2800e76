//! `--host`: what a user may write (an IP address, IPv6 with or without brackets, or a
//! host name such as `localhost`) and how it becomes the addresses to bind.
//!
//! The NixOS module and `lib/` treat `localhost` and `[::1]` as loopback, so the runner
//! must accept every spelling they accept. A host name is resolved at start-up and the
//! first address that can be bound is used (for `localhost` that is one of 127.0.0.1
//! and ::1, in the resolver's order).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// What to write instead, for every error about `--host`.
const HOST_HINT: &str = "write an IP address (127.0.0.1, ::1, [::1], 0.0.0.0, ::) or a host name \
                         this machine resolves (localhost)";

/// The value of `--host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl FromStr for Host {
    type Err = String;

    /// Accepts `127.0.0.1`, `::1`, `[::1]`, `0.0.0.0` and host names (RFC 1123 labels:
    /// letters, digits and hyphens, separated by dots). A port is refused with a pointer
    /// to `--port`, since `host:port` is a common slip.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let trimmed = value.trim();
        let unbracketed = trimmed.strip_prefix('[').and_then(|v| v.strip_suffix(']'));
        if let Ok(ip) = unbracketed.unwrap_or(trimmed).parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if trimmed.parse::<SocketAddr>().is_ok() || looks_like_name_with_port(trimmed) {
            return Err(format!(
                "`{value}` has a port; give the address alone and the port with --port"
            ));
        }
        if unbracketed.is_none() && is_host_name(trimmed) {
            return Ok(Host::Name(trimmed.to_ascii_lowercase()));
        }
        Err(format!(
            "`{value}` is neither an IP address nor a host name; {HOST_HINT}"
        ))
    }
}

fn looks_like_name_with_port(value: &str) -> bool {
    match value.rsplit_once(':') {
        Some((name, port)) => {
            is_host_name(name) && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn is_host_name(value: &str) -> bool {
    let value = value.strip_suffix('.').unwrap_or(value);
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl Host {
    /// The socket addresses to try, in order: the address itself, or what the name
    /// resolves to. A name that does not resolve is an error that says what to write.
    pub async fn socket_addrs(&self, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
        match self {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
            Host::Name(name) => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "--host {name} does not resolve to an address ({e}); {HOST_HINT}"
                        )
                    })?
                    .collect();
                if addrs.is_empty() {
                    anyhow::bail!("--host {name} resolves to no address; {HOST_HINT}");
                }
                Ok(addrs)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_every_spelling() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert_eq!("127.0.0.1".parse::<Host>().unwrap(), ip("127.0.0.1"));
        assert_eq!("::1".parse::<Host>().unwrap(), ip("::1"));
        assert_eq!("[::1]".parse::<Host>().unwrap(), ip("::1"));
        assert_eq!("0.0.0.0".parse::<Host>().unwrap(), ip("0.0.0.0"));
        assert_eq!("[::]".parse::<Host>().unwrap(), ip("::"));
        assert_eq!(
            "LocalHost".parse::<Host>().unwrap(),
            Host::Name("localhost".into())
        );
        assert_eq!(
            "gpu-box.lan".parse::<Host>().unwrap(),
            Host::Name("gpu-box.lan".into())
        );
    }

    #[test]
    fn mistakes_say_what_to_write() {
        for (bad, needle) in [
            ("127.0.0.1:8080", "--port"),
            ("[::1]:8080", "--port"),
            ("localhost:8080", "--port"),
            ("http://localhost", "host name"),
            ("", "host name"),
            ("[localhost]", "host name"),
            ("bad_name", "host name"),
        ] {
            let error = bad.parse::<Host>().unwrap_err();
            assert!(error.contains(needle), "{bad:?}: {error}");
        }
    }

    #[tokio::test]
    async fn names_resolve_or_explain() {
        let addrs = Host::Name("localhost".into())
            .socket_addrs(7)
            .await
            .unwrap();
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 7),
            "{addrs:?}"
        );
        // `.invalid` never resolves (RFC 2606).
        let error = Host::Name("no-such-host.invalid".into())
            .socket_addrs(7)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("does not resolve") && error.contains("127.0.0.1"),
            "{error}"
        );
    }
}
