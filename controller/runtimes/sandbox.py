"""The local sandbox, as data: the bubblewrap command line, the files a bubble sees in /etc,
Jupyter's configuration and environment. Pure functions; local.py runs what they build.

Two bubblewrap processes nest. The outer one runs as root: it builds the bubble's file system
from bind mounts (root can read sources under directories no one else may enter, such as a
Python under /root), unshares the network, IPC, UTS, PID and cgroup namespaces, and remounts
the new root read-only. It then drops to the bubble's own unprivileged host user (setpriv), and
the inner one enters a user namespace where that user is `researcher` (uid 1000) with no
capabilities, and further user namespaces are disabled. Inside: the system and the Python
environment read-only, the views read-only under /data, a writable home (with the outbox) and
a private /tmp, and nothing of the host's files or processes. Every bubble has its own network
namespace: loopback only, or for `open` bubbles (open data only) user-mode networking to the
internet that network.py describes, set up by the controller while the outer bubblewrap waits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from controller.runtimes import network
from controller.runtimes.base import SandboxSpec

INSIDE_UID = 1000
INSIDE_USER = "researcher"
INSIDE_HOME = PurePosixPath("/home/researcher")
INSIDE_RUN = PurePosixPath("/run/bulle")
INSIDE_DATA = PurePosixPath("/data")
SOCKET = "jupyter.sock"
TOKEN_FILE = "token"
CONFIG_DIR, DATA_DIR = "config", "share"  # under /run/bulle, written by the controller, read-only inside
PR_SET_DUMPABLE = 4  # <linux/prctl.h>
DOWNLOAD_PLUGINS = (
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/docmanager-extension:open-browser-tab",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
    "@jupyterlab/notebook-extension:export",
    "@jupyterlab/imageviewer-extension:plugin",
    "@jupyterlab/pdf-extension:factory",
    "@jupyterlab/audio-extension:plugin",
    "@jupyterlab/video-extension:plugin",
)
SYSTEM = ("/usr",)
MERGED_USR = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}
KERNEL_MOUNTS = ("/proc", "/dev", "/tmp")  # mounted first: binds below them (an env under /tmp) stay visible
# Host files an open bubble needs to check certificates; a closed one has none.
OPEN_NETWORK_ETC = ("/etc/ssl", "/etc/ca-certificates")
# Names from /etc/hosts and DNS only: none of the host's NSS modules (LDAP, systemd-resolved...).
OPEN_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"


@dataclass(frozen=True)
class Layout:
    """Where one bubble lives on the host (the controller's home, never visible inside)."""

    root: Path
    sockets: Path  # short: a Unix socket's path has at most 107 bytes, and homes can be deep

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def run(self) -> Path:
        return self.sockets / self.root.name

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def socket(self) -> Path:
        return self.run / SOCKET

    @property
    def state(self) -> Path:
        return self.root / "sandbox.json"

    @property
    def log(self) -> Path:
        return self.root / "sandbox.log"

    @property
    def disk(self) -> Path:
        return self.root / "disk.img"

    @property
    def network_log(self) -> Path:
        return self.root / "network.log"


@dataclass(frozen=True)
class Handshake:
    """File descriptors through which the controller sets up an open bubble's network while the
    outer bubblewrap waits, before anything runs inside."""

    info: int  # bubblewrap writes the sandbox's pid (as JSON) here, then closes it
    block: int  # bubblewrap waits for a byte here before running the bubble's first process
    sync: int  # bubblewrap holds it open while the sandbox lives: slirp4netns exits when it closes


def etc_files(spec: SandboxSpec) -> dict[str, str]:
    """The bubble's /etc: who the researcher is, and a hosts file that knows only localhost; for
    an open bubble, a resolver inside its own network and name lookups without the host's NSS."""
    files = {
        "passwd": f"{INSIDE_USER}:x:{INSIDE_UID}:{INSIDE_UID}:researcher:{INSIDE_HOME}:/bin/bash\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"{INSIDE_USER}:x:{INSIDE_UID}:\nnogroup:x:65534:\n",
        "hostname": f"bulle-{spec.bubble[:12]}\n",
        "hosts": f"127.0.0.1 localhost bulle-{spec.bubble[:12]}\n::1 localhost\n",
    }
    if spec.network == "open":
        files |= {"resolv.conf": network.resolv_conf(), "nsswitch.conf": OPEN_NSSWITCH}
    return files


def jupyter_config() -> str:
    """Read as Python by Jupyter Server at start, in the server's own process.

    First it makes the process undumpable (prctl PR_SET_DUMPABLE 0): the kernels and terminals it
    starts run as the same user, and could otherwise attach to it with ptrace or read its memory
    and environment through /proc. execve resets the flag, so those children stay ordinary
    processes; it is set before the token is read, so the token is never in a dumpable process.
    Then it takes the gateway's token from its file and deletes it (no file, argument or
    environment variable holds it), and installs an identity provider that admits a request only
    when it carries that token *and* comes from a process outside the bubble: the kernel checks
    the peer of every connection on the socket, and any process of the bubble runs as the
    researcher's uid, the gateway as one the bubble's user namespace does not map. A token
    stolen by the researcher's code (say, by a fake server put in place of the socket) is then
    of no use to it. The provider's own `token` stays empty: JupyterLab copies it into the page
    it serves. Jupyter's login cookie is never set, and its cookie secret is random and in
    memory only."""
    token = str(INSIDE_RUN / TOKEN_FILE)
    return f"""\
import ctypes, hmac, os, socket, struct
_libc = ctypes.CDLL(None, use_errno=True)
if _libc.prctl({PR_SET_DUMPABLE}, 0, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
from jupyter_server.auth.identity import IdentityProvider, User
with open({token!r}) as _f:
    _GATEWAY = ("token " + _f.read().strip()).encode()
os.unlink({token!r})


def _from_outside(handler):
    try:
        peer = handler.request.connection.stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except (AttributeError, OSError):
        return False
    return struct.unpack("3i", peer)[1] != os.getuid()


class GatewayIdentity(IdentityProvider):
    def get_user(self, handler):
        presented = handler.request.headers.get("Authorization", "").encode()
        if not (hmac.compare_digest(presented, _GATEWAY) and _from_outside(handler)):
            return None
        handler._token_authenticated = True  # Origin and XSRF are the gateway's to check
        return User(username={INSIDE_USER!r})

    @property
    def login_available(self):
        return False


c.ServerApp.identity_provider_class = GatewayIdentity
c.GatewayIdentity.token = ""
c.ServerApp.cookie_secret = os.urandom(32)  # no jupyter_cookie_secret file
c.NotebookNotary.db_file = ":memory:"  # the data directory is read-only: notebook trust lasts a server's life
c.NotebookNotary.secret = os.urandom(32)
c.ServerApp.allow_remote_access = True  # the Host is the gateway's; only the gateway reaches the socket
c.ServerApp.open_browser = False
c.ServerApp.answer_yes = True
"""


def page_config() -> dict[str, dict[str, bool]]:
    """JupyterLab's labconfig/page_config.json: the plugins whose only use is to hand a file of the
    home to the browser (download, open in a new browser tab, export a notebook through
    nbconvert, the viewers that read a file as base64 or from /files/) are not loaded. The
    gateway refuses what they would ask for anyway; without them nothing in the menus offers it."""
    return {"disabledExtensions": {plugin: True for plugin in DOWNLOAD_PLUGINS}}


def environment(spec: SandboxSpec, python_env: Path) -> dict[str, str]:
    """The whole environment inside (bubblewrap starts from an empty one). Jupyter's data
    directory is an empty, read-only one: in the home, the researcher's code could add a lab
    extension, a kernelspec or a theme there, whose files Jupyter would then serve as static
    files."""
    return {
        "PATH": f"{python_env}/bin:/usr/bin:/bin",
        "HOME": str(INSIDE_HOME),
        "USER": INSIDE_USER,
        "LOGNAME": INSIDE_USER,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "SHELL": "/bin/bash",
        "BULLE_BUBBLE": spec.bubble,
        "BULLE_PROJECT": spec.project,
        "BULLE_DATA": str(INSIDE_DATA),
        "BULLE_OUTBOX": str(INSIDE_HOME / "outbox"),
        "JUPYTER_CONFIG_DIR": str(INSIDE_RUN / CONFIG_DIR),
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
        "JUPYTER_DATA_DIR": str(INSIDE_RUN / DATA_DIR),
        "IPYTHONDIR": str(INSIDE_HOME / ".ipython"),
        "MPLCONFIGDIR": "/tmp/matplotlib",
    }


def jupyter_command(spec: SandboxSpec, python_env: Path) -> list[str]:
    return [
        f"{python_env}/bin/python", "-m", "jupyter_server",
        f"--sock={INSIDE_RUN / SOCKET}", "--sock-mode=0600",
        f"--ServerApp.base_url={spec.base_url}",
        f"--ServerApp.root_dir={INSIDE_HOME}",
        "--KernelManager.transport=ipc",  # kernels talk over files in /tmp, not TCP ports
    ]


def _ancestors(targets: list[str]) -> list[str]:
    """Every directory above a mount target, parents first: created 0755 before the binds (else
    bubblewrap copies the mode of the source's parent, and /root or a 0700 home stays shut)."""
    found: list[str] = []
    for target in targets:
        for parent in reversed(PurePosixPath(target).parents):
            text = str(parent)
            if text != "/" and text not in found:
                found.append(text)
    return [d for d in found if d not in targets and d not in MERGED_USR and d not in KERNEL_MOUNTS]


def bwrap_command(spec: SandboxSpec, layout: Layout, *, python_env: Path, python_base: Path, host_uid: int,
                  handshake: Handshake | None = None, bwrap: str = "bwrap", setpriv: str = "setpriv") -> list[str]:
    """The command that runs the bubble's Jupyter Server, as root, from the controller. An open
    bubble needs the handshake: it waits, in its new namespaces, until its network is set up."""
    if (spec.network == "open") != (handshake is not None):
        raise ValueError("an open bubble, and only an open bubble, starts with a network handshake")
    ro: list[tuple[str, str]] = [(p, p) for p in SYSTEM]
    for path in (python_base, python_env):
        if not any(str(path) == p or str(path).startswith(p + "/") for p in SYSTEM):
            ro.append((str(path), str(path)))
    ro += [(str(layout.etc / name), f"/etc/{name}") for name in sorted(etc_files(spec))]
    if spec.network == "open":
        ro += [(p, p) for p in OPEN_NETWORK_ETC if Path(p).exists()]
    ro += [(str(source), str(INSIDE_DATA / name)) for name, source in sorted(spec.views.items())]
    rw = [(str(layout.home), str(INSIDE_HOME)), (str(layout.run), str(INSIDE_RUN))]
    targets = [t for _, t in ro + rw]
    directories = [str(INSIDE_DATA), *_ancestors(targets)]

    outer = [bwrap, "--unshare-ipc", "--unshare-uts", "--unshare-pid", "--unshare-net", "--unshare-cgroup-try"]
    if handshake is not None:
        outer += ["--info-fd", str(handshake.info), "--block-fd", str(handshake.block), "--sync-fd", str(handshake.sync)]
    outer += ["--hostname", f"bulle-{spec.bubble[:12]}", "--new-session", "--clearenv",
              "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    for name, value in sorted(environment(spec, python_env).items()):
        outer += ["--setenv", name, value]
    for directory in dict.fromkeys(directories):  # /data exists, empty, even without views
        outer += ["--perms", "0755", "--dir", directory]
    for link, to in MERGED_USR.items():
        outer += ["--symlink", to, link]
    for source, target in ro:
        outer += ["--ro-bind", source, target]
    for source, target in rw:
        outer += ["--bind", source, target]
    outer += ["--remount-ro", "/", "--chdir", str(INSIDE_HOME)]
    drop = [setpriv, f"--reuid={host_uid}", f"--regid={host_uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    inner = [bwrap, "--unshare-user", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID), "--disable-userns",
             "--bind", "/", "/", "--dev-bind", "/dev", "/dev", "--chdir", str(INSIDE_HOME), "--cap-drop", "ALL"]
    return [*outer, "--", *drop, "--", *inner, "--", *jupyter_command(spec, python_env)]


def state_document(spec: SandboxSpec, *, pid: int, started: int, host_uid: int, cgroups: list[str],
                   disk_mounted: bool, slirp: tuple[int, int] | None = None) -> str:
    """What a restarted controller needs to find the sandbox again (sandbox.json), and its
    slirp4netns (pid, start time) for an open bubble."""
    return json.dumps({"bubble": spec.bubble, "project": spec.project, "pid": pid, "started": started,
                       "host_uid": host_uid, "cgroups": cgroups, "disk_mounted": disk_mounted,
                       "slirp": None if slirp is None else {"pid": slirp[0], "started": slirp[1]}}, indent=2)
