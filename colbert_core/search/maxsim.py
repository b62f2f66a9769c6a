"""Exact late-interaction (MaxSim) scoring.

``score(q, d) = sum_i max_j <q_i, d_j>`` over the query's token vectors ``q_i`` and the
document's token vectors ``d_j``. Two layouts are supported: padded batches with masks
(:func:`maxsim_padded`) and documents stored back to back as one flat token matrix with
offsets (:func:`maxsim_flat`), the layout of the on-disk token store.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..tokenstore.residual import ResidualStore


def maxsim_padded(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    docs: torch.Tensor,
    doc_mask: torch.Tensor,
) -> torch.Tensor:
    """Score every query against every document, padded layout.

    Parameters
    ----------
    queries
        ``(n_q, L_q, dim)`` query token vectors.
    query_mask
        ``(n_q, L_q)`` bool, True for real tokens.
    docs
        ``(n_d, L_d, dim)`` document token vectors.
    doc_mask
        ``(n_d, L_d)`` bool, True for real tokens.

    Returns
    -------
    torch.Tensor
        ``(n_q, n_d)`` float32 scores. A document without tokens contributes 0 per query
        token (it scores 0), so it ranks below any document with positive similarity.

    Examples
    --------
    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])            # 1 query, 2 tokens
    >>> d = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [9.0, 9.0]]])
    >>> dm = torch.tensor([[True, True], [True, False]])         # 2nd doc: 1 real token
    >>> maxsim_padded(q, torch.ones(1, 2, dtype=torch.bool), d, dm)
    tensor([[1.8000, 1.0000]])
    """
    if docs.shape[1] == 0:
        # Every document is empty (no token positions at all): all score 0. ``amax`` below
        # cannot reduce over a zero-size dimension.
        return torch.zeros(
            (queries.shape[0], docs.shape[0]), dtype=torch.float32, device=queries.device
        )
    sim = torch.einsum("qid,njd->qnij", queries.float(), docs.float())
    sim = sim.masked_fill(~doc_mask[None, :, None, :], float("-inf"))
    best = sim.amax(dim=-1)
    best = torch.where(torch.isinf(best), torch.zeros_like(best), best)
    best = best * query_mask[:, None, :].float()
    return best.sum(dim=-1)


def maxsim_flat(
    query_tokens: torch.Tensor,
    query_lengths: torch.Tensor,
    doc_tokens: torch.Tensor,
    doc_offsets: torch.Tensor,
) -> torch.Tensor:
    """Score queries against documents stored back to back.

    Parameters
    ----------
    query_tokens
        ``(sum(query_lengths), dim)`` all query token vectors, query after query.
    query_lengths
        ``(n_q,)`` int64 tokens per query.
    doc_tokens
        ``(T, dim)`` all document token vectors, document after document.
    doc_offsets
        ``(n_d + 1,)`` int64; document ``k`` owns rows ``doc_offsets[k]:doc_offsets[k+1]``.

    Returns
    -------
    torch.Tensor
        ``(n_q, n_d)`` float32 scores; empty documents score 0.

    Examples
    --------
    >>> qt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> dt = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    >>> maxsim_flat(qt, torch.tensor([2]), dt, torch.tensor([0, 2, 2, 3]))
    tensor([[1.8000, 0.0000, 1.0000]])
    """
    n_docs = int(doc_offsets.numel()) - 1
    n_q = int(query_lengths.numel())
    sim = query_tokens.float() @ doc_tokens.float().T  # (Q_tokens, T)
    lengths = (doc_offsets[1:] - doc_offsets[:-1]).long()
    owner = torch.repeat_interleave(torch.arange(n_docs), lengths)
    per_doc = torch.full((sim.shape[0], n_docs), float("-inf"), dtype=torch.float32)
    per_doc.scatter_reduce_(1, owner.expand(sim.shape[0], -1), sim, reduce="amax")
    per_doc = torch.where(torch.isinf(per_doc), torch.zeros_like(per_doc), per_doc)
    query_owner = torch.repeat_interleave(torch.arange(n_q), query_lengths.long())
    out = torch.zeros((n_q, n_docs), dtype=torch.float32)
    out.index_add_(0, query_owner, per_doc)
    return out


def maxsim_reference(query: np.ndarray, doc: np.ndarray) -> float:
    """One query against one document in plain numpy (the ground truth for tests)."""
    if doc.shape[0] == 0:
        return 0.0
    return float((query.astype(np.float64) @ doc.astype(np.float64).T).max(axis=1).sum())


def candidate_rows(offsets: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token row indices of documents ``cand`` (in order) and their token counts.

    >>> candidate_rows(np.array([0, 2, 2, 5]), np.array([0, 2]))
    (array([0, 1, 2, 3, 4]), array([2, 3]))
    """
    starts, lengths = offsets[cand], offsets[cand + 1] - offsets[cand]
    # A ramp restarted at each document's first token.
    shift = starts - segment_starts(lengths)
    rows = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(shift, lengths)
    return rows, lengths


