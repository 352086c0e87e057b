"""Synthetic collections with known ground truth, in the M-BEIR, MMEB and MMEB-train
layouts (see `mmsearch.datasets.synthetic`). Depends only on Pillow, numpy and pyarrow."""
from .synthetic import DocOptions, Holdout, SceneOptions, SyntheticOptions, make
from .vidore import VidoreOptions, make_vidore

__all__ = ["make", "SyntheticOptions", "Holdout", "SceneOptions", "DocOptions", "make_vidore", "VidoreOptions"]
