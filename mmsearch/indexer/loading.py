"""The encoder of an indexing run: the one `build_index`, `add_to_index` and
`write_query_bank` load when the caller passes none."""
from __future__ import annotations

from .settings import BuildSettings


def load_build_encoder(settings: BuildSettings, manifest, cluster):
    """The settings' model, else the index's own (`manifest`), else the built-in one; a
    resumed or extended index keeps its family and dim. `cluster`: the Ray connection of
    a Ray run (the driver then loads where the cluster says), or None."""
    from ..encoders import load_encoder

    name = settings.model or (manifest.model.id if manifest is not None else None)  # None: the built-in model
    where = {"device": settings.device, "dtype": settings.dtype}
    recipe = manifest.model.encoder_options() if manifest is not None else {}  # a resumed run keeps its family
    for key in ("family", "dim", "adapter"):
        if getattr(settings, key) is not None:
            recipe[key] = getattr(settings, key)
    if cluster is not None:
        from .ray_engine import driver_encoder_options

        where = driver_encoder_options(settings, cluster)
    return load_encoder(name, max_image_pixels=settings.max_image_pixels, **where, **recipe)
