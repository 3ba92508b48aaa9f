"""The studies' checks of params.yaml (registered with ``config``)."""

from __future__ import annotations

from typing import Any

from medtailor.config import load_schema, params_check


@params_check
def grid_errors(params: dict[str, Any]) -> list[str]:
    """A grid factor must be a key a configuration has (a typo would be ignored), and every
    configuration needs the model entry's required keys from the factors or ``entry``."""
    grid = (params.get("studies") or {}).get("grid")
    if not grid:
        return []
    schema = load_schema()["$defs"]
    entry_keys = set(schema["model_entry"]["properties"]) - {"recipe"}
    known = entry_keys | set(schema["recipe"]["properties"])
    errors = [
        f"studies.grid.factors.{factor}: not a model entry or train recipe key"
        for factor in grid["factors"]
        if factor not in known
    ]
    given = set(grid["factors"]) | set(grid.get("entry", {}))
    missing = sorted(set(schema["model_entry"]["required"]) - given)
    if missing:
        errors.append(f"studies.grid: neither factors nor entry set {missing}")
    errors += [
        f"studies.grid.entry.{key}: not a model entry or train recipe key"
        for key in grid.get("entry", {})
        if key not in known
    ]
    return errors
