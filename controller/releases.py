"""Release manifests: the signed, machine-readable record of what left a bubble and under which
disclosure criteria (SATRE 3.3.09) — files and digests, findings with the rules' parameters, the
policy decision and its revision, the reviewers and their votes.

The manifest is canonical JSON (the audit log's encoding) signed with the site's Ed25519 key, so
anybody holding the site's public key can check a release offline: `bulles export verify`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from controller.audit.canonical import canonical
from controller.audit.checkpoint import key_id
from controller.digests import file_sha256

FORMAT = "bulles-release/1"
MANIFEST_NAME = "release-manifest.json"


def manifest(*, site: str, request: Mapping[str, Any], files: Sequence[Mapping[str, Any]],
             findings: Sequence[Mapping[str, Any]], decision: Mapping[str, Any], rules: Mapping[str, Any],
             reviews: Sequence[Mapping[str, Any]], released_at: str) -> dict[str, Any]:
    """The unsigned manifest; pure, so that what is signed can be rebuilt from the stored request."""
    return {
        "format": FORMAT,
        "site": site,
        "release": request["id"],
        "project": request["project"],
        "bubble": request["bubble"],
        "requester": request["requester"],
        "justification": request["justification"],
        "round": request["round"],
        "files": [{"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in files],
        "findings": list(findings),
        "rules": dict(rules),
        "decision": {k: decision.get(k) for k in ("id", "revision", "action", "reviewers", "organisations", "reasons")},
        "reviews": [{k: r.get(k) for k in ("reviewer", "organisation", "vote", "comment", "at")} for r in reviews],
        "released_at": released_at,
    }


def sign(unsigned: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    body = {k: v for k, v in unsigned.items() if k != "signature"}
    signature = key.sign(canonical(body))
    return {**body, "signature": {"algorithm": "Ed25519", "key_id": key_id(key.public_key()),
                                  "value": base64.b64encode(signature).decode()}}


def verify(document: Any, public_key: Ed25519PublicKey, files_dir: Path | None) -> list[str]:
    """Every problem found (empty when the release is intact): signature, then each file."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return [f"not a release manifest: 'format' must be '{FORMAT}'"]
    signature = document.get("signature")
    if not isinstance(signature, dict) or signature.get("algorithm") != "Ed25519":
        return ["the manifest has no Ed25519 signature"]
    problems = []
    if signature.get("key_id") != key_id(public_key):
        problems.append(f"signed by key {signature.get('key_id')}, not by the given key {key_id(public_key)}")
    try:
        public_key.verify(base64.b64decode(signature.get("value", ""), validate=True),
                          canonical({k: v for k, v in document.items() if k != "signature"}))
    except (InvalidSignature, ValueError):
        problems.append("the signature does not match the manifest: it was altered or signed by another key")
    if files_dir is None:
        return problems
    for entry in document.get("files") or []:
        path = files_dir / entry["path"]
        if ".." in Path(entry["path"]).parts or Path(entry["path"]).is_absolute():
            problems.append(f"{entry['path']}: not a relative path")
        elif not path.is_file():
            problems.append(f"{entry['path']}: missing")
        else:
            digest = file_sha256(path)
            if digest != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 {digest} differs from the manifest's {entry['sha256']}")
    return problems
