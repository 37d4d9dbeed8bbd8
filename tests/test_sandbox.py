"""The sandbox as data: the bubblewrap command line and the cgroup limits, checked as built."""

from __future__ import annotations

from pathlib import Path

from controller.runtimes.base import SandboxSpec
from controller.runtimes.limits import cgroup_plan
from controller.runtimes.sandbox import Layout, bwrap_command

SPEC = SandboxSpec(bubble="b-1", project="p", network="none", cpu=1.5, memory_mb=2048, disk_mb=64,
                   base_url="/bubbles/b-1/", token="secret-token", views={"ips": Path("/srv/views/v1")})
LAYOUT = Layout(Path("/srv/home/bubbles/b-1"), Path("/run/bulles/x"))


def command(**changes) -> list[str]:
    spec = SandboxSpec(**{**SPEC.__dict__, **changes})
    return bwrap_command(spec, LAYOUT, python_env=Path("/opt/env"), python_base=Path("/root/.pyenv/versions/3.11"),
                         host_uid=200001)


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


def test_closed_bubbles_have_no_network_and_open_ones_the_resolver() -> None:
    closed, opened = command(), command(network="open")
    assert "--unshare-net" in closed and "--unshare-net" not in opened
    assert "/etc/resolv.conf" not in closed
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--clearenv", "--new-session"):
        assert flag in closed and flag in opened


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


def test_cgroup_limits_follow_the_profile() -> None:
    v2 = cgroup_plan(2, "b-1", cpu=1.5, memory_mb=2048, root=Path("/cg"))
    assert v2.writes == {"/cg/bulles/b-1": {"memory.max": str(2048 << 20), "memory.swap.max": "0",
                                             "pids.max": "512", "cpu.max": "150000 100000"}}
    v1 = cgroup_plan(1, "b-1", cpu=0.5, memory_mb=512, root=Path("/cg"))
    assert v1.writes == {"/cg/memory/bulles/b-1": {"memory.limit_in_bytes": str(512 << 20)},
                         "/cg/pids/bulles/b-1": {"pids.max": "512"},
                         "/cg/cpu/bulles/b-1": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}}


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
