"""Deterministic synthetic collections with known ground truth, in the M-BEIR, MMEB
and MMEB-train layouts.

    from mmsearch.datasets.synthetic import make
    summary = make("out/mbeir", format="mbeir", size=200, seed=1, holdout=0.2)

Tasks (M-BEIR pair, MMEB dataset):

- ``t2i``: caption -> image of a scene of shapes (``synthshapes_task0``, SynthShapes_t2i)
- ``i2t``: image -> caption (``synthshapes_task3``, SynthShapes_i2t)
- ``composed``: image + "Make the square blue." -> the edited image, with the source
  image in the pool as a hard negative (``synthedit_task7``, SynthEdit)
- ``vqa``: image + "What colour is the circle?" -> "Red." (``synthvqa_task6``, SynthVQA)
- ``doc``: question -> the document page that answers it (``synthdocs_task0``, SynthDocs)

``size`` is the number of queries per task and split (``split_sizes`` overrides per
split). The same options give byte-identical files; the layouts are views of one
generated collection, so a seed gives the same scenes in every format. Changing the
tasks or splits generated may change the others' items (scenes are unique across
the collection). ``holdout`` keeps colour x shape pairs out of train/val and puts
one in every test scene (see `Holdout`).

A train / evaluate recipe with unseen combinations (the held-out pairs depend only
on the holdout fraction and its own seed, not on the data seed)::

    make("data/train", format="train", size=20000, seed=1, holdout=0.2)          # never shows them
    make("data/eval", format="mbeir", split_sizes={"val": 500, "test": 500},
         splits=("val", "test"), seed=2, holdout=0.2)
    # query/val: held-in scenes; query/test: every scene has a held-out pair
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

from ..errors import InputError
from .collection import Collection, generate
from .docs import DocOptions
from .mbeir import OWNED as MBEIR_OWNED
from .mbeir import write_mbeir
from .mmeb import owned as mmeb_owned
from .mmeb import write_mmeb, write_train
from .options import FORMATS, Holdout, SyntheticOptions
from .output import Output, Progress, prepare_root
from .scenes import SceneOptions

__all__ = ["make", "generate", "SyntheticOptions", "Holdout", "SceneOptions", "DocOptions", "FORMATS"]


def make(out: Union[str, Path], options: Optional[SyntheticOptions] = None, *,
         progress: Optional[Progress] = None, **kwargs) -> dict:
    """Generate a collection and write it under ``out`` in ``options.format``; returns a
    summary (counts, pools, held-out pairs, files, seconds).

    Options come as a `SyntheticOptions`, as keyword arguments of it, or both (the
    keywords override). ``holdout`` also accepts a fraction or "red:circle,..." text.
    ``progress(done, total)`` is called after each image is written.
    """
    start = time.perf_counter()
    try:
        options = replace(options or SyntheticOptions(), **kwargs) if kwargs else (options or SyntheticOptions())
    except TypeError as e:
        raise InputError(f"unknown option for make(): {e}; see SyntheticOptions") from None
    root = Path(out)
    owned = MBEIR_OWNED if options.format == "mbeir" else mmeb_owned(options.format)
    collection = generate(options)
    prepare_root(root, owned, options.overwrite)
    output = Output(root, options, progress)
    writer = {"mbeir": write_mbeir, "mmeb": write_mmeb, "train": write_train}[options.format]
    details = writer(collection, output)
    output.write_text("README.md", readme(collection))
    return {"format": options.format, "root": str(root), "seed": options.seed, "image_size": options.image_size,
            "tasks": list(options.tasks), "splits": options.sizes(),
            "held_out_pairs": [list(p) for p in collection.held_out],
            "held_out_splits": list(options.holdout.splits) if options.holdout else [],
            **details, "images": output.images, "files": output.files,
            "seconds": round(time.perf_counter() - start, 3)}


def readme(coll: Collection) -> str:
    """A short description of what was generated and how, written beside the data."""
    o = coll.options
    held = ", ".join(f"{c} {s}" for c, s in coll.held_out) or "none"
    layout = {"mbeir": "M-BEIR (UniIR): query/, cand_pool/local|global/, qrels/, instructions/, mbeir_images/",
              "mmeb": "MMEB-eval (VLM2Vec): <Dataset>/<split> tables; image paths relative to images/",
              "train": "MMEB-train (VLM2Vec): <Dataset>/<split> and <split> tables; image paths relative to here"}
    return "\n".join([
        "# mmsearch synthetic collection", "",
        f"- layout: {layout[o.format]}",
        f"- tasks: {', '.join(o.tasks)}; queries per split: "
        + ", ".join(f"{s} {n}" for s, n in o.sizes().items()),
        f"- seed {o.seed}, images {o.image_size} px, pages {o.page_size} px ({o.doc.style} style)",
        f"- shapes: {', '.join(o.scene.shapes)}; colours: {', '.join(o.scene.colours)}",
        f"- held-out colour-shape pairs: {held}"
        + (f" (only in {', '.join(o.holdout.splits)})" if coll.held_out else ""),
        *(["- SynthDocTitles/<split>: each page question with the page's title as text (--doc-titles)"]
          if o.doc_titles else []),
        "", "Generated by `mmsearch datasets make synthetic` (mmsearch.datasets.synthetic.make); "
        "the same options rebuild it byte for byte.", ""])
