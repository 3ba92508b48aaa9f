"""Salted pseudonymous IDs: the same person gets the same ID across files, never their own."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)
# X: a redacted path component (rows of the audit stay distinguishable).
PREFIX = {
    "patient": "P",
    "study": "S",
    "series": "R",
    "image": "I",
    "lesion": "L",
    "component": "X",
}


class Pseudonymizer:
    def __init__(self, salt: str) -> None:
        self._key = salt.encode()

    @classmethod
    def from_params(cls, ingest: Mapping[str, Any]) -> Pseudonymizer:
        salt = os.environ.get(str(ingest["pseudonym_salt_env"]))
        if not salt:
            log.warning(
                "pseudonyms use the salt from params.yaml; set %s to a secret for real data",
                ingest["pseudonym_salt_env"],
            )
            salt = str(ingest["pseudonym_salt"])
        return cls(salt)

    def __call__(self, kind: str, value: str) -> str:
        # surrogateescape: file names that are not UTF-8 (kept by the OS as escapes) hash too.
        message = f"{kind}\x00{value}".encode("utf-8", "surrogateescape")
        digest = hmac.new(self._key, message, hashlib.sha256).hexdigest()
        return f"{PREFIX[kind]}{digest[:16]}"
