"""GPU kNN against the CPU kernel on the same data."""

import numpy as np
import pytest

from autoweld import native

pytestmark = pytest.mark.gpu


def rng_matrix(rows, cols, seed):
    return np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)


@pytest.mark.parametrize(
    ("nq", "nb", "dim", "k"),
    [(1, 1, 1, 1), (70, 5, 3, 5), (130, 1000, 17, 1), (257, 4099, 64, 16), (300, 5000, 1536, 3)],
)
def test_gpu_knn_matches_cpu(cuda, nq, nb, dim, k):
    queries, bank = rng_matrix(nq, dim, 1), rng_matrix(nb, dim, 2)
    cpu_d, cpu_i = native.knn(queries, bank, k, threads=1)
    gpu_d, gpu_i = native.GpuKnnIndex(bank).search(queries, k)
    assert gpu_d.dtype == np.float32 and gpu_i.dtype == np.int64
    np.testing.assert_allclose(gpu_d, cpu_d, rtol=1e-4, atol=1e-4)
    # indices agree wherever the CPU distances are not a near tie
    gaps = np.diff(np.concatenate([cpu_d, np.full((nq, 1), np.inf)], axis=1), axis=1)
    clear = gaps > 1e-3
    np.testing.assert_array_equal(gpu_i[clear], cpu_i[clear])
    assert (np.diff(gpu_d, axis=1) >= 0).all()


def test_gpu_knn_ties_and_limits(cuda):
    bank = np.arange(30, dtype=np.float32).reshape(6, 5)
    bank[3] = bank[4] = bank[1]
    index = native.GpuKnnIndex(bank)
    d, i = index.search(bank[1:2].copy(), 3)
    assert i.tolist() == [[1, 3, 4]] and d.tolist() == [[0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="k must be in"):
        index.search(bank[:1].copy(), 7)
    big = native.GpuKnnIndex(rng_matrix(40, 5, 3))
    with pytest.raises(ValueError, match=r"k must be in \[1, 16\]"):
        big.search(rng_matrix(2, 5, 4), 17)


def test_gpu_knn_on_device_arrays(cupy):
    queries, bank = rng_matrix(500, 96, 5), rng_matrix(3000, 96, 6)
    index = native.GpuKnnIndex(bank)
    dq = cupy.asarray(queries)
    dd = cupy.empty((500, 4), dtype=cupy.float32)
    di = cupy.empty((500, 4), dtype=cupy.int64)
    stream = cupy.cuda.Stream(non_blocking=True)
    index.search_device(dq, 4, dd, di, stream=stream.ptr)
    stream.synchronize()
    cpu_d, _ = native.knn(queries, bank, 4, threads=1)
    np.testing.assert_allclose(cupy.asnumpy(dd), cpu_d, rtol=1e-4, atol=1e-4)
