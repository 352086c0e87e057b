"""The model record of a manifest: which encoder made the vectors, and whether another
encoder may search them (`check_model`).

Indexes written before embedding families record no family; `LEGACY_FAMILY` says
which rule their vectors followed.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from mmsearch.errors import IndexFormatError, IndexMismatchError

from .fields import get_field

# Indexes written before embedding families (manifests without "family") embedded Qwen
# backbones with transformers' M-RoPE positions: the rule now called the "mmsearch" family.
LEGACY_FAMILY = {"qwen2_vl": "mmsearch", "qwen2_5_vl": "mmsearch"}


@dataclass(frozen=True)
class ModelInfo:
    """The encoder the vectors were made with; `check_model` compares two of these."""

    id: str
    backbone: str
    dim: int
    dtype: str
    revision: Optional[str] = None
    weight_hash: Optional[str] = None
    pooling: str = "last_token"
    normalized: bool = True
    family: Optional[str] = None    # the embedding recipe (None: an index from before families)
    rule: Optional[str] = None      # the recipe's rule version
    adapter: Optional[str] = None   # a task adapter the recipe was specialised to (jina-v4's task)

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim <= 0:
            raise IndexFormatError(f"model dim must be a positive int, got {self.dim!r}")
        for name in ("id", "backbone", "dtype", "pooling"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise IndexFormatError(f"model {name} must be a non-empty string, "
                                       f"got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelInfo":
        w = "model"
        return cls(id=get_field(d, "id", w, str), backbone=get_field(d, "backbone", w, str),
                   dim=get_field(d, "dim", w, int), dtype=get_field(d, "dtype", w, str),
                   revision=get_field(d, "revision", w, str, optional=True),
                   weight_hash=get_field(d, "weight_hash", w, str, optional=True),
                   pooling=get_field(d, "pooling", w, str), normalized=get_field(d, "normalized", w, bool),
                   family=get_field(d, "family", w, str, optional=True),
                   rule=get_field(d, "rule", w, str, optional=True),
                   adapter=get_field(d, "adapter", w, str, optional=True))

    @property
    def effective_family(self) -> Optional[str]:
        """The family the vectors were made by. Indexes from before families record none:
        their Qwen2-VL/Qwen2.5-VL vectors used transformers' M-RoPE positions, i.e. the
        ``mmsearch`` family; other backbones' rules did not change."""
        if self.family is not None:
            return self.family
        return LEGACY_FAMILY.get(self.backbone)

    def legacy_rule_note(self) -> Optional[str]:
        """What to tell a user whose index was built under the old Qwen2-VL rule, or None."""
        if self.family is not None or self.backbone not in LEGACY_FAMILY:
            return None
        return (f"this index was built before embedding families: its {self.backbone} vectors used M-RoPE "
                f"positions, which VLM2Vec's reference does not (it uses 1D positions). Searches keep the old "
                f"rule (family 'mmsearch') so results stay consistent. To get the reference embeddings, rebuild: "
                f"mmsearch index build SOURCES --out INDEX --model {self.id} --fresh")

    def encoder_options(self) -> dict:
        """What `load_encoder` needs besides the id to make the same vectors again."""
        family = self.effective_family
        if family is None:
            return {}
        return {"family": family, "dim": self.dim, **({"adapter": self.adapter} if self.adapter else {})}


def model_info_of(encoder, dtype: Optional[str] = None, pooling: str = "last_token",
                  normalized: bool = True) -> ModelInfo:
    """The ModelInfo of a loaded encoder, as the indexer records it and readers compare it."""
    dtype = dtype or str(getattr(encoder, "dtype", "float32")).replace("torch.", "")
    recipe = getattr(encoder, "recipe", None)
    return ModelInfo(id=str(encoder.name), backbone=str(encoder.backbone), dim=int(encoder.dim), dtype=dtype,
                     weight_hash=getattr(encoder, "fingerprint", None), pooling=pooling, normalized=normalized,
                     family=getattr(encoder, "family", None), rule=None if recipe is None else recipe.rule,
                     adapter=getattr(recipe, "adapter", None))


def check_model(built: ModelInfo, used: ModelInfo) -> None:
    """Raise IndexMismatchError unless `used` makes vectors comparable to `built`'s.

    Weight hashes decide when both are known (the same weights may load from another
    path); otherwise the model id and, when both are recorded, the revision. dtype may
    differ (bf16 on GPU, fp32 on CPU give the same embeddings up to rounding).
    """
    fields = ["backbone", "dim", "pooling", "normalized"]
    diffs = []
    if used.family is not None and built.effective_family not in (None, used.family):
        hint = " (load it with family=%r, or rebuild the index)" % built.effective_family
        diffs.append(f"family: index has {built.effective_family!r}, encoder has {used.family!r}{hint}")
    if built.family is not None and used.family is not None:
        fields.append("adapter")  # a task adapter changes the prompts (jina-v4's text-matching)
    if built.weight_hash and used.weight_hash:
        fields.append("weight_hash")
    else:
        fields.append("id")
        if built.revision and used.revision:
            fields.append("revision")
    diffs += [f"{f}: index has {getattr(built, f)!r}, encoder has {getattr(used, f)!r}"
              for f in fields if getattr(built, f) != getattr(used, f)]
    if diffs:
        raise IndexMismatchError(f"the index was built with model {built.id!r} and cannot be searched "
                                 f"with {used.id!r}: " + "; ".join(diffs))
