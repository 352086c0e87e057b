"""Per-call search parameters and the faiss `SearchParameters*` tree built from them.

faiss reads search knobs either from the index object (``index.nprobe = 32``, which
races when threads share the index) or from a `SearchParameters` object passed to
``search``. mmsearch only ever does the latter: a tree mirroring the index's
structure (refine -> IVF, pre-transform -> HNSW, ...) built for each call, carrying
the knobs and an optional `IDSelector` to the level that scans the vectors.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple, Union

import faiss

from mmsearch.errors import InputError

# Accepted spellings of each knob (faiss names first).
_ALIASES = {"nprobe": "nprobe", "efSearch": "efSearch", "ef_search": "efSearch", "efsearch": "efSearch",
            "k_factor": "k_factor", "kfactor": "k_factor", "oversample": "oversample", "rescore": "rescore",
            "candidates": "candidates"}


@dataclass(frozen=True)
class SearchParams:
    """Search knobs; None leaves the index's recorded default.

    `nprobe`: inverted lists visited by IVF indexes. `efSearch`: HNSW beam width.
    `k_factor`: a refine stage (``...,RFlat``) rescores ``k * k_factor`` candidates.
    """

    nprobe: Optional[int] = None
    efSearch: Optional[int] = None
    k_factor: Optional[float] = None
    # compact indexes (`mmsearch.query.rescore`): first-stage candidates per hit, and whether to rescore them
    oversample: Optional[float] = None
    rescore: Optional[bool] = None
    # a multi-vector index reranks this many FDE candidates by exact MaxSim (`mmsearch.query.late`)
    candidates: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "efSearch", "candidates"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"search parameter {name}={value!r}: expected an int >= 1")
        k = self.k_factor
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, float)) or k < 1):
            raise InputError(f"search parameter k_factor={k!r}: expected a number >= 1")
        o = self.oversample
        if o is not None and (isinstance(o, bool) or not isinstance(o, (int, float)) or o < 1):
            raise InputError(f"search parameter oversample={o!r}: expected a number >= 1")
        if self.rescore is not None and not isinstance(self.rescore, bool):
            raise InputError(f"search parameter rescore={self.rescore!r}: expected true or false")

    @classmethod
    def coerce(cls, value: Union[None, "SearchParams", Mapping[str, Any]],
               strict: bool = True) -> "SearchParams":
        """From None, a SearchParams or a dict such as ``{"nprobe": 16}``. Unknown keys
        raise when `strict` (user input), else are ignored (a manifest's extra notes)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise InputError(f"params={value!r}: expected a dict like {{'nprobe': 16}} or a SearchParams")
        unknown = sorted(k for k in value if k not in _ALIASES)
        if unknown and strict:
            raise InputError(f"unknown search parameters {unknown}; valid: nprobe, efSearch (ef_search), "
                             f"k_factor, oversample, rescore, candidates")
        known = {_ALIASES[k]: v for k, v in value.items() if k in _ALIASES and v is not None}
        if known.get("rescore") in (0, 1):  # JSON clients (the server's numeric params) send 0 / 1
            known["rescore"] = bool(known["rescore"])
        return cls(**known)

    def over(self, defaults: "SearchParams") -> "SearchParams":
        """These knobs, falling back to `defaults` where unset."""
        return dataclasses.replace(defaults, **{f.name: getattr(self, f.name)
                                                for f in dataclasses.fields(self)
                                                if getattr(self, f.name) is not None})


def build_faiss_params(index: faiss.Index, knobs: SearchParams, sel: Optional[faiss.IDSelector] = None,
                       exhaustive: bool = False) -> Tuple[Optional[faiss.SearchParameters], List[Any]]:
    """The `SearchParameters` tree for one search of `index`, and the objects it
    references (keep them alive until the search returns).

    `sel` (in the label space of `index`) goes to the level that scans codes: IVF,
    HNSW or flat; refine and pre-transform levels pass it down, since faiss ignores a
    selector set on them. `exhaustive` makes IVF levels visit every list. Returns
    (None, []) when nothing differs from the index's own settings.
    """
    if sel is None and not exhaustive and dataclasses.replace(knobs, candidates=None) == SearchParams():
        return None, []
    keep: List[Any] = [sel]
    return _params(index, knobs, sel, exhaustive, keep), keep


def _params(index: faiss.Index, knobs: SearchParams, sel, exhaustive: bool, keep: list):
    idx = faiss.downcast_index(index)
    keep.append(idx)
    if isinstance(idx, faiss.IndexRefine):
        base = _params(idx.base_index, knobs, sel, exhaustive, keep)
        k_factor = float(knobs.k_factor if knobs.k_factor is not None else idx.k_factor)
        params = faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)
    elif isinstance(idx, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform(index_params=_params(idx.index, knobs, sel, exhaustive, keep))
    elif isinstance(idx, faiss.IndexIVF):
        nprobe = idx.nlist if exhaustive else min(knobs.nprobe or idx.nprobe, idx.nlist)
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
    elif isinstance(idx, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(knobs.efSearch or idx.hnsw.efSearch))
    else:
        params = faiss.SearchParameters()
    if sel is not None and not isinstance(idx, (faiss.IndexRefine, faiss.IndexPreTransform)):
        params.sel = sel
    keep.append(params)
    return params