def segment_starts(lengths: np.ndarray) -> np.ndarray:
    """Where each of segments stored back to back begins: ``(len(lengths),)`` int64.

    >>> segment_starts(np.array([2, 0, 3])).tolist()
    [0, 2, 2]
    """
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def rank_candidates(cand: np.ndarray, scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Order of candidates by descending score, ties by lower document index (first ``k``).

    >>> rank_candidates(np.array([5, 3, 9]), np.array([1.0, 2.0, 1.0])).tolist()
    [1, 0, 2]
    """
    order = np.lexsort((cand, -scores))
    return order if k is None else order[:k]


def maxsim_segments(
    query: np.ndarray,
    tokens: np.ndarray,
    lengths: np.ndarray,
    device: torch.device | None = None,
) -> np.ndarray:
    """One query against documents stored back to back (``lengths[i]`` tokens each).

    One matrix product, then ``np.maximum.reduceat`` over the contiguous token runs. On a
    CUDA ``device`` the product runs in float16. Empty documents score 0.

    >>> maxsim_segments(np.array([[1.0, 0.0]]), np.array([[1.0, 0], [0.5, 0], [0, 1]]),
    ...                 np.array([2, 0, 1]))
    array([1., 0., 0.], dtype=float32)
    """
    n = len(lengths)
    if n == 0 or tokens.shape[0] == 0:
        return np.zeros(n, dtype=np.float32)
    device = device or torch.device("cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)).to(device, dtype)
    t = torch.from_numpy(np.ascontiguousarray(tokens)).to(device).to(dtype)
    sim = (q @ t.T).float().cpu().numpy()
    return segment_maxsim(sim, lengths)


#: Float16 store: token rows per block of :class:`CandidateScorer` (its float32 copy,
#: 6 MB at d=384, stays in cache).
FLOAT16_BLOCK_TOKENS = 4096

#: Residual store: bytes of ``embedding_bag`` indices per block (int32, ``dim * nbits / 8
#: + 1`` per token: 42,799 tokens at 1 bit and d=384).
RESIDUAL_BLOCK_BYTES = 8 << 20


class CandidateScorer:
    """Exact MaxSim of queries against candidate documents of a flat token store, fast.

    Gathering ~60k float16 token rows per query into fresh arrays and converting them to
    float32 cost 4x the matrix product itself (page faults on every new buffer). This
    scorer reuses its buffers across calls and works in blocks of whole documents of about
    ``block_tokens`` rows: gather (float16) -> convert (float32, in cache) -> one product
    -> per-document maximum. ``None`` picks the measured block per store: 4,096 tokens of a
    float16 store, and :data:`RESIDUAL_BLOCK_BYTES` of table-row indices of a residual one
    (fewer, larger ``embedding_bag`` calls: 8x larger blocks cut the exact stage by 30%).
    Arithmetic is float32 throughout, so scores equal :func:`maxsim_segments` on the CPU.
    On a CUDA ``device`` it defers to :func:`maxsim_segments` (float16 product on the GPU).

    Not thread-safe: one scorer per thread (search actors are single-threaded).

    Examples
    --------
    >>> tokens = np.array([[1, 0], [0.5, 0.75], [0, 1]], dtype=np.float16)
    >>> scorer = CandidateScorer(block_tokens=1)
    >>> scorer.score(np.array([[1.0, 0.0], [0.0, 1.0]]), tokens, np.array([0, 2, 2, 3]),
    ...              np.array([0, 1, 2]))
    array([1.75, 0.  , 1.  ], dtype=float32)
    """

    def __init__(self, block_tokens: int | None = None, device: torch.device | None = None):
        if block_tokens is not None and block_tokens <= 0:
            raise ValueError(f"block_tokens must be positive, got {block_tokens}")
        self.block_tokens = block_tokens
        self.device = device or torch.device("cpu")
        self._half = torch.empty(0)
        self._full = torch.empty(0)
        self._bags = torch.empty((0, 0), dtype=torch.int32)

    def score(
        self, query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray, cand: np.ndarray
    ) -> np.ndarray:
        """Scores of ``query`` ``(n_q, dim)`` against documents ``cand`` ``(n,)``.

        ``tokens`` is the ``(T, dim)`` store (float16 or float32, memory-mapped or not) and
        document ``k`` owns rows ``offsets[k]:offsets[k+1]``. Returns ``(n,)`` float32.
        """
        cand = np.asarray(cand, dtype=np.int64)
        if isinstance(tokens, ResidualStore):
            return self._score_residual(query, tokens, offsets, cand)
        if self.device.type == "cuda":
            rows, lengths = candidate_rows(offsets, cand)
            return maxsim_segments(query, tokens[rows], lengths, self.device)
        out = np.zeros(len(cand), dtype=np.float32)
        if len(cand) == 0:
            return out
        with warnings.catch_warnings():
            # A read-only memmap: torch warns that writes would be undefined; we only read.
            warnings.simplefilter("ignore", UserWarning)
            store = torch.from_numpy(np.asarray(tokens))
        q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
        lengths = offsets[cand + 1] - offsets[cand]
        for lo, hi in consecutive_groups(lengths, self.block_tokens or FLOAT16_BLOCK_TOKENS):
            rows, seg = candidate_rows(offsets, cand[lo:hi])
            n = rows.size
            if n == 0:
                continue
            half, full = self._buffers(n, store.shape[1], store.dtype)
            torch.index_select(store, 0, torch.from_numpy(rows), out=half)
            full.copy_(half)
            out[lo:hi] = segment_maxsim((q @ full.T).numpy(), seg)
        return out

    def score_best(
        self,
        query: np.ndarray,
        tokens: np.ndarray | ResidualStore,
        offsets: np.ndarray,
        cand: np.ndarray,
        full_scores: int | None,
        table: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(documents, their exact scores)``: every candidate, or the ``full_scores``
        most promising ones.

        With a residual store and ``full_scores < len(cand)``, the candidates are first
        ranked by :func:`centroid_maxsim` (PLAID's centroid interaction: every token
        replaced by its centroid, one table row per distinct centroid of a document
        instead of ``dim * nbits / 8 + 1`` per token) and only the best ``full_scores``
        (ties: lower document index) are scored exactly; the others are dropped, as PLAID
        drops them. Documents come back in ``cand``'s order. A float16 store has no
        centroids: every candidate is scored. ``table`` is the query's lookup table if
        the caller built it already (:meth:`tables`).
        """
        cand = np.asarray(cand, dtype=np.int64)
        if not isinstance(tokens, ResidualStore):
            return cand, self.score(query, tokens, offsets, cand)
        if full_scores is not None and len(cand) > full_scores:
            if table is None:
                table = tokens.lookup_table(query)
            approx = centroid_maxsim(table, tokens, offsets, cand)
            cand = cand[np.sort(rank_candidates(cand, approx, full_scores))]
        return cand, self._score_residual(query, tokens, offsets, cand, table)

    def tables(
        self, store: np.ndarray | ResidualStore, queries: Sequence[np.ndarray]
    ) -> Iterator[torch.Tensor | None]:
        """Each query's lookup table for :meth:`score_best` (built for many queries at
        once, :meth:`ResidualStore.lookup_tables`), or ``None`` for a float16 store and on
        a CUDA ``device`` (which decodes instead; the centroid pass builds its own)."""
        if isinstance(store, ResidualStore) and self.device.type != "cuda":
            return store.lookup_tables(queries)
        return iter([None] * len(queries))

    def _score_residual(
        self,
        query: np.ndarray,
        store: ResidualStore,
        offsets: np.ndarray,
        cand: np.ndarray,
        table: torch.Tensor | None = None,
    ) -> np.ndarray:
        """MaxSim over the stored (decoded) vectors without decoding them.

        Per block of candidate tokens, ``<q_i, c + r> = <q_i, c> + sum_p T[p, byte_p]_i``
        for every query token at once: one ``embedding_bag`` (sum mode, FBGEMM's kernel)
        over the query's lookup table (``table``, computed here unless given),
        ``dim * nbits / 8 + 1`` rows of ``n_q`` floats per token instead of a decode and
        ``dim`` multiply-adds per query token. Tokens are taken in the padded pieces of
        :func:`piece_rows`, so the per-document maximum is :func:`max_per_segment`.
        """
        out = np.zeros(len(cand), dtype=np.float32)
        if len(cand) == 0 or len(query) == 0:  # a sum over no query tokens, as on float16
            return out
        if self.device.type == "cuda":
            rows, lengths = candidate_rows(offsets, cand)
            return maxsim_segments(query, store.decode(rows), lengths, self.device)
        if table is None:
            table = store.lookup_table(query)
        width = store.codec.code_bytes + 1
        block = self.block_tokens or max(1, RESIDUAL_BLOCK_BYTES // (4 * width))
        lengths = offsets[cand + 1] - offsets[cand]
        for lo, hi in consecutive_groups(lengths, block):
            rows, counts = piece_rows(offsets[cand[lo:hi]], lengths[lo:hi])
            if rows.size == 0:
                continue
            bags = store.bag_indices(rows, self._bag_buffer(rows.size, width))
            sim = torch.nn.functional.embedding_bag(bags, table, mode="sum")  # (n, n_q)
            sim.mul_(store.token_scales(rows))
            out[lo:hi] = max_per_segment(sim, counts).sum(axis=1)
        return out

    def _bag_buffer(self, n: int, width: int) -> torch.Tensor:
        if self._bags.shape[0] < n or self._bags.shape[1:] != (width,):
            self._bags = torch.empty((n, width), dtype=torch.int32)
        return self._bags[:n]

    def _buffers(self, n: int, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._half.dtype != dtype or self._half.shape[0] < n or self._half.shape[1:] != (dim,):
            size = max(n, self.block_tokens or FLOAT16_BLOCK_TOKENS)
            self._half = torch.empty((size, dim), dtype=dtype)
            self._full = torch.empty((size, dim), dtype=torch.float32)
        return self._half[:n], self._full[:n]


def centroid_maxsim(
    table: torch.Tensor, store: ResidualStore, offsets: np.ndarray, cand: np.ndarray
) -> np.ndarray:
    """MaxSim of a query against documents ``cand`` whose tokens are replaced by their
    centroids: ``sum_i max_t <q_i, c_t>`` ``(len(cand),)`` float32; empty documents score 0.

    ``table`` is the query's :meth:`ResidualStore.lookup_table`, whose last rows hold
    ``<q_i, c>``. Each document's distinct centroids
    (:meth:`ResidualStore.document_centroids`) select one row each; the maximum is the
    same as over every token's centroid.
    """
    ids, bounds = store.document_centroids(offsets)
    rows, counts = piece_rows(bounds[cand], bounds[cand + 1] - bounds[cand])
    centroid_rows = table[store.codec.code_bytes * 256 :]
    values = torch.index_select(centroid_rows, 0, torch.from_numpy(ids[rows].astype(np.int64)))
    return max_per_segment(values, counts).sum(axis=1)


#: Rows per piece in :func:`piece_rows` (a power of two): short enough that padding each
#: document's last piece costs little, long enough that the maximum over a document's
#: pieces (a ``reduceat``) is a small part of :func:`max_per_segment`.
PIECE_ROWS = 16


def piece_rows(
    starts: np.ndarray, lengths: np.ndarray, piece: int = PIECE_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``starts[k] ... starts[k] + lengths[k] - 1`` of each segment, cut into pieces of
    ``piece`` rows, each segment's last piece padded by repeating its last row (repeats
    leave a maximum unchanged): ``((n_pieces * piece,) int64, pieces per segment)``.

    >>> rows, counts = piece_rows(np.array([10, 20, 30]), np.array([3, 0, 1]), 2)
    >>> rows.tolist(), counts.tolist()
    ([10, 11, 12, 12, 30, 30], [2, 0, 1])
    """
    if piece < 1 or piece & (piece - 1):
        raise ValueError(f"piece must be a power of two, got {piece}")
    lengths = np.asarray(lengths, dtype=np.int64)
    counts = -(-lengths // piece)
    owner = np.repeat(np.arange(len(lengths)), counts)
    rank = np.arange(int(counts.sum())) - np.repeat(segment_starts(counts), counts)
    within = np.minimum(rank[:, None] * piece + np.arange(piece), (lengths[owner] - 1)[:, None])
    return (np.asarray(starts, dtype=np.int64)[owner][:, None] + within).ravel(), counts


def max_per_segment(values: torch.Tensor, counts: np.ndarray) -> np.ndarray:
    """Element-wise maximum over each segment's rows of ``values`` ``(n_pieces * piece,
    n)``, laid out by :func:`piece_rows` -> ``(len(counts), n)`` float32; 0 for an empty
    segment.

    A halving tree of ``torch.maximum`` within pieces, then one ``reduceat`` over each
    segment's pieces: a ``reduceat`` over every row and ``embedding_bag``'s max mode take
    about twice as long on rows of ~22 floats, ``scatter_reduce`` as long
    (bench/RESULTS.md).

    >>> v = torch.tensor([[1.0], [3.0], [2.0], [2.0], [5.0], [5.0]])
    >>> max_per_segment(v, np.array([2, 0, 1])).tolist()
    [[3.0], [0.0], [5.0]]
    """
    n_pieces = int(counts.sum())
    out = np.zeros((len(counts), values.shape[1]), dtype=np.float32)
    if n_pieces == 0:
        return out
    blocks = values.view(n_pieces, -1, values.shape[1])
    while blocks.shape[1] > 1:
        half = blocks.shape[1] // 2
        blocks = torch.maximum(blocks[:, :half], blocks[:, half:])
    nonempty = counts > 0
    out[nonempty] = np.maximum.reduceat(
        blocks[:, 0].numpy(), segment_starts(counts)[nonempty], axis=0
    )
    return out


def segment_maxsim(sim: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Similarities ``(n_q, tokens)`` of query tokens to documents stored back to back
    (``seg[k]`` tokens each) -> each document's MaxSim ``(len(seg),)`` float32; empty
    documents score 0. Tokens run along the rows, where ``reduceat`` is fast; residual
    stores, whose sums come out token-major, use :func:`max_per_segment`.

    >>> segment_maxsim(np.array([[1., .5, 0.], [0., 0., 1.]]), np.array([2, 0, 1]))
    array([1., 0., 1.], dtype=float32)
    """
    nonempty = seg > 0
    best = np.zeros((sim.shape[0], len(seg)), dtype=np.float32)
    best[:, nonempty] = np.maximum.reduceat(sim, segment_starts(seg)[nonempty], axis=1)
    return best.sum(axis=0)


def consecutive_groups(lengths: Sequence[int] | np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Split items into consecutive ``(start, end)`` runs of at most ``limit`` in total.

    An item longer than ``limit`` gets a run of its own.

    >>> consecutive_groups(np.array([3, 3, 3, 9, 1]), 6)
    [(0, 2), (2, 3), (3, 4), (4, 5)]
    """
    blocks: list[tuple[int, int]] = []
    lo, acc = 0, 0
    for i, n in enumerate(np.asarray(lengths).tolist()):
        if acc and acc + n > limit:
            blocks.append((lo, i))
            lo, acc = i, 0
        acc += n
    if lo < len(lengths):
        blocks.append((lo, len(lengths)))
    return blocks


def calibration_ms(repeats: int = 9, seed: int = 0) -> float:
    """Median milliseconds of a fixed exact-MaxSim workload in this process.

    32 query tokens against 256 documents of 64 tokens (d=128, float16 store), the shape of
    the search's exact stage. Latencies divided by it compare across runs on shared, noisy
    machines: both move together when the machine is slower.

    >>> calibration_ms(repeats=3) > 0
    True
    """
    import time

    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((256 * 64, 128)).astype(np.float16)
    offsets = np.arange(0, 256 * 64 + 1, 64, dtype=np.int64)
    query = rng.standard_normal((32, 128)).astype(np.float32)
    cand = np.arange(256, dtype=np.int64)
    scorer = CandidateScorer()
    scorer.score(query, tokens, offsets, cand)  # buffers allocated outside the timing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.score(query, tokens, offsets, cand)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))
