"""The sandbox as data: the bubblewrap command line, the cgroup limits and an open bubble's
network set-up, checked as built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.runtimes import network
from controller.runtimes.base import SandboxSpec
from controller.runtimes.limits import cgroup_plan
from controller.runtimes.sandbox import Handshake, Layout, bwrap_command, etc_files, state_document

SPEC = SandboxSpec(bubble="b-1", project="p", network="none", cpu=1.5, memory_mb=2048, disk_mb=64,
                   base_url="/bubbles/b-1/", token="secret-token", views={"ips": Path("/srv/views/v1")})
LAYOUT = Layout(Path("/srv/home/bubbles/b-1"), Path("/run/bulles/x"))


def command(handshake: Handshake | None = None, **changes) -> list[str]:
    spec = SandboxSpec(**{**SPEC.__dict__, **changes})
    return bwrap_command(spec, LAYOUT, python_env=Path("/opt/env"), python_base=Path("/root/.pyenv/versions/3.11"),
                         host_uid=200001, handshake=handshake)


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_views_are_read_only_and_only_home_and_run_are_writable() -> None:
    argv = command()
    outer = argv[:argv.index("--")]
    assert ("/srv/views/v1", "/data/ips") in pairs(outer, "--ro-bind")
    assert pairs(outer, "--bind") == [("/srv/home/bubbles/b-1/home", "/home/researcher"),
                                       ("/run/bulles/x/b-1", "/run/bulle")]
    assert ("/usr", "/usr") in pairs(outer, "--ro-bind") and ("/opt/env", "/opt/env") in pairs(outer, "--ro-bind")
    assert outer.index("--remount-ro") > max(i for i, a in enumerate(outer) if a in ("--bind", "--ro-bind"))
    # the directories above a bind exist with mode 0755 before it (else bubblewrap copies 0700)
    first_bind = min(i for i, a in enumerate(outer) if a in ("--bind", "--ro-bind"))
    for directory in ("/root", "/root/.pyenv", "/root/.pyenv/versions", "/data", "/home", "/run"):
        at = [i for i, a in enumerate(outer) if a == directory and outer[i - 1] == "--dir"]
        assert at and outer[at[0] - 3:at[0] - 1] == ["--perms", "0755"] and at[0] < first_bind, directory


def test_every_bubble_has_its_own_network_and_an_open_one_waits_for_it() -> None:
    closed, opened = command(), command(Handshake(info=7, block=8, sync=9), network="open")
    assert closed[:6] == ["bwrap", "--unshare-ipc", "--unshare-uts", "--unshare-pid", "--unshare-net",
                          "--unshare-cgroup-try"]
    assert opened[:12] == [*closed[:6], "--info-fd", "7", "--block-fd", "8", "--sync-fd", "9"]
    assert "--info-fd" not in closed
    assert not [a for a in closed if "resolv.conf" in a or "nsswitch" in a]
    opened_ro = pairs(opened[:opened.index("--")], "--ro-bind")
    assert ("/srv/home/bubbles/b-1/etc/resolv.conf", "/etc/resolv.conf") in opened_ro
    assert ("/srv/home/bubbles/b-1/etc/nsswitch.conf", "/etc/nsswitch.conf") in opened_ro
    assert not [t for s, t in opened_ro if s.startswith("/etc/") and t in ("/etc/resolv.conf", "/etc/nsswitch.conf")]
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--clearenv", "--new-session"):
        assert flag in closed and flag in opened
    with pytest.raises(ValueError):
        command(network="open")  # an open bubble started without waiting for its network
    with pytest.raises(ValueError):
        command(Handshake(info=7, block=8, sync=9))


def test_an_open_bubble_s_etc_names_slirp_s_resolver_and_no_host_nss() -> None:
    assert etc_files(SandboxSpec(**{**SPEC.__dict__, "network": "open"})) == {
        "passwd": "researcher:x:1000:1000:researcher:/home/researcher:/bin/bash\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": "researcher:x:1000:\nnogroup:x:65534:\n",
        "hostname": "bulle-b-1\n",
        "hosts": "127.0.0.1 localhost bulle-b-1\n::1 localhost\n",
        "resolv.conf": "nameserver 10.0.2.3\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    }
    assert set(etc_files(SPEC)) == {"passwd", "group", "hostname", "hosts"}


def test_the_namespace_is_closed_to_the_host_and_private_ranges_before_slirp_starts() -> None:
    # the host's loopback and an address inside a blocked range add nothing; its public one does
    assert network.isolation_batch(["127.0.0.1", "192.168.1.20", "81.2.69.142", "81.2.69.142", "fd00::2"]) == (
        "route add unreachable 0.0.0.0/8\n"
        "route add unreachable 10.0.0.0/8\n"
        "route add unreachable 100.64.0.0/10\n"
        "route add unreachable 127.0.0.0/8\n"
        "route add unreachable 169.254.0.0/16\n"
        "route add unreachable 172.16.0.0/12\n"
        "route add unreachable 192.0.0.0/24\n"
        "route add unreachable 192.0.2.0/24\n"
        "route add unreachable 192.168.0.0/16\n"
        "route add unreachable 198.18.0.0/15\n"
        "route add unreachable 198.51.100.0/24\n"
        "route add unreachable 203.0.113.0/24\n"
        "route add unreachable 224.0.0.0/4\n"
        "route add unreachable 240.0.0.0/4\n"
        "route add unreachable 81.2.69.142/32\n"
        "rule add pref 100 to 10.0.2.2/32 lookup main\n"
        "rule add pref 101 to 10.0.2.3/32 ipproto 17 dport 53 lookup main\n"
        "rule add pref 102 to 10.0.2.3/32 ipproto 6 dport 53 lookup main\n"
        "rule add pref 103 to 10.0.2.0/24 prohibit\n")
    assert network.in_namespace(4242, ["sysctl", "-q", "-w", *network.IPV6_OFF]) == [
        "nsenter", "--net=/proc/4242/ns/net", "--", "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1"]
    assert network.slirp_command(4242, exit_fd=5, ready_fd=6) == [
        "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp",
        "--exit-fd=5", "--ready-fd=6", "4242", "tap0"]


def test_the_state_document_finds_an_open_bubble_s_slirp_again() -> None:
    assert json.loads(state_document(SPEC, pid=10, started=20, host_uid=200001, cgroups=["/cg/x"], disk_mounted=True,
                                     slirp=(30, 40))) == {
        "bubble": "b-1", "project": "p", "pid": 10, "started": 20, "host_uid": 200001, "cgroups": ["/cg/x"],
        "disk_mounted": True, "slirp": {"pid": 30, "started": 40}}
    assert json.loads(state_document(SPEC, pid=10, started=20, host_uid=200001, cgroups=[],
                                     disk_mounted=False))["slirp"] is None


def test_the_inner_sandbox_is_unprivileged_and_the_token_is_nowhere_in_the_command() -> None:
    argv = command()
    assert "secret-token" not in " ".join(argv)
    drop = argv[argv.index("--") + 1:]
    assert drop[:3] == ["setpriv", "--reuid=200001", "--regid=200001"] and "--no-new-privs" in drop
    inner = drop[drop.index("--") + 1:]
    assert inner[:7] == ["bwrap", "--unshare-user", "--uid", "1000", "--gid", "1000", "--disable-userns"]
    assert inner[inner.index("--cap-drop") + 1] == "ALL"
    jupyter = inner[inner.index("--") + 1:]
    assert jupyter[:3] == ["/opt/env/bin/python", "-m", "jupyter_server"]
    assert "--sock=/run/bulle/jupyter.sock" in jupyter and "--ServerApp.base_url=/bubbles/b-1/" in jupyter


def test_cgroup_limits_follow_the_profile_under_the_site_s_own_parent() -> None:
    v2 = cgroup_plan(2, "0123abcd", "b-1", cpu=1.5, memory_mb=2048, root=Path("/cg"))
    assert v2.writes == {"/cg/bulles-0123abcd/b-1": {"memory.max": str(2048 << 20), "memory.swap.max": "0",
                                                      "pids.max": "512", "cpu.max": "150000 100000"}}
    v1 = cgroup_plan(1, "0123abcd", "b-1", cpu=0.5, memory_mb=512, root=Path("/cg"))
    assert v1.writes == {"/cg/memory/bulles-0123abcd/b-1": {"memory.limit_in_bytes": str(512 << 20)},
                         "/cg/pids/bulles-0123abcd/b-1": {"pids.max": "512"},
                         "/cg/cpu/bulles-0123abcd/b-1": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}}


def test_an_environment_under_tmp_is_mounted_over_the_private_tmp_not_hidden_by_it() -> None:
    spec = SandboxSpec(**SPEC.__dict__)
    argv = bwrap_command(spec, LAYOUT, python_env=Path("/tmp/clone/.venv-bubble"), python_base=Path("/usr"),
                         host_uid=200001)
    outer = argv[:argv.index("--")]
    tmpfs = outer.index("--tmpfs")
    assert outer[tmpfs + 1] == "/tmp" and outer[tmpfs - 2:tmpfs] == ["--perms", "1777"]
    assert ("/tmp/clone/.venv-bubble", "/tmp/clone/.venv-bubble") in pairs(outer, "--ro-bind")
    bind = next(i for i, a in enumerate(outer) if a == "--ro-bind" and outer[i + 2] == "/tmp/clone/.venv-bubble")
    assert tmpfs < bind
    assert [outer[i + 1] for i, a in enumerate(outer) if a == "--dir"].count("/tmp") == 0  # stays 1777
