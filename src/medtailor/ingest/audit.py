"""Collect rejected inputs with their reasons; redact identifiers before anything is written."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from medtailor.tables import write_audit


class Rejected(Exception):
    """An input cannot be used; the message is the reason written to the audit report."""


@dataclass
class Audit:
    rows: list[dict[str, str]] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)

    def reject(self, source: str, reason: str) -> None:
        self.rows.append({"source": source, "reason": reason})

    def remember_identifiers(self, values: list[str]) -> None:
        """Header values (names, IDs, dates of birth) that must never reach an output."""
        for value in values:
            for part in re.split(r"[\^=\\]", value):
                if len(part.strip()) >= 3:
                    self.identifiers.add(part.strip())

    def redact(self, text: str) -> str:
        for value in sorted(self.identifiers, key=len, reverse=True):
            text = re.sub(re.escape(value), "[redacted]", text, flags=re.IGNORECASE)
        return text

    def sources(self) -> set[str]:
        return {row["source"] for row in self.rows}

    def write(self, path: Path) -> Path:
        rows = [{k: self.redact(v) for k, v in row.items()} for row in self.rows]
        return write_audit(rows, path)
