"""Collect rejected inputs with their reasons; redact identifiers before anything is written.

Redaction works on what can carry an identifier, never on the product's own words: a path
component that holds a header-derived token (a name part, an ID, a birth date) is replaced
as a whole by a stable pseudonym (``[redacted:X...]``, a salted hash of the component, so
rows stay distinguishable), and the details quoted from libraries (exception messages,
which may quote header values) lose every identifier they contain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medtailor.tables import write_audit

# Name parts shorter than this are not matched inside path components (initials would
# redact half a corpus); IDs and dates are matched whole whatever their length.
MIN_TOKEN = 3
TOKEN_SPLIT = re.compile(r"[\W_]+", re.UNICODE)


class Rejected(Exception):
    """An input cannot be used. ``reason`` is the product's sentence; ``detail`` what a
    library said (redacted before it is written)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason, self.detail = reason, detail

    def __reduce__(self) -> tuple:
        # Crosses process boundaries (ingest.workers) with reason and detail kept apart, so
        # the detail is still redacted as a library's message.
        return (Rejected, (self.reason, self.detail))


def printable(name: str) -> str:
    """A file name as text that any encoder accepts: bytes that were not UTF-8 (kept by the
    OS as surrogate escapes, e.g. a latin-1 'M\\xfcller' from a Windows export) are shown
    as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _tokens(text: str) -> set[str]:
    return {t.casefold() for t in TOKEN_SPLIT.split(text) if t}


@dataclass
class Audit:
    # Stable pseudonym of a redacted path component (a salted hash: rows stay apart).
    pseudonym: Callable[[str], str]
    rows: list[dict[str, str]] = field(default_factory=list)
    name_tokens: set[str] = field(default_factory=set)
    whole_values: set[str] = field(default_factory=set)
    known_paths: set[str] = field(default_factory=set)

    def reject(self, source: str, reason: str, detail: str = "") -> None:
        self.rows.append({"source": source, "reason": reason, "detail": detail})

    def reject_error(self, source: str, error: Rejected) -> None:
        self.reject(source, error.reason, error.detail)

    def remember_paths(self, paths: Iterable[str]) -> None:
        """Source paths that reasons may quote (they are redacted wherever they appear)."""
        self.known_paths.update(paths)

    def remember_identifiers(self, values: Iterable[str]) -> None:
        """Header values (names, IDs, dates of birth) that must never reach an output."""
        for value in values:
            value = value.strip()
            if not value:
                continue
            self.whole_values.add(value.casefold())
            for part in re.split(r"[\^=\\\s]+", value):
                if len(part) >= MIN_TOKEN:
                    self.name_tokens.add(part.casefold())

    def _identifying(self, component: str) -> bool:
        folded = component.casefold()
        if self.name_tokens & _tokens(component):
            return True
        return any(len(v) >= 4 and v in folded for v in self.whole_values)

    def redact_path(self, path: str) -> str:
        """``path`` with every identifying component replaced by its pseudonym."""
        return "/".join(
            f"[redacted:{self.pseudonym(part)}]" if self._identifying(part) else part
            for part in path.split("/")
        )

    def redact_detail(self, text: str) -> str:
        """A library's message: every identifier value and name part removed, wherever."""
        for value in sorted(self.whole_values | self.name_tokens, key=len, reverse=True):
            text = re.sub(re.escape(value), "[redacted]", text, flags=re.IGNORECASE)
        return text

    def redact_reason(self, text: str) -> str:
        """The product's sentence: only the source paths it quotes are redacted."""
        for path in sorted(self.known_paths, key=len, reverse=True):
            if path in text:
                text = text.replace(path, self.redact_path(path))
        return text

    def sources(self) -> set[str]:
        return {row["source"] for row in self.rows}

    def write(self, path: Path) -> Path:
        rows = []
        for row in self.rows:
            reason = self.redact_reason(row["reason"])
            if row["detail"]:
                reason = f"{reason} ({self.redact_detail(row['detail'])})"
            rows.append({"source": self.redact_path(row["source"]), "reason": reason})
        return write_audit(rows, path)
