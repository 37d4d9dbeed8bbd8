"""`bulles`: run the site, administer it locally, and talk to its API.

Commands that act as a user (registering a source, say) go through the HTTP API with a token,
so they meet the same validation, authorisation and audit as any other client. Commands that
administer the local site (init, users, audit verification) work on its home directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="bulles — secure processing bubbles for education data", no_args_is_help=True)
user_app = typer.Typer(help="Embedded-mode users (local administration)", no_args_is_help=True)
org_app = typer.Typer(help="Organisations (local administration)", no_args_is_help=True)
source_app = typer.Typer(help="Catalog sources, through the API", no_args_is_help=True)
catalog_app = typer.Typer(help="The catalog as a whole, through the API", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log", no_args_is_help=True)
view_app = typer.Typer(help="Views of sources (local administration)", no_args_is_help=True)
policy_app = typer.Typer(help="The Rego policies", no_args_is_help=True)
project_app = typer.Typer(help="Projects, through the API", no_args_is_help=True)
bubble_app = typer.Typer(help="Bubbles, through the API", no_args_is_help=True)
export_app = typer.Typer(help="Exports from bubbles (the airlock), through the API; verify offline", no_args_is_help=True)
for sub, name in ((user_app, "user"), (org_app, "org"), (source_app, "source"), (catalog_app, "catalog"),
                  (audit_app, "audit"), (view_app, "view"), (policy_app, "policy"), (project_app, "project"), (export_app, "export"),
                  (bubble_app, "bubble")):
    app.add_typer(sub, name=name)

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

HomeOpt = Annotated[Optional[Path], typer.Option("--home", envvar="BULLES_HOME", help="Site home directory")]
UrlOpt = Annotated[str, typer.Option("--url", envvar="BULLES_URL", help="API base URL")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="BULLES_TOKEN", help="API token")]


def _settings(home: Path | None, **overrides: Any):  # noqa: ANN202 - lazy import keeps --help fast
    from controller.config import load_settings

    try:
        return load_settings(home, **overrides)
    except Exception as exc:
        fail(f"configuration error: {exc}")
        raise typer.Exit(2) from None


def _platform(home: Path | None):  # noqa: ANN202
    from controller.home import init_home
    from controller.platform import Platform

    settings = _settings(home)
    init_home(settings.home)
    return Platform(settings)



def fail(message: str) -> None:
    """An error for people: red, and printed verbatim (messages may hold patterns like [a-z])."""
    err.print(f"[red]{escape(message)}[/red]")


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port from now on, to hand to the server once the site is up:
    a port only chosen would be free for anyone else to take while the site starts. Connections
    made meanwhile wait in the backlog and are answered once serving starts."""
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit while a site starts or serves, so that the `with` blocks unwind:
    the platform drains and signs a last checkpoint, the warehouse stops (uvicorn shuts down
    gracefully first, then re-raises the signal it caught to this handler)."""

    def stop(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def init(home: HomeOpt = None) -> None:
    """Create the site home: state database, master secret and signing key (mode 0600)."""
    from controller.home import init_home
    from controller.platform import Platform

    settings = _settings(home)
    created = init_home(settings.home)
    with Platform(settings):
        pass
    console.print(f"home: {settings.home}" + (f" (created {', '.join(created)})" if created else " (already there)"))


def _serve(settings: Any, platform: Any, banner: list[str], sock: socket.socket) -> None:
    import uvicorn

    from controller.api.app import create_app

    print("\n".join(banner), flush=True)
    config = uvicorn.Config(create_app(platform), host=settings.host, port=settings.port, log_level="info",
                            timeout_graceful_shutdown=10)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass


@app.command()
def serve(home: HomeOpt = None,
          port: Annotated[Optional[int], typer.Option(help="Default: the configured port (8000); 0 = any free port")] = None) -> None:
    """Serve the API on the configured host (127.0.0.1 by default)."""
    from connectors.seaweed import SeaweedError
    from controller.home import init_home
    from controller.platform import Platform
    from controller.warehouse import embedded_warehouse

    settings = _settings(home)
    asked = settings.port if port is None else port
    try:
        sock = _listen(settings.host, asked)
    except OSError as exc:
        fail(f"cannot listen on {settings.host}:{asked}: {exc.strerror}; choose another port with --port (0: any free one)")
        raise typer.Exit(1) from None
    settings = _settings(home, port=sock.getsockname()[1])
    init_home(settings.home)
    try:
        with sock, _sigterm_unwinds(), embedded_warehouse(settings), Platform(settings) as platform:
            _serve(settings, platform, [f"bulles API: {settings.base_url}/docs"], sock)
    except SeaweedError as exc:
        fail(f"warehouse: {exc}")
        raise typer.Exit(1) from None


DEMO_STATE = "demo.json"  # in the home: the port the demo served on last, kept across restarts
DEMO_PORT = 8000


def _demo_socket(home: Path, host: str, asked: int | None) -> tuple[socket.socket, str | None]:
    """The demo's listening socket: on the port asked for, else the last run's, else 8000; on
    any free one when that is taken, with a note saying so."""
    try:
        recorded = int(json.loads((home / DEMO_STATE).read_text(encoding="utf-8"))["port"])
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    preferred = asked if asked is not None else recorded or DEMO_PORT
    try:
        return _listen(host, preferred), None
    except OSError as exc:
        sock = _listen(host, 0)
        return sock, f"port {preferred} is taken ({exc.strerror}); serving on {sock.getsockname()[1]} instead"


@app.command()
def demo(
    home: HomeOpt = None,
    port: Annotated[Optional[int], typer.Option(help="Preferred port (default: the last run's, else 8000); "
                                                "another free one if taken")] = None,
    pupils: Annotated[int, typer.Option(min=10, max=5_000_000, help="Synthetic pupils to generate")] = 5000,
    serve_api: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve after seeding")] = True,
) -> None:
    """Initialise the site, seed the demo organisation, sources and users, and serve."""
    from connectors.seaweed import SeaweedError
    from controller.home import init_home

    settings = _settings(home)
    init_home(settings.home)
    # Bound before anything else: seeding takes a while, and the port must still be ours after.
    sock, moved = _demo_socket(settings.home, settings.host, port)
    settings = _settings(home, port=sock.getsockname()[1])
    if serve_api:
        (settings.home / DEMO_STATE).write_text(json.dumps({"port": settings.port}) + "\n", encoding="utf-8")
        print(f"bulles demo: listening on {settings.base_url}"
              f"{' (' + moved + ')' if moved else ''}; starting the warehouse and seeding…", flush=True)
    else:
        sock.close()  # nothing will serve: the port only names where the links would point
    try:
        with sock, _sigterm_unwinds():
            _demo(settings, sock, moved, pupils, serve_api)
    except SeaweedError as exc:
        fail(f"warehouse: {exc}")
        raise typer.Exit(1) from None


def _demo(settings: Any, sock: socket.socket, moved: str | None, pupils: int, serve_api: bool) -> None:
    from controller.demo import DEMO_LINK_HOURS, DEMO_PROJECT, demo_bubble, seed
    from controller.platform import Platform
    from controller.warehouse import embedded_warehouse

    with embedded_warehouse(settings) as warehouse, Platform(settings) as platform:
        users = seed(platform, pupils=pupils, warehouse=warehouse)
        lines = [
            f"bulles demo site — home {settings.home}",
            f"  API docs:  {settings.base_url}/docs" + (f"  ({moved})" if moved else ""),
            f"  catalog:   {settings.base_url}/api/v1/sources",
            f"  DCAT-AP:   {settings.base_url}/api/v1/catalog",
            "  users (send 'Authorization: Bearer <token>'):",
        ]
        width = max(len(u.username) for u, _ in users)
        for demo_user, token in users:
            roles = ",".join(demo_user.roles)
            lines.append(f"    {demo_user.username:<{width}}  {token}  {roles:<10}  {demo_user.journey}")
        if warehouse is not None:
            lines.append(f"  warehouse: SeaweedFS S3 at {warehouse.endpoint} (buckets opendata, eleves)")
        bubble_id, link = demo_bubble(platform)
        if bubble_id:
            lines.append(f"  bubble:    {bubble_id} of project {DEMO_PROJECT} (bruno), JupyterLab through the gateway;")
            lines.append(f"             open in a browser within {DEMO_LINK_HOURS} h: {link}")
        else:
            lines.append(f"  bubble:    none — {link}")
        lines.append(f"  verify the audit log: bulles audit verify --home {settings.home}")
        print("\n".join(lines), flush=True)
        if serve_api:
            _serve(settings, platform, ["Press Ctrl+C to stop."], sock)


@user_app.command("add")
def user_add(
    username: str,
    role: Annotated[list[str], typer.Option("--role", "-r", help="provider, researcher, reviewer, auditor, admin")],
    org: Annotated[Optional[str], typer.Option("--org", help="Organisation id")] = None,
    home: HomeOpt = None,
) -> None:
    """Create a user and print their token (shown once, stored hashed)."""
    from controller import accounts
    from controller.errors import ApiError

    with _platform(home) as platform:
        try:
            _, token = accounts.add_user(platform, f"cli:{_os_user()}", username, role, org)
        except ApiError as exc:
            fail(exc.message)
            raise typer.Exit(1) from None
    console.print(f"user {username} created; token (shown once):")
    print(token)


@user_app.command("token")
def user_token(username: str, home: HomeOpt = None) -> None:
    """Replace a user's token and print the new one (shown once)."""
    from controller import accounts
    from controller.errors import ApiError

    with _platform(home) as platform:
        try:
            token = accounts.rotate_token(platform, f"cli:{_os_user()}", username)
        except ApiError as exc:
            fail(exc.message)
            raise typer.Exit(1) from None
    print(token)


