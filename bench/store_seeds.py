"""How much a compressed store's nDCG@10 moves with the codec's training draw alone.

The residual (``residual:B``) and PQ (``pq:M``) codecs are fitted to a seeded sample of
the index's tokens. This retrains the codec of one index for several seeds (sample and,
for PQ, k-means seed; the centroids, assignment, FAISS index and candidates stay the
same), encodes every token, and evaluates the same queries through the store's own exact
stage: the spread is the noise floor under any "within 0.005 of exact" comparison.

Usage::

    python bench/store_seeds.py --index out/bench/miracl/idx-ivfpq \\
        --dataset beir:miracl-de-dev --codecs pq96,pq64,r2 --seeds 3

``--index`` must be an IVF index with a float16 store (the tokens to encode).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from colbert_core.data import load_qrels, load_queries
from colbert_core.evaluation import evaluate
from colbert_core.evaluation.rundir import scored_docs
from colbert_core.index import load_index
from colbert_core.search import (
    CandidateScorer,
    SearchParams,
    default_params,
    encode_queries,
    load_query_encoder,
    ranked_list,
    search,
)
from colbert_core.tokenstore.pq import PQCodec
from colbert_core.tokenstore.residual import (
    CODEC_SAMPLE,
    ResidualCodec,
    ResidualStore,
    ivf_assignment,
    ivf_centroids,
    sample_rows,
    unit_scales,
)

CHUNK = 65_536


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="IVF index folder with a float16 store")
    p.add_argument("--dataset", default="beir:miracl-de-dev")
    p.add_argument("--split", default="test")
    p.add_argument("--codecs", default="pq96,pq64,r2", help="comma list: rB (residual:B), pqM")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()

    loaded = load_index(args.index)
    queries = load_queries(args.dataset, split=args.split)
    qrels = load_qrels(args.dataset, split=args.split)
    qv = encode_queries(load_query_encoder(loaded.meta.encoder), queries).vectors
    params = default_params(loaded.meta, SearchParams())
    centroids, assign = ivf_centroids(loaded.index), ivf_assignment(loaded.index)
    if centroids is None or assign is None:
        raise SystemExit(f"{args.index}: not an IVF index")
    tokens = np.asarray(loaded.store, dtype=np.float32)

    def ndcg(store: ResidualStore) -> float:
        results = search(dataclasses.replace(loaded, store=store), qv, params, CandidateScorer())
        ranked = {
            q.query_id: ranked_list(r.doc_index, r.scores, loaded.doc_ids)
            for q, r in zip(queries, results, strict=True)
        }
        return round(evaluate(scored_docs(ranked), qrels).measures["nDCG@10"], 4)

    for name in args.codecs.split(","):
        values = []
        for seed in range(args.seeds):
            sample, pick = sample_rows(tokens, CODEC_SAMPLE, seed + 1)  # as the build draws
            if name.startswith("pq"):
                codec = PQCodec.train(centroids, sample, assign[pick], int(name[2:]), seed)
            else:
                codec = ResidualCodec.train(centroids, sample, assign[pick], int(name[1:]))
            codes = np.concatenate(
                [codec.encode(tokens[lo : lo + CHUNK], assign[lo : lo + CHUNK])
                 for lo in range(0, len(tokens), CHUNK)]
            )  # fmt: skip
            scales = np.concatenate(
                [unit_scales(codec.decode(assign[lo : lo + CHUNK], codes[lo : lo + CHUNK]))
                 for lo in range(0, len(tokens), CHUNK)]
            )  # fmt: skip
            cids = assign.astype(np.uint16 if codec.n_centroids <= 1 << 16 else np.uint32)
            values.append(ndcg(ResidualStore(codec, cids, codes, scales)))
            print(json.dumps({"codec": name, "seed": seed, "nDCG@10": values[-1]}), flush=True)
        print(json.dumps({
            "codec": name, "nDCG@10": values, "mean": round(float(np.mean(values)), 4),
            "min": min(values), "max": max(values),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
