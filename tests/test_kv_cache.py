"""KV cache: forwards leave K/V pending; requests commit the prefix they keep; crop."""

import pytest
import torch

from sglang_trimode.reference.kv_cache import KVCache


def kv(b, q, value):
    return torch.full((b, 1, q, 2), float(value)).add(torch.arange(q).view(1, 1, q, 1))


def test_commit_appends_only_kept_tokens_per_request():
    cache = KVCache(
        num_layers=2, batch=3, num_kv_heads=1, head_dim=2, capacity=8, dtype=torch.float32
    )
    assert cache.begin(torch.tensor([0, 2])) == 0
    for layer in range(2):
        k, v = cache.update(kv(2, 4, 10), kv(2, 4, 20), layer)
        assert k.shape == (2, 1, 4, 2)  # nothing cached yet: the segment alone
    cache.commit(0, 3)  # row 0 keeps its first three tokens
    cache.commit(1, 2)  # row 2 keeps its first two
    cache.end()
    assert cache.lengths.tolist() == [3, 0, 2]
    assert cache.k[1][0, 0, :3, 0].tolist() == [10, 11, 12]
    assert cache.k[0][2, 0, :2, 0].tolist() == [10, 11]
    assert cache.v[0][2, 0, :2, 0].tolist() == [20, 21]
    # the next forward sees each row's committed prefix padded to the widest row
    assert cache.begin(torch.tensor([2, 0])) == 3
    k, _ = cache.update(kv(2, 1, 30), kv(2, 1, 40), 0)
    cache.update(kv(2, 1, 30), kv(2, 1, 40), 1)
    assert k.shape == (2, 1, 4, 2)
    assert k[0, 0, :2, 0].tolist() == [10, 11] and k[0, 0, 3, 0] == 30
    cache.commit(0, 0)  # a draft forward keeps nothing
    assert cache.lengths.tolist() == [3, 0, 2]


def test_crop_and_capacity():
    cache = KVCache(1, 1, 1, 2, capacity=4, dtype=torch.float32)
    cache.begin(torch.tensor([0]))
    cache.update(kv(1, 4, 0), kv(1, 4, 0), 0)
    cache.commit(0, 4)
    cache.crop(0, 1)
    assert cache.lengths.tolist() == [1]
    with pytest.raises(ValueError, match="crop length 2 outside"):
        cache.crop(0, 2)
    cache.begin(torch.tensor([0]))
    cache.update(kv(1, 4, 0), kv(1, 4, 0), 0)
    with pytest.raises(RuntimeError, match="is full"):
        cache.commit(0, 4)


def test_kernels_ship_inside_the_package():
    import importlib.util

    spec = importlib.util.find_spec("sglang_trimode.kernels")
    assert spec is not None and spec.origin.replace("\\", "/").endswith("kernels/__init__.py")
