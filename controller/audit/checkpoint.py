"""Signed checkpoints, in the shape of a C2SP tlog-checkpoint note plus the chain head.

The note body is `origin\nsize\nbase64(root)\nchain base64(head)\n`; the signature is Ed25519
over those exact bytes. Anyone holding the public key can check a checkpoint without trusting
the database that stores it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass(frozen=True)
class SignedCheckpoint:
    origin: str
    size: int
    root: bytes
    chain_head: bytes
    key_id: str
    signature: bytes


def note_body(origin: str, size: int, root: bytes, chain_head: bytes) -> bytes:
    if "\n" in origin:
        raise ValueError("a checkpoint origin is one line")
    b64 = base64.b64encode
    return f"{origin}\n{size}\n{b64(root).decode()}\nchain {b64(chain_head).decode()}\n".encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, origin: str, size: int, root: bytes, chain_head: bytes) -> SignedCheckpoint:
    signature = key.sign(note_body(origin, size, root, chain_head))
    return SignedCheckpoint(origin, size, root, chain_head, key_id(key.public_key()), signature)


def signature_valid(public_key: Ed25519PublicKey, checkpoint: SignedCheckpoint) -> bool:
    body = note_body(checkpoint.origin, checkpoint.size, checkpoint.root, checkpoint.chain_head)
    try:
        public_key.verify(checkpoint.signature, body)
    except InvalidSignature:
        return False
    return True
