"""The CUDA emulator itself (kernels/emulator/): it must compute what CUDA computes and report what
CUDA leaves undefined, or the emulated kernel tests (test_kernels_emulated.py) would prove nothing.

Checked here with small kernels of our own (``cuda_emulator_selftest.cpp``): warp shuffles, block
barriers, shared memory poisoned between blocks, divergent barriers, deadlocks, lanes that exit
before a shuffle, the shuffled thread order exposing a race; and the FP16 conversions, bit for
bit against NumPy over every half value and a million floats.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from prn_edge.kernels import emulator

SELFTEST = Path(__file__).with_name("cuda_emulator_selftest.cpp")


@pytest.fixture(scope="module")
def lib():
    ok, why = emulator.available()
    if not ok:
        pytest.skip(why)
    lib = emulator.build(SELFTEST)
    for name in ("run_shuffle_xor", "run_block_sum", "run_unwritten_shared", "run_divergent_barrier",
                 "run_deadlock", "run_lane_exit", "run_racy_read"):
        getattr(lib, name).restype = ctypes.c_char_p
    lib.run_racy_read.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    return lib


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.__array_interface__["data"][0])


@pytest.mark.parametrize("lane_mask", [1, 5, 16, 31])
def test_shuffle_xor_exchanges_lanes_within_each_warp(lib, lane_mask):
    out = np.full(256, -1, np.int32)
    assert lib.run_shuffle_xor(_ptr(out), lane_mask) == b""
    t = np.arange(256)
    np.testing.assert_array_equal(out, 1000 * (t // 32) + ((t % 32) ^ lane_mask))


def test_barrier_makes_every_write_visible(lib):
    x = np.random.default_rng(0).standard_normal(3 * 256).astype(np.float32)
    out = np.zeros(3, np.float32)
    assert lib.run_block_sum(_ptr(x), _ptr(out), 3) == b""
    expected = [np.add.reduce(x[i * 256:(i + 1) * 256], dtype=np.float32) for i in range(3)]
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_shared_memory_is_poisoned_for_every_block(lib):
    out = np.zeros(2, np.float32)
    assert lib.run_unwritten_shared(_ptr(out)) == b""
    assert out[0] == 42.0 and np.isnan(out[1])  # block 1 does not see block 0's value


def test_divergent_barrier_is_reported(lib):
    assert b"divergent barrier" in lib.run_divergent_barrier()


def test_deadlock_is_reported_not_hung_on(lib):
    assert b"deadlock" in lib.run_deadlock()


def test_lane_exiting_before_a_shuffle_is_reported(lib):
    out = np.zeros(64, np.int32)
    assert b"exited" in lib.run_lane_exit(_ptr(out))


def test_shuffled_thread_order_exposes_a_race(lib):
    """In index order the reader runs after the writer; shuffled orders sometimes run it first."""
    seen = []
    for seed in range(17):
        out = np.zeros(1, np.float32)
        assert lib.run_racy_read(_ptr(out), seed) == b""
        seen.append(float(out[0]))
    assert seen[0] == 7.0
    assert any(np.isnan(v) for v in seen[1:]), seen


def test_half_to_float_matches_numpy_for_every_half():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = emulator.half_bits_to_float(bits)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # -0.0 and subnormals too


def test_float_to_half_rounds_to_nearest_even_like_numpy():
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    finite = halves[np.isfinite(halves)]
    ties = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact midpoints of adjacent halves
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, 2.0 ** -24, 2.0 ** -25,
                         1.5 * 2.0 ** -25, 2.0 ** -26, 2.0 ** -14, 6.1e-5], np.float64)
    values = np.concatenate([random_bits, finite, ties.astype(np.float32), specials.astype(np.float32)])
    got = emulator.float_to_half_bits(values)
    with np.errstate(over="ignore", invalid="ignore"):
        want = values.astype(np.float16).view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(got[nan] & 0x7C00, np.full(nan.sum(), 0x7C00)) and np.all(got[nan] & 0x3FF)
    mismatch = np.flatnonzero(got[~nan] != want[~nan])
    assert mismatch.size == 0, f"{mismatch.size} values differ, e.g. {values[~nan][mismatch[:5]]}"
