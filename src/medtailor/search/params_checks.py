"""The architecture search's checks of params.yaml (registered with ``config``)."""

from __future__ import annotations

from typing import Any

from medtailor.config import enabled, params_check


@params_check
def search_needs_detector_candidates(params: dict[str, Any]) -> list[str]:
    if enabled(params, "search") and params["patches"].get("source") == "whole_image":
        return [
            "search.enabled is true but patches.source is whole_image: the architecture "
            "search scores candidates by the detector's validation AUFROC, which whole images "
            "do not have; set search.enabled: false"
        ]
    return []
