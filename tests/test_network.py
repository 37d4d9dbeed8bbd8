"""An open bubble's network, tried from inside a real bubble's kernel: the internet's route is
there, the host is not — not its loopback services (the controller, a listener of the test's,
SeaweedFS, PostgreSQL), not through slirp's gateway or DNS forwarder, not its own addresses,
not the private ranges it may sit on — and the researcher cannot change any of it. Its
slirp4netns ends with the bubble, by itself or when stopped, also by a restarted controller.

No packet goes to an address outside 127.0.0.0/8 and the namespaces the test starts: the probes
connect only to 127.0.0.0/8, ::1 and slirp's gateway (which refuses: nothing of the host behind
it), and everything else is read from the routing tables (`ip route get` is a lookup, it sends
nothing). Needs root; SQLite only (test_bubbles.py's fixtures).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from connectors.seaweed import SeaweedFS
from controller.runtimes.local import LocalRuntime
from test_bubbles import IPS, Kernel, Served, db_url, free_port_in_use, project, served, start  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local runtime needs root")

PRIVATE = {"10.1.2.3": "10.0.0.0/8", "172.16.0.1": "172.16.0.0/12", "192.168.1.1": "192.168.0.0/16",
           "100.64.0.1": "100.64.0.0/10", "169.254.169.254": "169.254.0.0/16"}

PROBE = r'''
import json, os, socket, subprocess
def ip(*args):
    done = subprocess.run(["/usr/sbin/ip", "-j", *args], capture_output=True, text=True)
    return json.loads(done.stdout or "null") if done.returncode == 0 else done.stderr.strip()
interfaces = sorted(link["ifname"] for link in ip("link"))
gateway = ip("route", "get", "10.0.2.2")
# slirp's gateway is tried only where it is slirp's: in the bubble's own namespace, on tap0
isolated = interfaces == ["lo", "tap0"] and isinstance(gateway, list) and gateway[0].get("dev") == "tap0"
def tcp(host, port):
    if not (host.startswith("127.") or host == "::1" or isolated):
        return "not tried"
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
def attempt(fn):
    try:
        return ["succeeded", repr(fn())[:200]]
    except OSError as exc:
        return ["failed", type(exc).__name__]
def set_ipv6():
    with open("/proc/sys/net/ipv6/conf/all/disable_ipv6", "w") as f:
        f.write("0")
route_get = {a: ip("route", "get", *a.split()) for a in LOOKUPS}
print(json.dumps({
    "interfaces": interfaces,
    "addresses": {l["ifname"]: [(a["family"], a["local"], a["prefixlen"]) for a in l["addr_info"]]
                  for l in ip("address")},
    "ipv6": open("/proc/net/if_inet6").read(),
    "routes": open("/proc/net/route").read(),
    "rules": [{k: v for k, v in r.items() if k in ("priority", "dst", "dstlen", "ipproto", "dport", "table", "action")}
              for r in ip("rule")],
    "route_get": route_get,
    "tcp": {f"{h} {p}": tcp(h, p) for h, p in TARGETS},
    "resolv": open("/etc/resolv.conf").read(),
    "delete_route": ip("route", "del", "unreachable", "10.0.0.0/8"),
    "add_rule": ip("rule", "add", "pref", "50", "to", "10.0.2.3", "lookup", "main"),
    "ipv6_on": attempt(set_ipv6),
}))
'''


def host_addresses() -> list[str]:
    listing = json.loads(subprocess.run(["ip", "-j", "-4", "address", "show"], capture_output=True, text=True,
                                        check=True).stdout)
    return [a["local"] for link in listing for a in link["addr_info"]]


def routes(table: str) -> set[tuple[str, str, str]]:
    """/proc/net/route as (interface or 'unreachable', destination/prefix, gateway)."""
    import ipaddress

    def address(hex_text: str) -> str:
        return str(ipaddress.IPv4Address(int(hex_text, 16).to_bytes(4, "little")))

    found = set()
    for line in table.splitlines()[1:]:
        iface, dest, gateway, flags, _, _, _, mask = line.split()[:8]
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{address(mask)}").prefixlen
        kind = "unreachable" if int(flags, 16) & 0x0200 else iface  # RTF_REJECT
        found.add((kind, f"{address(dest)}/{prefix}", address(gateway)))
    return found


def slirp_alive(home: Path, bubble_id: str) -> tuple[int, bool]:
    state = json.loads((home / "bubbles" / bubble_id / "sandbox.json").read_text())
    pid = state["slirp"]["pid"]
    try:
        alive = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"slirp4netns")
    except OSError:
        alive = False
    return pid, alive


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"slirp4netns"):
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def open_bubble(served: Served, pid: str) -> dict:
    project(served, pid)
    asked = served.http.post(f"/api/v1/projects/{pid}/access-requests", headers=served.headers("bruno"),
                             json={"source": IPS, "justification": "Étude"}).json()
    assert asked["status"] == "granted"
    answer = start(served, pid)
    assert answer.status_code == 201, answer.text
    assert answer.json()["profile"]["network"] == "open"
    return answer.json()


def test_an_open_bubble_reaches_the_internet_s_route_and_nothing_of_the_host(
        served: Served, pg_server: str, tmp_path: Path) -> None:
    home = served.site.platform.settings.home
    with SeaweedFS(tmp_path / "weed") as weed:
        loopback = {"controller": served.port, "listener": free_port_in_use(served),
                    "postgresql": int(pg_server.rsplit(":", 1)[1]), **{f"weed {k}": v for k, v in weed.ports.items()}}
        bubble = open_bubble(served, "projet-ouvert")
        mine = host_addresses()
        lookups = ["1.1.1.1", *PRIVATE, "10.0.2.2", "10.0.2.3", "10.0.2.7", "10.0.2.3 ipproto 17 dport 53",
                   "10.0.2.3 ipproto 6 dport 53", "10.0.2.3 ipproto 6 dport 5432",
                   *[a for a in mine if not a.startswith("127.")]]
        targets = [(host, port) for port in loopback.values() for host in ("127.0.0.1", "127.0.0.53", "::1", "10.0.2.2")]
        code = PROBE.replace("LOOKUPS", repr(lookups)).replace("TARGETS", repr(targets))
        kernel = Kernel(served, bubble["id"])
        try:
            seen = json.loads(kernel.run(code).strip().splitlines()[-1])
        finally:
            kernel.close()
    assert seen["interfaces"] == ["lo", "tap0"]
    assert seen["addresses"] == {"lo": [["inet", "127.0.0.1", 8]], "tap0": [["inet", "10.0.2.100", 24]]}
    assert seen["ipv6"] == ""  # off: no address at all, not even ::1 or a link-local one
    # out: one default route, through slirp's gateway, and slirp's own /24; the rest is unreachable
    table = routes(seen["routes"])
    assert {r for r in table if r[0] != "unreachable"} == {("tap0", "0.0.0.0/0", "10.0.2.2"),
                                                            ("tap0", "10.0.2.0/24", "0.0.0.0")}
    blocked = {r[1] for r in table if r[0] == "unreachable"}
    assert set(PRIVATE.values()) | {"127.0.0.0/8"} <= blocked
    looked = seen["route_get"]
    assert looked["1.1.1.1"][0]["gateway"] == "10.0.2.2" and looked["1.1.1.1"][0]["dev"] == "tap0"
    for address in PRIVATE:
        assert looked[address] == "RTNETLINK answers: No route to host", address
    # the host's own addresses (here on a network of its own) are not reached through slirp either
    for address in mine:
        if not address.startswith("127."):
            assert looked[address] == "RTNETLINK answers: No route to host", address
    # inside slirp's /24: the gateway (a next hop; as a destination slirp refuses it) and the DNS
    # forwarder on port 53 only, which would otherwise reach every port of the host's resolver
    assert looked["10.0.2.2"][0]["dev"] == "tap0"
    assert looked["10.0.2.3 ipproto 17 dport 53"][0]["dev"] == "tap0"
    assert looked["10.0.2.3 ipproto 6 dport 53"][0]["dev"] == "tap0"
    for denied in ("10.0.2.3", "10.0.2.7", "10.0.2.3 ipproto 6 dport 5432"):
        assert looked[denied] == "RTNETLINK answers: Permission denied", denied
    assert seen["resolv"] == "nameserver 10.0.2.3\n"
    assert [r for r in seen["rules"] if r["priority"] not in (0, 32766, 32767)] == [
        {"priority": 100, "dst": "10.0.2.2", "table": "main"},
        {"priority": 101, "dst": "10.0.2.3", "ipproto": "ipproto-17", "dport": 53, "table": "main"},
        {"priority": 102, "dst": "10.0.2.3", "ipproto": "ipproto-6", "dport": 53, "table": "main"},
        {"priority": 103, "dst": "10.0.2.0", "dstlen": 24, "action": "prohibit"}]
    # (no /etc/protocols inside: `ip` names UDP and TCP by number)
    # every loopback service of the host, on every way there is to it: nothing answers
    assert {t: r for t, r in seen["tcp"].items() if r in ("connected", "not tried")} == {}
    for port in loopback.values():
        assert seen["tcp"][f"127.0.0.1 {port}"] == "ConnectionRefusedError"  # the bubble's own, empty loopback
    # and the researcher can change none of it
    assert seen["delete_route"] == "RTNETLINK answers: Operation not permitted"
    assert seen["add_rule"] == "RTNETLINK answers: Operation not permitted"
    assert seen["ipv6_on"][0] == "failed"
    assert slirp_alive(home, bubble["id"])[1]


def test_slirp_ends_with_its_bubble_by_itself_on_stop_and_after_a_controller_restart(served: Served) -> None:
    home = served.site.platform.settings.home
    # the bubble ends from inside (its Jupyter Server killed by the researcher's code): slirp goes too
    ending = open_bubble(served, "projet-fin")
    pid, alive = slirp_alive(home, ending["id"])
    assert alive
    kernel = Kernel(served, ending["id"])
    try:
        kernel.ws.send(json.dumps({
            "header": {"msg_id": "kill", "username": "test", "session": kernel.session, "msg_type": "execute_request",
                       "version": "5.3"}, "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": "import os, signal; os.kill(os.getppid(), signal.SIGKILL)", "silent": False,
                        "store_history": False, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
    finally:
        kernel.close()
    assert gone(pid)

    # stopped through the API: slirp killed with the sandbox
    stopping = open_bubble(served, "projet-arret")
    pid, alive = slirp_alive(home, stopping["id"])
    assert alive
    assert served.http.post(f"/api/v1/bubbles/{stopping['id']}/stop", headers=served.headers("bruno")).status_code == 200
    assert gone(pid)

    # a restarted controller (a new runtime on the same root) finds it from sandbox.json
    adopted = open_bubble(served, "projet-repris")
    pid, alive = slirp_alive(home, adopted["id"])
    assert alive
    LocalRuntime(home / "bubbles").stop(adopted["id"])
    assert gone(pid)
