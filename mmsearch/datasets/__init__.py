"""Synthetic collections with known ground truth, in the M-BEIR, MMEB and MMEB-train
layouts (see `mmsearch.datasets.synthetic`). Depends only on Pillow, numpy and pyarrow."""
from .synthetic import DocOptions, Holdout, SceneOptions, SyntheticOptions, make

__all__ = ["make", "SyntheticOptions", "Holdout", "SceneOptions", "DocOptions"]
