"""MUVERA fixed-dimensional encodings (Dhulipala et al., arXiv 2405.19504).

Each set of token vectors becomes one vector whose inner product with a query's encoding
approximates Chamfer (MaxSim) similarity, so an ordinary FAISS index finds candidates for
exact MaxSim reranking. The encoding is bit-identical to fastembed's
`fastembed/postprocess/muvera.py` (tests/test_muvera.py compares the bits), so FDEs built by
either library are interchangeable:

- draws from `np.random.default_rng(seed)`: one `normal(size=(dim, k_sim))` per repetition,
  then `choice([-1, 1], size=(r_reps, dim, dim_proj))`;
- a vector's cluster in repetition r is `(x @ H_r > 0) @ (1 << arange(k_sim))`;
- per cluster, the float64 sum of its vectors in token order; documents divide by the count
  and fill each empty cluster with the first vector of the nearest non-empty cluster
  (Hamming distance between cluster ids, ties to the lower id); queries keep plain sums;
- `(1 / sqrt(dim_proj)) * (centers @ S_r)` when dim_proj < dim, flattened, concatenated.

fastembed loops over tokens in Python, one document at a time. Here a batch of documents and
all its tokens go through numpy at once; the sums stay sequential in token order (a stable
sort by cluster, then `np.add.reduceat`, which adds row after row), which is what keeps the
result bit-identical. One caveat: the cluster-id matmul covers a batch instead of one
document, so BLAS may round `x @ H` differently in the last bit; a sign, and hence a cluster,
can only differ for a vector within ~1e-16 of a hyperplane.
"""
from __future__ import annotations

import numpy as np

from .sets import check_sets

# Tokens per batch: bounds the three float64 working copies (tokens * dim * 8 bytes each).
_BATCH_TOKENS = 1 << 14


def draw_parameters(rng: np.random.Generator, dim: int, k_sim: int, dim_proj: int, r_reps: int):
    """(hyperplanes `(R, dim, k_sim)`, ±1 projections `(R, dim, dim_proj)` int64), drawn with
    fastembed's generator calls in fastembed's order: the draws are part of the contract."""
    hyperplanes = np.stack([rng.normal(size=(dim, k_sim)) for _ in range(r_reps)])
    return hyperplanes, rng.choice([-1, 1], size=(r_reps, dim, dim_proj))


def nearest_occupied(empty: np.ndarray, hamming: np.ndarray) -> np.ndarray:
    """For sets' empty-cluster masks `(n, B)`: each cluster's nearest occupied cluster by the
    Hamming distance `(B, B)` between ids, ties to the lower id (argmin's first hit)."""
    masked = np.where(empty[:, None, :], hamming.max() + 1, hamming[None])
    return np.argmin(masked, axis=2)


