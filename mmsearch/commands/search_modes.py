"""`--mode`, `--fusion`, `--alpha`, `--rrf-k`: how `mmsearch search` ranks (see
`mmsearch.query.hybrid`); shared by the commands that search."""
from __future__ import annotations

from ._common import UsageError

MODES = ("vector", "lexical", "hybrid")


def add_mode_arguments(p) -> None:
    g = p.add_argument_group("lexical and hybrid search", "needs an index built with --text-fields")
    g.add_argument("--mode", choices=MODES, default="vector",
                   help="vector (embeddings, default), lexical (BM25 over the text fields) or hybrid (both, fused)")
    g.add_argument("--fusion", choices=("rrf", "score"), default=None,
                   help="hybrid: rrf (reciprocal rank fusion, default) or score (min-max normalised scores "
                        "weighted by --alpha; the default when --alpha is given)")
    g.add_argument("--alpha", type=float, default=None,
                   help="hybrid score fusion: weight of the vector arm in [0, 1] (1: vector only; default 0.5)")
    g.add_argument("--rrf-k", type=float, default=None, help="hybrid rrf: the k of 1/(k + rank) (default 60)")


def mode_options(args) -> dict:
    """The Index.search keywords of the mode arguments (only those given)."""
    if args.mode != "hybrid" and (args.fusion or args.alpha is not None or args.rrf_k is not None):
        raise UsageError(f"--fusion, --alpha and --rrf-k set how --mode hybrid fuses; got --mode {args.mode}")
    opts = {"mode": args.mode, "fusion": args.fusion, "alpha": args.alpha, "rrf_k": args.rrf_k}
    return {k: v for k, v in opts.items() if v is not None}
