"""The demo site as a user meets it: `bulles demo` in its own process on a free loopback port,
driven through the CLI, stopped with SIGTERM, then its log verified offline."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from conftest import free_port, open_bubble_link, remove_bubbles
from running import Bulles, wait_ready, weed_processes
from controller.cli import app

runner = CliRunner()


@pytest.fixture
def demo_site(tmp_path: Path):
    home, port = tmp_path / "home", free_port()
    demo = Bulles("demo", "--home", str(home), "--port", str(port), "--pupils", "300")
    url = f"http://127.0.0.1:{port}"
    try:
        demo.wait_for(r"Press Ctrl\+C")
        wait_ready(url)
        tokens = dict(re.findall(r"^\s{4}(\w+)\s+(blt_\S+)", demo.output, re.M))
        yield {"home": home, "url": url, "tokens": tokens, "proc": demo.proc, "banner": demo.output}
    finally:
        demo.stop(30)


def test_demo_serves_seeds_and_the_cli_drives_it(demo_site, tmp_path: Path) -> None:
    url, tokens, home = demo_site["url"], demo_site["tokens"], demo_site["home"]
    assert set(tokens) == {"alice", "bruno", "chloe", "david", "admin"}
    assert f"{url}/docs" in demo_site["banner"]
    assert (home / "master.key").stat().st_mode & 0o777 == 0o600
    assert (home / "signing.key").stat().st_mode & 0o777 == 0o600
    assert (home / "warehouse" / "pupils.parquet").exists()

    listed = runner.invoke(app, ["source", "list", "--url", url])
    assert listed.exit_code == 0 and "5 source(s)" in listed.output

    spec = yaml.safe_load((Path(__file__).parents[1] / "catalog/examples/fr-en-ips-colleges-ap2022.yaml").read_text())
    spec["id"] = "ips-colleges-copie"
    path = tmp_path / "source.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    ok = runner.invoke(app, ["source", "register", str(path), "--url", url, "--token", tokens["alice"]])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(app, ["source", "register", str(path), "--url", url, "--token", tokens["bruno"]])
    assert refused.exit_code == 1 and "403" in refused.output
    path.write_text("id: [broken", encoding="utf-8")
    invalid = runner.invoke(app, ["source", "register", str(path), "--url", url, "--token", tokens["alice"]])
    assert invalid.exit_code == 1 and "YAML" in invalid.output

    exported = runner.invoke(app, ["catalog", "export", "--url", url, "--out", str(tmp_path / "catalog.jsonld")])
    assert exported.exit_code == 0
    assert "ips-colleges-copie" in (tmp_path / "catalog.jsonld").read_text()

    whoami = httpx.get(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {tokens['david']}"}).json()
    assert whoami["roles"] == ["auditor"]

    # The demo sources live in the embedded SeaweedFS and are read over S3.
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    pupils = httpx.get(f"{url}/api/v1/sources/eleves-synthetiques", headers=alice).json()
    assert pupils["spec"]["connector"]["kind"] == "s3"
    probe = httpx.get(f"{url}/api/v1/sources/eleves-synthetiques/probe", headers=alice, timeout=30).json()
    assert probe["rows"] == 300 and probe["missing"] == []
    assert "warehouse: SeaweedFS S3 at http://127.0.0.1:" in demo_site["banner"]

    # The demo project's bubble: the printed link logs bruno into JupyterLab through the gateway.
    link = re.search(r"open in a browser within \d+ h: (\S+)", demo_site["banner"])
    assert link, demo_site["banner"]
    bubble_id = re.search(r"/bubbles/(b-[0-9a-f]+)/open", link.group(1)).group(1)
    with httpx.Client(timeout=30, follow_redirects=True) as browser:
        opened = open_bubble_link(browser, link.group(1))  # follows the redirect with the session cookie set
        assert opened.status_code == 200 and "JupyterLab" in opened.text, opened.text[:300]
        assert browser.get(f"{url}/bubbles/{bubble_id}/api/status").status_code == 200
    assert httpx.get(f"{url}/bubbles/{bubble_id}/api/status").status_code == 404  # no cookie, no token
    listed = runner.invoke(app, ["bubble", "list", "--url", url, "--token", tokens["bruno"]])
    assert listed.exit_code == 0 and "running" in listed.output

    demo_site["proc"].send_signal(signal.SIGTERM)
    assert demo_site["proc"].wait(30) == 0
    assert not weed_processes(home), "the warehouse outlived the platform"
    # the bubble outlives the controller (the next start adopts it); the test cleans up
    assert bubble_id in remove_bubbles(home)
    verified = runner.invoke(app, ["audit", "verify", "--home", str(home)])
    assert verified.exit_code == 0, verified.output
    assert "0 newer event(s)" in verified.output  # the stop signed a final checkpoint


def test_demo_seeding_is_idempotent_and_tokens_are_stable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = runner.invoke(app, ["demo", "--home", str(home), "--no-serve", "--pupils", "50"])
    second = runner.invoke(app, ["demo", "--home", str(home), "--no-serve", "--pupils", "50"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    token = re.compile(r"alice\s+(blt_\S+)")
    assert token.search(first.output).group(1) == token.search(second.output).group(1)
    try:
        verified = runner.invoke(app, ["audit", "verify", "--home", str(home), "--json"])
        assert verified.exit_code == 0
        events = int(re.search(r'"events": (\d+)', verified.output).group(1))
        third = runner.invoke(app, ["demo", "--home", str(home), "--no-serve", "--pupils", "50"])
        assert third.exit_code == 0
        again = runner.invoke(app, ["audit", "verify", "--home", str(home), "--json"])
        assert f'"events": {events}' in again.output  # nothing done twice
    finally:
        remove_bubbles(home)


def test_verify_refuses_a_missing_key(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", "--home", str(tmp_path), "--public-key", str(tmp_path / "none.pem")])
    assert result.exit_code == 2 and "cannot load the public key" in result.output