@org_app.command("add")
def org_add(
    org_id: str,
    name: Annotated[str, typer.Option("--name")],
    homepage: Annotated[Optional[str], typer.Option("--homepage")] = None,
    email: Annotated[Optional[str], typer.Option("--email")] = None,
    home: HomeOpt = None,
) -> None:
    """Declare an organisation (a provider, a lab, the site operator)."""
    from controller import accounts
    from controller.errors import ApiError

    with _platform(home) as platform:
        try:
            accounts.add_organisation(platform, f"cli:{_os_user()}", org_id, name, homepage, email)
        except ApiError as exc:
            fail(exc.message)
            raise typer.Exit(1) from None
    console.print(f"organisation {org_id} created")


def _os_user() -> str:
    try:
        return os.getlogin()
    except OSError:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name


def _api(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60)


def _check(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        message = error["message"]
    except Exception:
        message = response.text[:500]
    fail(f"error {response.status_code}: {message}")
    raise typer.Exit(1)


@source_app.command("register")
def source_register(file: Path, url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """Register a source from a YAML (or JSON) file."""
    try:
        body = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
        raise typer.Exit(2) from None
    kind = "application/json" if file.suffix == ".json" else "application/yaml"
    with _api(url, token) as client:
        created = _check(client.post("/api/v1/sources", content=body, headers={"Content-Type": kind}))
    console.print(f"registered {created['id']} (version {created['version']})")


@source_app.command("list")
def source_list(
    q: Annotated[Optional[str], typer.Argument(help="Full-text query")] = None,
    sensitivity: Annotated[Optional[str], typer.Option()] = None,
    theme: Annotated[Optional[str], typer.Option()] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = "",
) -> None:
    """Search the catalog."""
    params = {k: v for k, v in {"q": q, "sensitivity": sensitivity, "theme": theme}.items() if v}
    with _api(url, token or None) as client:
        found = _check(client.get("/api/v1/sources", params=params))
    table = Table("id", "title", "sensitivity", "publisher", "status")
    for item in found["items"]:
        spec = item["spec"]
        table.add_row(item["id"], spec["title"], spec["sensitivity"], spec["publisher"], item["status"])
    console.print(table)
    console.print(f"{found['total']} source(s)")


@source_app.command("retire")
def source_retire(source_id: str, reason: Annotated[str, typer.Option("--reason")],
                  url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """Retire a source: kept in the catalog as retired, no longer offered."""
    with _api(url, token) as client:
        _check(client.post(f"/api/v1/sources/{source_id}/retire", json={"reason": reason}))
    console.print(f"retired {source_id}")


@catalog_app.command("export")
def catalog_export(out: Annotated[Optional[Path], typer.Option("--out", "-o")] = None,
                   url: UrlOpt = "http://127.0.0.1:8000") -> None:
    """Write the catalog as DCAT-AP 3 JSON-LD."""
    with _api(url, None) as client:
        document = _check(client.get("/api/v1/catalog"))
    text = json.dumps(document, ensure_ascii=False, indent=2)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote {out}")
    else:
        print(text)


@audit_app.command("verify")
def audit_verify(
    home: HomeOpt = None,
    database_url: Annotated[Optional[str], typer.Option("--database-url", envvar="BULLES_DATABASE_URL")] = None,
    public_key: Annotated[Optional[Path], typer.Option("--public-key", help="PEM; the home's signing.pub by default")] = None,
    checkpoint: Annotated[Optional[int], typer.Option("--checkpoint", help="Checkpoint id; the latest by default")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recompute the whole log and check it against a signed checkpoint. Exit 1 names the first bad event."""
    from controller.audit.verify import verify
    from controller.home import SIGNING_PUB, load_public_key
    from controller.store import make_engine

    settings = _settings(home, database_url=database_url)
    key_path = public_key or settings.home / SIGNING_PUB
    try:
        key = load_public_key(key_path)
    except (OSError, ValueError) as exc:
        fail(f"cannot load the public key {key_path}: {exc}")
        raise typer.Exit(2) from None
    engine = make_engine(settings.db_url)
    try:
        report = verify(engine, key, checkpoint)
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(report.as_dict()))
    elif report.ok:
        console.print(f"[green]OK[/green] {report.events} events; checkpoint {report.checkpoint_id} "
                      f"(size {report.checkpoint_size}) verified; {report.uncovered} newer event(s) chain-checked only")
    else:
        where = f" (first bad sequence number: {report.first_bad_seq})" if report.first_bad_seq else ""
        fail(f"FAILED {report.problem}{where}")
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("checkpoint")
def audit_checkpoint(home: HomeOpt = None) -> None:
    """Sign a checkpoint of the log as it stands now."""
    with _platform(home) as platform:
        try:
            row = platform.audit.checkpoint()
        except ValueError as exc:
            fail(str(exc))
            raise typer.Exit(1) from None
    console.print(f"checkpoint {row.id}: size {row.size}, root {row.root.hex()}")


@view_app.command("build")
def view_build(
    source: str,
    mode: Annotated[str, typer.Option("--mode", help="raw, minimised, pseudonymised, generalised, aggregated, synthetic")],
    project: Annotated[str, typer.Option("--project", help="Project the view is for (pseudonym key)")],
    columns: Annotated[Optional[str], typer.Option("--columns", help="Comma-separated; all by default")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="NAME=JSON, e.g. k=5, dimensions='[\"sex\"]'")] = None,
    home: HomeOpt = None,
) -> None:
    """Materialise a view of a registered source and print its manifest."""
    from connectors.base import ConnectorError
    from controller import views
    from controller.errors import ApiError

    parameters: dict[str, Any] = {}
    for item in param or []:
        name, _, raw = item.partition("=")
        try:
            parameters[name] = json.loads(raw)
        except json.JSONDecodeError:
            parameters[name] = raw
    request = views.ViewRequest(source=source, mode=mode, project=project,
                                columns=columns.split(",") if columns else None, parameters=parameters)
    from connectors.seaweed import SeaweedError
    from controller.warehouse import embedded_warehouse

    platform = _platform(home)
    try:
        # A site serving this home runs its warehouse: the build reads through that one.
        with embedded_warehouse(platform.settings, share=True), platform:
            manifest, created = views.materialise(platform, f"cli:{_os_user()}", request)
    except SeaweedError as exc:
        fail(f"warehouse: {exc}")
        raise typer.Exit(1) from None
    except (ApiError, ConnectorError) as exc:
        fail(exc.message if isinstance(exc, ApiError) else exc.full)  # the operator sees the detail
        raise typer.Exit(1) from None
    except ValueError as exc:
        fail(str(exc))
        raise typer.Exit(1) from None
    print(json.dumps(manifest, indent=2, ensure_ascii=False))
    err.print(("built " if created else "already built: ") + str(platform.settings.home / "views" / manifest["view"]))


PolicyDirOpt = Annotated[Optional[Path], typer.Option("--dir", help="Policy directory; the project's policies/ by default")]


@policy_app.command("test")
def policy_test(directory: PolicyDirOpt = None) -> None:
    """Run every test_* rule of the *_test.rego files with the embedded engine (like `opa test`)."""
    from controller.policy import POLICY_DIR, PolicyLoadError, run_tests

    try:
        report = run_tests(directory or POLICY_DIR)
    except (PolicyLoadError, Exception) as exc:  # a syntax error is reported, not a traceback
        fail(f"policies do not load: {exc}")
        raise typer.Exit(2) from None
    for name in report.failed:
        fail(f"FAIL {name}")
    console.print(f"{len(report.passed)} passed, {len(report.failed)} failed")
    raise typer.Exit(0 if report.ok else 1)


@policy_app.command("eval")
def policy_eval(
    input_file: Annotated[Path, typer.Option("--input", help="JSON input document")],
    package: Annotated[str, typer.Option("--package", help="access, bubble or export")] = "access",
    directory: PolicyDirOpt = None,
) -> None:
    """Evaluate one decision with the embedded engine and print it."""
    from controller.policy import POLICY_DIR, EmbeddedEngine, PolicyLoadError

    try:
        document = json.loads(input_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"cannot read {input_file}: {exc}")
        raise typer.Exit(2) from None
    try:
        engine = EmbeddedEngine(directory or POLICY_DIR, poll_seconds=0)
    except PolicyLoadError as exc:
        fail(f"policies do not load: {exc}")
        raise typer.Exit(2) from None
    decision = engine.decide(package, document)
    print(json.dumps({"decision_id": decision.id, "revision": decision.revision, "input_sha256": decision.input_sha256,
                      "result": decision.result, "error": decision.error}, indent=2, ensure_ascii=False))
    raise typer.Exit(1 if decision.error else 0)


@project_app.command("create")
def project_create(file: Path, url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """Create a project from a YAML or JSON file (id, title, purpose, legal_basis, dpia_reference,
    start_date, end_date, members)."""
    import yaml

    try:
        body = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {file}: {exc}")
        raise typer.Exit(2) from None
    with _api(url, token) as client:
        created = _check(client.post("/api/v1/projects", content=json.dumps(body, default=str),
                                     headers={"Content-Type": "application/json"}))
    console.print(f"project {created['id']} created, ends {created['end_date']}")


@project_app.command("list")
def project_list(url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """The caller's projects."""
    with _api(url, token) as client:
        found = _check(client.get("/api/v1/projects"))
    table = Table("id", "title", "purpose", "end", "members")
    for p in found:
        table.add_row(p["id"], p["title"], p["purpose"], p["end_date"], ", ".join(m["username"] for m in p["members"]))
    console.print(table)


@bubble_app.command("start")
def bubble_start(project: str, url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "",
                 memory_mb: Annotated[Optional[int], typer.Option(min=1)] = None,
                 lifetime_hours: Annotated[Optional[float], typer.Option(min=0.01)] = None) -> None:
    """Start a bubble for a project and print the link that opens it in a browser."""
    resources = {k: v for k, v in (("memory_mb", memory_mb), ("lifetime_hours", lifetime_hours)) if v is not None}
    with _api(url, token) as client:
        client.timeout = httpx.Timeout(300)
        bubble = _check(client.post("/api/v1/bubbles", json={"project": project, "resources": resources}))
        link = _check(client.post(f"/api/v1/bubbles/{bubble['id']}/sessions"))
    profile = bubble["profile"]
    console.print(f"bubble {bubble['id']} {bubble['state']}: network {profile['network']}, "
                  f"{profile['memory_mb']} MB, until {bubble['expires_at']}; views: "
                  f"{', '.join(v['name'] for v in bubble['views']) or 'none'}")
    console.print(f"open in a browser within 2 minutes: {link['url']}")


@bubble_app.command("list")
def bubble_list(url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "",
                project: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Bubbles of the caller's projects."""
    with _api(url, token) as client:
        found = _check(client.get("/api/v1/bubbles", params={"project": project} if project else None))
    table = Table("id", "project", "state", "network", "expires", "views")
    for b in found:
        table.add_row(b["id"], b["project"], b["state"], b["profile"].get("network", ""), b["expires_at"] or "",
                      ", ".join(v["name"] for v in b["views"]))
    console.print(table)


@bubble_app.command("stop")
def bubble_stop(bubble_id: str, url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """Stop a bubble's sandbox; its home is kept until it is deleted."""
    with _api(url, token) as client:
        stopped = _check(client.post(f"/api/v1/bubbles/{bubble_id}/stop"))
    console.print(f"bubble {stopped['id']} {stopped['state']}")


@bubble_app.command("delete")
def bubble_delete(bubble_id: str, url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """Stop a bubble and wipe everything it held (the audit log lists what was removed)."""
    with _api(url, token) as client:
        client.timeout = httpx.Timeout(120)
        deleted = _check(client.delete(f"/api/v1/bubbles/{bubble_id}"))
    console.print(f"bubble {deleted['id']} {deleted['state']}")



def _show_export(request: dict) -> None:
    summary = request["summary"]
    console.print(f"export {request['id']} {request['state']} (round {request['round']}): "
                  f"{len(request['files'])} file(s); findings: {summary['fail']} fail, {summary['review']} review, "
                  f"{summary['pass']} pass")
    for reason in request["decision"].get("reasons", []):
        console.print(f"  {reason}")
    for f in request["findings"]:
        if f["severity"] != "pass":
            console.print(f"  [{f['severity']}] {f['file']}: {f['check']}: {f['message']}")


@export_app.command("request")
def export_request(bubble_id: str, paths: Annotated[list[str], typer.Argument(help="Files or folders of the outbox")],
                   justification: Annotated[str, typer.Option("--justification", "-j")],
                   url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "",
                   wait: Annotated[float, typer.Option(help="Seconds to wait for the checks; 0: do not wait")] = 60) -> None:
    """Ask to export files of a bubble's outbox; print the outcome of the automated checks."""
    with _api(url, token) as client:
        client.timeout = httpx.Timeout(300)
        request = _check(client.post("/api/v1/exports", json={"bubble": bubble_id, "paths": paths,
                                                              "justification": justification}))
        deadline = time.monotonic() + wait
        while request["state"] in ("submitted", "checking", "resubmitted") and time.monotonic() < deadline:
            time.sleep(0.2)
            request = _check(client.get(f"/api/v1/exports/{request['id']}"))
    _show_export(request)


@export_app.command("list")
def export_list(url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "",
                state: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Export requests the caller may see (reviewers: those waiting for them with --state in_review)."""
    with _api(url, token) as client:
        found = _check(client.get("/api/v1/exports", params={"state": state} if state else None))
    table = Table("id", "project", "requester", "state", "files", "reviewers", "votes")
    for r in found:
        table.add_row(r["id"], r["project"], r["requester"], r["state"], str(len(r["files"])),
                      str(r["decision"].get("reviewers", "")), str(r["votes_in"]))
    console.print(table)


@export_app.command("show")
def export_show(request_id: str, url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """One request: state, decision reasons and the findings that are not a pass."""
    with _api(url, token) as client:
        _show_export(_check(client.get(f"/api/v1/exports/{request_id}")))


@export_app.command("vote")
def export_vote(request_id: str, vote: Annotated[str, typer.Argument(help="approve, changes or refuse")],
                comment: Annotated[str, typer.Option("--comment", "-m")] = "",
                url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """Review a request in review."""
    with _api(url, token) as client:
        _show_export(_check(client.post(f"/api/v1/exports/{request_id}/votes", json={"vote": vote, "comment": comment})))


@export_app.command("download")
def export_download(request_id: str, directory: Path, url: UrlOpt = "http://127.0.0.1:8000",
                    token: TokenOpt = "") -> None:
    """Write a released request's files and its signed manifest into DIRECTORY."""
    from controller.releases import MANIFEST_NAME

    with _api(url, token) as client:
        manifest = _check(client.get(f"/api/v1/exports/{request_id}/manifest"))
        for entry in manifest["files"]:
            target = directory / entry["path"]
            if not target.resolve().is_relative_to(directory.resolve()):
                fail(f"refusing to write outside {directory}: {entry['path']}")
                raise typer.Exit(1)
            response = client.get(f"/api/v1/exports/{request_id}/files/{entry['path']}")
            if response.status_code != 200:
                _check(response)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(response.content)
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    console.print(f"{len(manifest['files'])} file(s) and {MANIFEST_NAME} written to {directory}")


@export_app.command("verify")
def export_verify(manifest_file: Path,
                  public_key: Annotated[Optional[Path], typer.Option("--public-key", help="The site's signing.pub; "
                                                                     "the home's by default")] = None,
                  files: Annotated[Optional[Path], typer.Option("--files", help="Where the released files are; "
                                                                "beside the manifest by default")] = None,
                  home: HomeOpt = None) -> None:
    """Check a release manifest's signature and every file it lists; exit 1 naming each problem."""
    from controller.home import SIGNING_PUB, load_public_key
    from controller.releases import verify

    try:
        document = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"cannot read {manifest_file}: {exc}")
        raise typer.Exit(2) from None
    key_path = public_key or (_settings(home).home / SIGNING_PUB)
    try:
        key = load_public_key(key_path)
    except (OSError, ValueError) as exc:
        fail(f"cannot read the public key {key_path}: {exc}")
        raise typer.Exit(2) from None
    problems = verify(document, key, files or manifest_file.parent)
    for problem in problems:
        fail(problem)
    if problems:
        raise typer.Exit(1)
    console.print(f"release {document['release']} verified: signature and {len(document['files'])} file(s)")


if __name__ == "__main__":
    app()