class Muvera:
    """The FDE map for `dim`-dimensional token vectors; `encoding_dim` is
    `r_reps * 2**k_sim * dim_proj` (10,240 with the defaults, which are fastembed's)."""

    def __init__(self, dim: int, k_sim: int = 5, dim_proj: int = 16, r_reps: int = 20, seed: int = 42):
        if dim_proj > dim:
            raise ValueError(f"dim_proj={dim_proj} must be <= dim={dim} (a projection cannot add dimensions)")
        if not 1 <= k_sim <= 30 or r_reps < 1 or dim_proj < 1:
            raise ValueError(f"need 1 <= k_sim <= 30, r_reps >= 1, dim_proj >= 1; "
                             f"got k_sim={k_sim}, r_reps={r_reps}, dim_proj={dim_proj}")
        self.dim, self.k_sim, self.dim_proj, self.r_reps, self.seed = dim, k_sim, dim_proj, r_reps, seed
        self.hyperplanes, self.projections = draw_parameters(np.random.default_rng(seed), dim, k_sim,
                                                             dim_proj, r_reps)
        self._projections = self.projections.astype(np.float64)  # same values; float BLAS path
        self._all_hyperplanes = np.ascontiguousarray(self.hyperplanes.transpose(1, 0, 2).reshape(dim, -1))
        self._bit_values = 1 << np.arange(k_sim)
        ids = np.arange(self.n_clusters)
        self._hamming = np.array([[bin(a ^ b).count("1") for b in ids] for a in ids])

    @property
    def n_clusters(self) -> int:
        return 2 ** self.k_sim

    @property
    def encoding_dim(self) -> int:
        return self.r_reps * self.n_clusters * (self.dim_proj if self.dim_proj < self.dim else self.dim)

    def encode_documents(self, tokens: np.ndarray, offsets: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Document FDEs `(n, encoding_dim)` for the sets `tokens[offsets[i]:offsets[i+1]]`
        (cluster means, empty clusters filled). dtype float64 gives fastembed's exact values."""
        return self._encode(tokens, offsets, documents=True, dtype=dtype)

    def encode_queries(self, tokens: np.ndarray, offsets: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Query FDEs `(n, encoding_dim)` (plain cluster sums, no fill)."""
        return self._encode(tokens, offsets, documents=False, dtype=dtype)

    def encode_document(self, vectors: np.ndarray, dtype=np.float32) -> np.ndarray:
        """One document's `(n_tokens, dim)` vectors -> its FDE `(encoding_dim,)`."""
        return self.encode_documents(vectors, np.array([0, len(vectors)]), dtype)[0]

    def encode_query(self, vectors: np.ndarray, dtype=np.float32) -> np.ndarray:
        """One query's `(n_tokens, dim)` vectors -> its FDE `(encoding_dim,)`."""
        return self.encode_queries(vectors, np.array([0, len(vectors)]), dtype)[0]

    def _encode(self, tokens, offsets, documents: bool, dtype) -> np.ndarray:
        tokens = np.asarray(tokens)
        offsets = check_sets(tokens, offsets)
        if tokens.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dim {self.dim}, got shape {tokens.shape}")
        n = len(offsets) - 1
        out = np.empty((n, self.encoding_dim), dtype=dtype)
        start = 0
        while start < n:
            # whole sets per batch, at least one
            stop = max(start + 1, int(np.searchsorted(offsets, offsets[start] + _BATCH_TOKENS, "right")) - 1)
            stop = min(stop, n)
            lo, hi = offsets[start], offsets[stop]
            out[start:stop] = self._encode_batch(tokens[lo:hi], offsets[start:stop + 1] - lo, documents)
            start = stop
        return out

    def _encode_batch(self, tokens: np.ndarray, offsets: np.ndarray, documents: bool) -> np.ndarray:
        """FDEs (float64) of one batch of sets: one matmul for every repetition's cluster ids,
        then per repetition one stable sort and one segmented sum over all sets at once."""
        n, B, R = len(offsets) - 1, self.n_clusters, self.r_reps
        # float64 as fastembed (numpy upcasts its float32 @ float64); exact for any float input
        x = tokens.astype(np.float64)
        bits = (x @ self._all_hyperplanes > 0).reshape(len(x), R, self.k_sim)
        x_t = np.ascontiguousarray(x.T)  # (dim, N): per-cluster sums run along contiguous rows
        cluster = bits @ self._bit_values                                   # (N, R)
        owner_base = np.repeat(np.arange(n) * B, np.diff(offsets))          # set index * B per token
        out = np.empty((n, R, self.encoding_dim // R))
        for r in range(R):
            centers = self._cluster_centers(x_t, owner_base + cluster[:, r], n, documents)
            if self.dim_proj < self.dim:
                centers = (1 / np.sqrt(self.dim_proj)) * (centers @ self._projections[r])
            out[:, r] = centers.reshape(n, -1)
        return out.reshape(n, -1)

    def _cluster_centers(self, x_t: np.ndarray, segment: np.ndarray, n: int, documents: bool) -> np.ndarray:
        """(n * B, dim) float64 cluster sums (queries) or means with empty clusters filled
        (documents) of the tokens `x_t` (float64, transposed: (dim, N)); `segment` = set * B +
        cluster, per token."""
        B = self.n_clusters
        order = np.argsort(segment, kind="stable")  # stable: token order kept inside a cluster
        seg_sorted = segment[order]
        starts = np.flatnonzero(np.r_[True, seg_sorted[1:] != seg_sorted[:-1]])
        present = seg_sorted[starts]
        centers = np.zeros((n * B, len(x_t)))
        # Along contiguous rows, reduceat adds element after element (no pairwise summation),
        # as fastembed's `+=` loop does, and ~8x faster than reducing along axis 0.
        centers[present] = np.add.reduceat(np.take(x_t, order, axis=1), starts, axis=1).T
        if not documents:
            return centers
        counts = np.bincount(segment, minlength=n * B)
        centers[present] /= counts[present][:, None]
        empty = (counts == 0).reshape(n, B)
        if empty.any():
            first_token = np.zeros(n * B, dtype=np.int64)
            first_token[present] = order[starts]  # each cluster's first token, in token order
            nearest = nearest_occupied(empty, self._hamming) + (np.arange(n) * B)[:, None]
            centers[empty.ravel()] = x_t[:, first_token[nearest[empty]]].T
        return centers
