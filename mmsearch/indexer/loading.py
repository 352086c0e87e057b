"""The encoder of an indexing run: the one `build_index`, `add_to_index` and
`write_query_bank` load when the caller passes none, and the FDE view of a multi-vector one."""
from __future__ import annotations

from typing import Optional, Tuple

from ..errors import IndexFormatError, InputError
from ..index_format import DEFAULT_CANDIDATES, MultiVectorSpec
from .settings import BuildSettings


def load_build_encoder(settings: BuildSettings, manifest, cluster):
    """The settings' model, else the index's own (`manifest`), else the built-in one; a
    resumed or extended index keeps its family and dim. `cluster`: the Ray connection of
    a Ray run (the driver then loads where the cluster says), or None."""
    from ..encoders import load_encoder

    name = settings.model or (manifest.model.id if manifest is not None else None)  # None: the built-in model
    where = {"device": settings.device, "dtype": settings.dtype}
    recipe = manifest.encoder_options() if manifest is not None else {}  # a resumed run keeps its family
    for key in ("family", "dim", "adapter"):
        if getattr(settings, key) is not None:
            recipe[key] = getattr(settings, key)
    if cluster is not None:
        from .ray_engine import driver_encoder_options

        where = driver_encoder_options(settings, cluster)
    return load_encoder(name, max_image_pixels=settings.max_image_pixels, **where, **recipe)


def multi_vector_setup(settings: BuildSettings, manifest, encoder) -> Tuple[object, Optional[MultiVectorSpec]]:
    """(the encoder the run indexes with, the multi-vector layout or None). A multi-vector
    model is indexed through its MUVERA FDEs (`encoders.fde.FdeEncoder`) with its token
    vectors beside them; a resumed or extended index keeps its own layout, and a run that
    asks for another one is refused before anything is written."""
    asked = {k: v for k, v in (("precision", settings.token_precision), ("fde", dict(settings.fde) or None),
                                ("candidates", settings.candidates)) if v is not None}
    if not getattr(encoder, "multi_vector", False):
        if asked:
            raise InputError(f"{sorted(asked)} apply to multi-vector models (colqwen2, ...); "
                             f"{getattr(encoder, 'name', encoder)!r} embeds one vector per item")
        return encoder, None
    if settings.engine == "ray":
        raise InputError("multi-vector models are indexed by the local engine (engine='local'); the Ray "
                         "engine does not store token vectors yet")
    from ..encoders.fde import FdeEncoder

    spec = manifest.multi_vector if manifest is not None else None
    if spec is None:
        fde = dict(settings.fde)
        try:
            spec = MultiVectorSpec(token_dim=int(encoder.token_dim), precision=settings.token_precision or "float16",
                                   fde=fde, candidates=settings.candidates or DEFAULT_CANDIDATES)
        except IndexFormatError as e:
            raise InputError(str(e).replace("multi_vector.", "")) from None
    else:
        built = spec.to_dict()
        differs = {k: (built[k], v) for k, v in asked.items()
                   if (dict(built[k], **v) if k == "fde" else v) != built[k]}
        if differs:
            raise InputError(f"the index was built with {', '.join(f'{k}={b!r}' for k, (b, _) in differs.items())}; "
                             f"this run asks for {', '.join(f'{k}={v!r}' for k, (_, v) in differs.items())} "
                             f"(use --overwrite to rebuild)")
    return FdeEncoder(encoder, spec.fde), spec
