//! Names inside a namespace served by a helper: the address the host is
//! reachable at (the default gateway, which the helper maps to the host's
//! loopback) and a resolv.conf whose servers are reachable from there.

use std::net::Ipv4Addr;

use super::Kind;

/// The IPv4 default gateway of the calling process's network namespace.
pub fn default_gateway() -> Option<Ipv4Addr> {
    gateway_in(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// The gateway of the default route in a `/proc/net/route` table.
fn gateway_in(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[1] != "00000000" {
            return None;
        }
        // The address's bytes printed as one native-endian number.
        let raw = u32::from_str_radix(f[2], 16).ok()?;
        Some(Ipv4Addr::from(raw.to_ne_bytes())).filter(|a| !a.is_unspecified())
    })
}

/// The pod's resolv.conf from the host's: slirp4netns serves DNS itself;
/// with pasta the host's servers are reachable as they are, except those on
/// the host's loopback (127.0.0.x, ::1), which only the gateway address
/// reaches (mapped to the host's 127.0.0.1). With none left, `gateway`.
pub fn resolv_conf(host: &str, kind: Kind, gateway: Option<Ipv4Addr>) -> String {
    let mut out = String::new();
    let add = |out: &mut String, server: &str| {
        let line = format!("nameserver {server}\n");
        if !out.contains(&line) {
            out.push_str(&line);
        }
    };
    if kind == Kind::Slirp4netns {
        add(&mut out, super::slirp::DNS);
    }
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if kind == Kind::Slirp4netns {
            continue;
        }
        let Some(server) = words.next() else { continue };
        let on_loopback = server.parse::<std::net::IpAddr>().map(|a| a.is_loopback()).unwrap_or(false);
        match (on_loopback, gateway) {
            (false, _) => add(&mut out, server),
            (true, Some(gw)) => add(&mut out, &gw.to_string()),
            (true, None) => {}
        }
    }
    if !out.lines().any(|l| l.starts_with("nameserver ")) {
        if let Some(gw) = gateway {
            add(&mut out, &gw.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_gives_the_gateway() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(gateway_in(table), Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(gateway_in("Iface\tDestination\n"), None);
        assert_eq!(gateway_in("garbage"), None);
    }

    #[test]
    fn loopback_servers_go_through_the_gateway() {
        let gw = Some(Ipv4Addr::new(192, 0, 2, 1));
        let host = "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver 10.1.1.1\noptions edns0\n";
        assert_eq!(
            resolv_conf(host, Kind::Pasta, gw),
            "# generated\nsearch example.org\nnameserver 192.0.2.1\nnameserver 10.1.1.1\noptions edns0\n"
        );
        assert_eq!(resolv_conf("nameserver 10.255.255.53\n", Kind::Pasta, gw), "nameserver 10.255.255.53\n");
        assert_eq!(resolv_conf("nameserver ::1\n", Kind::Pasta, None), "");
        assert_eq!(resolv_conf("", Kind::Pasta, gw), "nameserver 192.0.2.1\n");
        assert_eq!(resolv_conf("nameserver 10.1.1.1\nsearch x\n", Kind::Slirp4netns, gw), "nameserver 10.0.2.3\nsearch x\n");
    }
}
