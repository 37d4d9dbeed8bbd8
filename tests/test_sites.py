"""Two sites on one machine: their bubbles never share a host uid or a cgroup, and neither
site's runtime sees, kills or removes the other's bubbles — even under the same bubble id.
Then the machine-wide uid registry on its own: concurrent claims, reuse only once nothing of
a bubble is left, a lost registry, exhaustion. Needs root (real sandboxes, real uids)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from controller.runtimes.base import RUNNING, SandboxSpec
from controller.runtimes.limits import cgroup_pids
from controller.runtimes.local import LocalRuntime
from controller.runtimes.uids import UidConflict, UidRegistry, UidsExhausted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local runtime needs root")

BASE = 4_000_000  # a range no account or bubble of this machine uses


def spec(bubble: str) -> SandboxSpec:
    return SandboxSpec(bubble=bubble, project="p", network="none", cpu=0.5, memory_mb=512, disk_mb=32,
                       base_url=f"/bubbles/{bubble}/", token="t")


def state(runtime: LocalRuntime, bubble: str) -> dict:
    return json.loads(runtime.layout(bubble).state.read_text())


def test_two_sites_never_share_a_uid_or_a_cgroup_and_never_touch_each_other_s_bubbles(tmp_path: Path) -> None:
    a, b = LocalRuntime(tmp_path / "site-a" / "bubbles"), LocalRuntime(tmp_path / "site-b" / "bubbles")
    wanted = [(a, "b-same"), (b, "b-same"), (b, "b-only-b")]
    errors: list[BaseException] = []

    def create(runtime: LocalRuntime, bubble: str) -> None:
        try:
            runtime.create(spec(bubble))
        except BaseException as exc:  # reported below, from the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=create, args=pair) for pair in wanted]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        assert all(runtime.status(bubble).state == RUNNING for runtime, bubble in wanted)
        uids = [state(runtime, bubble)["host_uid"] for runtime, bubble in wanted]
        assert len(set(uids)) == 3, uids
        groups = {(runtime.site, bubble): state(runtime, bubble)["cgroups"] for runtime, bubble in wanted}
        for (site, bubble), cgroups in groups.items():
            assert cgroups and all(Path(c).parent.name == f"bulles-{site}" and Path(c).name == bubble for c in cgroups)
        assert a.site != b.site and not set(groups[a.site, "b-same"]) & set(groups[b.site, "b-same"])

        assert a.list() == ["b-same"] and b.list() == ["b-only-b", "b-same"]
        assert a.delete("b-only-b") == []  # not a's: nothing of b's goes
        a.delete("b-same")
        assert a.list() == [] and a.status("b-same").state == "missing"
        for bubble in ("b-same", "b-only-b"):
            assert b.status(bubble).state == RUNNING, bubble
            assert cgroup_pids(groups[b.site, bubble]), bubble
        assert b.list() == ["b-only-b", "b-same"]
        # a's parent went with its last bubble; b's stays while one of its bubbles lives
        assert not any(Path(c).parent.exists() for c in groups[a.site, "b-same"])
        b.delete("b-only-b")
        assert all(Path(c).parent.exists() for c in groups[b.site, "b-same"])
        b.delete("b-same")
        assert not any(Path(c).parent.exists() for c in groups[b.site, "b-same"])
    finally:
        for runtime in (a, b):
            for bubble in runtime.list():
                runtime.delete(bubble)


def owner(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root


def test_claims_are_distinct_under_concurrency_and_stable_for_a_bubble(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    roots = [owner(tmp_path / f"b-{i}") for i in range(16)]
    got: dict[Path, int] = {}

    def claim(root: Path) -> None:
        got[root] = UidRegistry(registry, base=BASE, size=100).claim(root)  # one registry object each

    threads = [threading.Thread(target=claim, args=(root,)) for root in roots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(got.values()) == list(range(BASE, BASE + 16))
    assert {UidRegistry(registry, base=BASE, size=100).claim(root) for root in roots} == set(got.values())
    assert {root: (root / "uid").read_text() for root in roots} == {root: str(uid) for root, uid in got.items()}
    assert {(registry / str(uid)).read_text() for uid in got.values()} == {f"{root}\n" for root in roots}


def wait_for_uid(pid: int, uid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        if f"Uid:\t{uid}\t" in status:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never ran as {uid}")


def test_a_uid_is_reused_only_once_nothing_of_its_bubble_is_left(tmp_path: Path) -> None:
    registry = UidRegistry(tmp_path / "registry", base=BASE, size=3)
    first, second, third = (owner(tmp_path / name) for name in ("b-1", "b-2", "b-3"))
    assert [registry.claim(first), registry.claim(second), registry.claim(third)] == [BASE, BASE + 1, BASE + 2]
    with pytest.raises(UidsExhausted):
        registry.claim(owner(tmp_path / "b-4"))

    shutil.rmtree(first)  # deleted: its directory is gone and nothing runs as its uid
    assert registry.claim(owner(tmp_path / "b-5")) == BASE

    # deleted, but a process of the bubble is still there: not yet
    process = subprocess.Popen(["setpriv", f"--reuid={BASE + 1}", f"--regid={BASE + 1}", "--clear-groups",
                                "sleep", "60"])
    try:
        wait_for_uid(process.pid, BASE + 1)  # setpriv changes its uid after Popen returns
        shutil.rmtree(second)
        with pytest.raises(UidsExhausted):
            registry.claim(owner(tmp_path / "b-6"))
    finally:
        process.kill()
        process.wait()
    assert registry.claim(tmp_path / "b-6") == BASE + 1

    # half removed (its uid file gone, its directory still there): not yet either
    (third / "uid").unlink()
    with pytest.raises(UidsExhausted):
        registry.claim(owner(tmp_path / "b-7"))


def test_a_lost_registry_is_rebuilt_from_the_bubbles_and_a_uid_held_twice_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "registry"
    kept = owner(tmp_path / "site" / "b-kept")
    assert UidRegistry(directory, base=BASE, size=10).claim(kept) == BASE
    shutil.rmtree(directory)  # e.g. /var/lib/bulles lost, the site's bubbles still there
    LocalRuntime(tmp_path / "site", uids=UidRegistry(directory, base=BASE, size=10))  # a start registers them
    assert (directory / str(BASE)).read_text() == f"{kept}\n"
    assert UidRegistry(directory, base=BASE, size=10).claim(owner(tmp_path / "other" / "b-new")) == BASE + 1

    twin = owner(tmp_path / "other" / "b-twin")  # made before the registry, with the same uid as b-kept
    (twin / "uid").write_text(str(BASE))
    with pytest.raises(UidConflict):
        UidRegistry(directory, base=BASE, size=10).claim(twin)
