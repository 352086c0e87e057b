"""A multi-vector encoder seen by the index as a single-vector one: MUVERA FDEs.

A FAISS index holds one vector per item, so a multi-vector index stores each item's MUVERA
fixed-dimensional encoding (`mmsearch.multivector.Muvera`) there and its token vectors beside
it; a search finds candidates by the query's FDE, then reranks them by exact MaxSim over the
tokens. `FdeEncoder` is that view of a `MultiVectorEncoder`: `dim` is the FDE's, `encode` and
`encode_requests` return FDEs (a candidate's is the document encoding, cluster means with
empty clusters filled; a query's keeps plain sums, as MUVERA defines them), and
`encode_requests_with_tokens` returns the token matrices as well, so nothing is encoded
twice. Everything else (name, family, fingerprint, instructions) is the wrapped encoder's.
"""
from __future__ import annotations

from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from ..multivector import Muvera, flatten_sets
from .base import EncodeInput, Instruction, Request


class FdeEncoder:
    """`encoder` (multi-vector) through the MUVERA map with arguments `fde` (k_sim, dim_proj,
    r_reps, seed; `index_format.FDE_DEFAULTS` where missing)."""

    multi_vector = True

    def __init__(self, encoder, fde: Mapping[str, int]):
        if isinstance(encoder, FdeEncoder):
            encoder = encoder.inner
        if not getattr(encoder, "multi_vector", False):
            raise InputError(f"{getattr(encoder, 'name', encoder)!r} is not a multi-vector encoder")
        self.inner = encoder
        self.fde = dict(fde)
        self.muvera = Muvera(encoder.token_dim, **self.fde)
        self.dim = self.muvera.encoding_dim
        self.token_dim = encoder.token_dim

    def __getattr__(self, name: str):  # the wrapped encoder's identity, instructions and formatting
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"FdeEncoder({self.inner.name!r}, fde={self.fde}, dim={self.dim})"

    def encode(self, inputs: Union[EncodeInput, Iterable[EncodeInput]], instruction: Instruction = None,
               batch_size: Optional[int] = None, show_progress: Optional[bool] = None,
               side: Optional[str] = None) -> np.ndarray:
        """FDEs (n, dim) float32 of the inputs (an Item is a candidate, anything else a query)."""
        return self.encode_requests(self.inner.to_requests(inputs, instruction, side), batch_size, show_progress)

    def encode_requests(self, requests: Sequence[Request], batch_size: Optional[int] = None,
                        show_progress: Optional[bool] = None) -> np.ndarray:
        return self.encode_requests_with_tokens(requests, batch_size, show_progress)[0]

    def encode_requests_with_tokens(self, requests: Sequence[Request], batch_size: Optional[int] = None,
                                    show_progress: Optional[bool] = None) -> Tuple[np.ndarray, List[np.ndarray]]:
        """(FDEs (n, dim) float32, token matrices (n_i, token_dim)) of the requests, in order."""
        tokens = self.inner.encode_multi_requests(requests, batch_size, show_progress)
        return self.fdes(tokens, [r.side == "candidate" for r in requests]), tokens

    def fdes(self, tokens: Sequence[np.ndarray], documents: Sequence[bool]) -> np.ndarray:
        """The FDE of each token matrix: a document's (`documents[i]`) or a query's."""
        out = np.empty((len(tokens), self.dim), dtype=np.float32)
        for is_doc in (True, False):
            idx = [i for i, d in enumerate(documents) if bool(d) == is_doc]
            if idx:
                flat, offsets = flatten_sets([tokens[i] for i in idx])
                encode = self.muvera.encode_documents if is_doc else self.muvera.encode_queries
                out[idx] = encode(flat, offsets)
        return out
