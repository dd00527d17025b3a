"""The engine's row factorization (pipeline.rules.engine._factorize) against numpy's own
row-wise unique, narrow keys and keys wider than 62 bits alike."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.rules.engine import _factorize, _Scratch


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 300), sizes=st.lists(st.sampled_from([1, 2, 3, 4, 17, 1000, 70_000, 2**20]), min_size=1, max_size=9),
       constant=st.lists(st.booleans(), min_size=9, max_size=9), seed=st.integers(0, 2**32 - 1))
def test_factorize_matches_row_unique(n, sizes, constant, seed):
    rng = np.random.default_rng(seed)
    # few distinct rows, as in mail logs, but codes spread over the whole range of each size
    pool = [rng.integers(0, s, 5).astype(np.int32) for s in sizes]
    pick = rng.integers(0, 5, (n, len(sizes)))
    codes = [None if constant[i] and sizes[i] == 1 else pool[i][pick[:, i]] for i in range(len(sizes))]
    inverse, per_id, m = _factorize(codes, sizes, n, _Scratch())
    assert inverse.dtype == np.intp and len(inverse) == n
    live = [c for c in codes if c is not None]
    rows = np.stack(live, axis=1) if live and n else np.zeros((n, 0), dtype=np.int32)
    expected = len(np.unique(rows, axis=0)) if n else 0
    assert m == expected
    for c, got in zip(codes, per_id, strict=True):
        if c is None or got is None:
            assert c is None or len(set(c.tolist())) <= 1
            continue
        assert np.array_equal(got[inverse], c)  # every row's codes come back from its id


def test_factorize_wide_keys_fall_back_to_representatives():
    n = 1000
    rng = np.random.default_rng(1)
    sizes = [2**30, 2**30, 2**30]  # 90 bits together
    codes = [rng.integers(0, 2**30, 4).astype(np.int32)[rng.integers(0, 4, n)] for _ in sizes]
    inverse, per_id, m = _factorize(codes, sizes, n, _Scratch())
    assert m == len(np.unique(np.stack(codes, axis=1), axis=0))
    for c, got in zip(codes, per_id, strict=True):
        assert np.array_equal(got[inverse], c)
