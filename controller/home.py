"""The embedded site's home: secrets and keys created once, never overwritten.

The master secret (from which per-project pseudonymisation keys are derived) and the audit
signing key are the two things whose loss or leak would hurt most, so they are created with
mode 0600 from the start (never chmod-ed afterwards, which would leave a window).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MASTER_SECRET = "master.key"
SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create `path` with `mode` unless it exists; True when created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def init_home(home: Path) -> list[str]:
    """Create the home, master secret and signing key where missing; return what was created."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    (home / "warehouse").mkdir(exist_ok=True)
    created = []
    if _write_new(home / MASTER_SECRET, secrets.token_bytes(32), 0o600):
        created.append(MASTER_SECRET)
    if not (home / SIGNING_KEY).exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        if _write_new(home / SIGNING_KEY, pem, 0o600):
            created.append(SIGNING_KEY)
    public = load_signing_key(home).public_key()
    pub_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if _write_new(home / SIGNING_PUB, pub_pem, 0o644):
        created.append(SIGNING_PUB)
    return created


def master_secret(home: Path) -> bytes:
    data = (home / MASTER_SECRET).read_bytes()
    if len(data) != 32:
        raise ValueError(f"{home / MASTER_SECRET}: expected 32 bytes, found {len(data)}")
    return data


def load_signing_key(home: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((home / SIGNING_KEY).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{home / SIGNING_KEY}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key
