"""The segmentation search's checks of params.yaml (registered with ``config``)."""

from __future__ import annotations

from typing import Any

from medtailor.config import params_check


@params_check
def segmentation_search_errors(params: dict[str, Any]) -> list[str]:
    """The searched models' names are free, and every patch size halves as often as the
    space down-samples."""
    from medtailor.search_seg import final_names

    search = params.get("search_seg") or {}
    if not search.get("enabled"):
        return []
    errors = [
        f"seg_models.{name}: the segmentation search trains a model of this name; rename the entry"
        for name in sorted(set(final_names(params)) & set(params["seg_models"]))
    ]
    halvings = int(search["downsamplings"]) + 1
    for key in ("recipe", "supernet_recipe", "final_recipe"):
        size = {**params["train_seg"], **search[key]}["patch_size"]
        if any(int(s) % 2**halvings for s in size):
            errors.append(
                f"search_seg.{key}: patch_size {list(size)} (from train_seg unless "
                f"overridden) must be a multiple of {2**halvings} per axis: the input stem and "
                f"{search['downsamplings']} down-samplings halve it {halvings} times"
            )
    return errors
