"""An open bubble's network, as data: what is set up inside its network namespace and how
slirp4netns is run to give it the internet and nothing of the host.

Every bubble has its own network namespace. A `none` bubble's has loopback only. An `open`
bubble's gets `tap0` from slirp4netns (user-mode networking: the bubble's packets become
ordinary sockets of a process on the host), configured as 10.0.2.100/24 with a default route
via slirp's gateway 10.0.2.2. Because slirp opens its sockets on the host, any destination the
bubble names is reached *from the host*: its loopback, its own addresses, the private networks
it sits on. So, before slirp starts and before any process of the bubble runs:

- IPv6 is switched off in the namespace (slirp runs without it; nothing to filter);
- every IPv4 range that is not the internet (RFC 6890's special-purpose blocks: private,
  shared, link-local, loopback, documentation, multicast, reserved) and every address of the
  host itself has an `unreachable` route; slirp's own /24 on tap0 is more specific and stays;
- inside that /24, policy rules allow only the gateway as a next hop and slirp's DNS forwarder
  (10.0.2.3) on port 53; anything else there is prohibited. The forwarder sends whatever it
  receives, on any port, to the host's resolver address (libslirp translates the address, not
  the port), so without the rule it would be a tunnel to every port of that address;
- slirp runs with `--disable-host-loopback` (the gateway, as a destination, is refused instead
  of being the host's 127.0.0.1), in its own mount namespace without capabilities
  (`--enable-sandbox`) and under a seccomp filter (`--enable-seccomp`).

The one host-side service an open bubble reaches is therefore the host's resolver, on port 53,
for name resolution. The namespace belongs to the host's root user namespace: the researcher,
who has no capabilities there, cannot change any of it.
"""

from __future__ import annotations

import ipaddress

TAP = "tap0"
GATEWAY = "10.0.2.2"
RESOLVER = "10.0.2.3"
SLIRP_NETWORK = "10.0.2.0/24"
MTU = 65520  # slirp4netns's recommended maximum: fewer, larger packets through the user-mode stack
# IPv4 blocks that are not the internet (RFC 6890 and the IANA special-purpose registry).
NOT_INTERNET = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
                "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")
IPV6_OFF = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def unreachable(host_addresses: list[str]) -> list[str]:
    """Destinations with no route: the blocks above and each of the host's own IPv4 addresses
    not already inside one (a host with a public address serves on it too)."""
    blocks = [ipaddress.ip_network(b) for b in NOT_INTERNET]
    found = list(NOT_INTERNET)
    for text in host_addresses:
        address = ipaddress.ip_address(text)
        if address.version == 4 and not any(address in b for b in blocks) and f"{address}/32" not in found:
            found.append(f"{address}/32")
    return found


def isolation_batch(host_addresses: list[str]) -> str:
    """`ip -batch` input run in the namespace before slirp starts. The gateway rule comes
    before the prohibition so that slirp can still install its default route through it."""
    lines = [f"route add unreachable {net}" for net in unreachable(host_addresses)]
    lines += [f"rule add pref 100 to {GATEWAY}/32 lookup main",
              f"rule add pref 101 to {RESOLVER}/32 ipproto 17 dport 53 lookup main",
              f"rule add pref 102 to {RESOLVER}/32 ipproto 6 dport 53 lookup main",
              f"rule add pref 103 to {SLIRP_NETWORK} prohibit"]
    return "".join(line + "\n" for line in lines)


def in_namespace(pid: int, argv: list[str], nsenter: str = "nsenter") -> list[str]:
    """A command run by the host's root in the network namespace of the sandbox's `pid` only
    (its own mounts, so the host's `ip` and `sysctl`)."""
    return [nsenter, f"--net=/proc/{pid}/ns/net", "--", *argv]


def slirp_command(pid: int, *, exit_fd: int, ready_fd: int, slirp: str = "slirp4netns") -> list[str]:
    """slirp4netns attached to the namespace of `pid`; it writes to `ready_fd` once tap0 is
    configured and exits when `exit_fd` (held open by the sandbox's bubblewrap) closes."""
    return [slirp, "--configure", f"--mtu={MTU}", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
            f"--exit-fd={exit_fd}", f"--ready-fd={ready_fd}", str(pid), TAP]


def resolv_conf() -> str:
    """An open bubble resolves names through slirp's forwarder, never the host's resolv.conf
    (whose loopback or private resolver the namespace cannot reach)."""
    return f"nameserver {RESOLVER}\n"
