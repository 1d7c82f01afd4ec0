"""The Philox stream (csrc/common/philox.h) against an independent Python Philox4x32-10 and the
known-answer vectors of Random123 (Salmon et al. 2011), on CPU and CUDA."""
import random

import pytest
import torch

from fastnets import random as frandom
from harness import check_cpu_cuda_identical, check_opcheck, check_same_for_threads, cuda_only

M32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    """Philox4x32-10 written from the paper, word for word, in plain Python."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return [c0, c1, c2, c3]


def stream_words(seed, offset, numel, first=0):
    """Words first..first+numel-1 of the stream, by the contract in fastnets.random."""
    words = []
    for block in range(first // 4, (first + numel + 3) // 4):
        counter = (offset & M32, offset >> 32, block & M32, block >> 32)
        words += philox4x32_10(counter, (seed & M32, seed >> 32))
    return words[first % 4:first % 4 + numel]


def test_python_philox_matches_random123_known_answers():
    assert philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_10([M32] * 4, [M32, M32]) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_stream_starts_with_the_zero_known_answer():
    words = frandom.philox_bits((4,), seed=0, offset=0)
    assert words.tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("numel", [1, 3, 4, 5, 37, 130])
def test_stream_matches_python_philox(device, numel):
    rng = random.Random(numel)
    for _ in range(3):
        seed, offset = rng.getrandbits(64), rng.getrandbits(64)
        words = frandom.philox_bits((numel,), seed, offset, device=device)
        assert words.dtype == torch.int64 and words.device.type == device
        assert words.tolist() == stream_words(seed, offset, numel)


# Word 2^34 starts block 2^32, whose counter carries into the high word: the CPU's SIMD loops
# draw 16 to 64 blocks at a time (cpu_elementwise.h), so a group there straddles the carry.
@pytest.mark.parametrize("first", [1, 6, 255, 257, 2**34 - 130, 2**34 - 1, 2**34, 2**35 + 3, 2**63 - 400])
@pytest.mark.parametrize("numel", [1, 5, 300])
def test_stream_from_first_matches_python_philox(device, first, numel):
    seed, offset = 2**64 - 3 - first % 5, 2**40 + numel
    words = frandom.philox_bits((numel,), seed, offset, device=device, first=first)
    assert words.tolist() == stream_words(seed, offset, numel, first)


def test_stream_from_first_is_a_slice_of_the_stream(device):
    whole = frandom.philox_bits((5000,), 7, 11, device=device)
    for first, numel in ((0, 5000), (1, 4999), (255, 1000), (1234, 3), (4999, 1), (5000, 0)):
        assert torch.equal(frandom.philox_bits((numel,), 7, 11, device=device, first=first), whole[first:first + numel])


def test_stream_prefix_does_not_depend_on_length(device):
    long = frandom.philox_bits((1000,), 7, 11, device=device)
    assert torch.equal(frandom.philox_bits((333,), 7, 11, device=device), long[:333])


def test_stream_shape_is_row_major():
    flat = frandom.philox_bits((24,), 5, 6)
    assert torch.equal(frandom.philox_bits((2, 3, 4), 5, 6), flat.reshape(2, 3, 4))


def test_uniform_definition(device):
    words = frandom.philox_bits((1000,), 3, 4, device=device)
    u64 = frandom.uniform((1000,), 3, 4, device=device)
    u32 = frandom.uniform((1000,), 3, 4, dtype=torch.float32, device=device)
    assert u64.dtype == torch.float64 and u32.dtype == torch.float32
    assert torch.equal(u64, words.double() / 2**32)
    assert torch.equal(u32, ((words >> 8).double() / 2**24).float())
    assert 0 <= u32.min().item() and u32.max().item() < 1


def test_uniform_refuses_dtypes_that_cannot_hold_it_below_one():
    with pytest.raises(ValueError, match="dtype"):
        frandom.uniform((4,), 1, 2, dtype=torch.float16)


def test_uniform_statistics():
    u = frandom.uniform((1_000_000,), 123, 0)
    assert abs(u.mean().item() - 0.5) < 6 * (1 / 12 / u.numel()) ** 0.5
    counts = torch.histc(u.float(), bins=16, min=0, max=1)
    expected = u.numel() / 16
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 50  # 15 degrees of freedom: P(chi2 > 50) < 1e-5


def test_seed_offset_round_trip():
    seed, offset = 2**64 - 5, 2**63 + 7
    tensor = frandom.seed_offset_tensor(seed, offset)
    assert tensor.dtype == torch.int64 and tensor.shape == (2,)
    assert frandom.unpack_seed_offset(tensor) == (seed, offset)


def test_same_for_threads():
    check_same_for_threads(lambda: frandom.philox_bits((100_001,), 99, 1))
    check_same_for_threads(lambda: frandom.philox_bits((100_001,), 99, 1, first=2**34 - 50_001))


def test_opcheck(device):
    check_opcheck(torch.ops.fastnets.philox_bits.default, (frandom.seed_offset_tensor(1, 2, device), 10))
    check_opcheck(torch.ops.fastnets.philox_bits.default, (frandom.seed_offset_tensor(1, 2, device), 10, 2**34 - 3))


def test_bad_seed_offset_is_named():
    with pytest.raises(RuntimeError, match="seed_offset"):
        torch.ops.fastnets.philox_bits(torch.zeros(3, dtype=torch.int64), 4)
    with pytest.raises(RuntimeError, match="seed_offset"):
        torch.ops.fastnets.philox_bits(torch.zeros(2, dtype=torch.int32), 4)
    with pytest.raises(RuntimeError, match="numel"):
        torch.ops.fastnets.philox_bits(torch.zeros(2, dtype=torch.int64), -1)
    with pytest.raises(RuntimeError, match="first must be non-negative"):
        torch.ops.fastnets.philox_bits(torch.zeros(2, dtype=torch.int64), 4, -1)
    with pytest.raises(RuntimeError, match="first \\+ numel"):
        torch.ops.fastnets.philox_bits(torch.zeros(2, dtype=torch.int64), 4, 2**63 - 2)


@cuda_only
@pytest.mark.cuda
def test_cpu_cuda_identical():
    check_cpu_cuda_identical(lambda device: frandom.philox_bits((1_000_003,), 2**63 + 1, 2**40 + 3, device=device))
    check_cpu_cuda_identical(lambda device: frandom.philox_bits((100_003,), 5, 6, device=device, first=2**34 - 50_001))
