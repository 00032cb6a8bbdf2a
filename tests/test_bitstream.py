"""Property tests of cq_codec.bitstream: entropy coding (bit-exact, near-optimal) and `.nac`."""

import contextlib
import hashlib
import io
import os
import signal
import struct
import zlib

import constriction
import numpy as np
import pytest

from cq_codec.bitstream import container as nac
from cq_codec.bitstream import entropy as ent


@contextlib.contextmanager
def time_limit(seconds):
    """Fail (instead of hanging) if the block runs longer than `seconds`."""
    def handler(signum, frame):
        raise TimeoutError(f"took more than {seconds} s: a hang?")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def skewed_codes(rng, n, sizes):
    """Codes [n, S] with a peaked (geometric-like) distribution per stream."""
    cols = [np.minimum(rng.geometric(min(0.9, 4.0 / a), n) - 1, a - 1) for a in sizes]
    return np.stack(cols, 1).astype(np.int32)


def random_walk(rng, n, a, step=2):
    """A clipped random walk over {0..a-1}: strongly correlated consecutive codes, [n]."""
    return np.clip(np.cumsum(rng.integers(-step, step + 1, n)) + a // 2, 0, a - 1).astype(np.int32)


MODELS = [ent.CategoricalModel, ent.ContextModel]


# ---------------------------------------------------------------- entropy coding

@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("sizes", [[2], [7, 256], [1024, 3, 1, 256], [1, 1]])
def test_round_trip_bit_exact(cls, sizes):
    rng = np.random.default_rng(len(sizes))
    model = cls.fit(skewed_codes(rng, 3000, sizes), sizes)
    codes = skewed_codes(rng, 500, sizes)
    data = ent.encode(codes, model)
    assert isinstance(data, bytes) and len(data) % 4 == 0
    out = ent.decode(data, len(codes), model)
    assert out.dtype == np.int32 and out.shape == codes.shape
    np.testing.assert_array_equal(out, codes)
    assert ent.encode(out, model) == data     # deterministic


@pytest.mark.parametrize("cls", MODELS)
def test_empty_single_and_unseen_symbols(cls):
    sizes = [16, 5]
    train = np.zeros((100, 2), np.int32)       # only symbol 0 seen: the others have count 0
    model = cls.fit(train, sizes)
    empty = np.zeros((0, 2), np.int32)
    np.testing.assert_array_equal(ent.decode(ent.encode(empty, model), 0, model), empty)
    single = np.array([[15, 4]])
    np.testing.assert_array_equal(ent.decode(ent.encode(single, model), 1, model), single)
    unseen = np.stack([np.arange(16), np.arange(16) % 5], 1)
    np.testing.assert_array_equal(ent.decode(ent.encode(unseen, model), 16, model), unseen)


@pytest.mark.parametrize("cls", MODELS)
def test_estimate_bits_matches_payload(cls):
    rng = np.random.default_rng(1)
    sizes = [256, 16]
    model = cls.fit(skewed_codes(rng, 20000, sizes), sizes)
    codes = skewed_codes(rng, 5000, sizes)     # 10k symbols
    est = ent.estimate_bits(codes, model)
    actual = 8 * len(ent.encode(codes, model))
    assert est > 1000
    assert est - 64 <= actual <= 1.01 * est + 96
    assert np.isclose(est, model.symbol_bits(codes).sum())


def test_fixed_point_tables_are_what_constriction_codes_with():
    """Probe constriction's quantile function (ANS state low bits) at every cdf boundary."""
    rng = np.random.default_rng(2)
    model = ent.CategoricalModel.fit(skewed_codes(rng, 5000, [300]), [300])
    freqs = model.tables[0].astype(np.int64)
    cdf = np.concatenate([[0], np.cumsum(freqs)])
    assert cdf[-1] == 2 ** ent.PRECISION and freqs.min() >= 1
    ctx = ent.ContextModel.fit(np.stack([random_walk(rng, 2000, 9)], 1), [9])
    probes = [(model._models[0], cdf)]
    for row in (0, 3, 9):
        probes.append((ctx._coder_models()[0][row],
                       np.concatenate([[0], np.cumsum(ctx.tables[0][row].astype(np.int64))])))
    for m, c in probes:
        for s in range(len(c) - 1):
            for q in (c[s], c[s + 1] - 1):
                coder = constriction.stream.stack.AnsCoder(
                    np.array([q | (1 << 24), 1], np.uint32), seal=False)
                assert int(coder.decode(m)) == s, (s, q)


def test_quantize_weights():
    f = ent.quantize_weights([[0.0, 1.0, 3.0], [5, 5, 5]])
    assert f.dtype == np.uint32 and np.all(f.sum(-1) == 2 ** 24) and f.min() >= 1
    assert abs(f[0, 2] / f[0, 1] - 3.0) < 1e-5
    assert ent.quantize_weights([1.0])[0] == 2 ** 24
    for bad in ([-1.0, 2.0], [0.0, 0.0], [np.nan, 1.0], []):
        with pytest.raises(ValueError):
            ent.quantize_weights(bad)


@pytest.mark.parametrize("cls", MODELS)
def test_model_serialisation(cls):
    rng = np.random.default_rng(3)
    model = cls.fit(skewed_codes(rng, 1000, [32, 1, 8]), [32, 1, 8])
    for again in (ent.model_from_bytes(model.to_bytes()), ent.model_from_dict(model.to_dict())):
        assert type(again) is cls and again == model
        assert again.to_bytes() == model.to_bytes() and again.sha256 == model.sha256
    other = cls.fit(skewed_codes(rng, 1000, [32, 1, 8]), [32, 1, 8])
    assert other.sha256 != model.sha256
    d = model.to_dict()
    with pytest.raises(ValueError, match="version"):
        ent.model_from_dict({**d, "version": 99})
    with pytest.raises(ValueError, match="kind"):
        ent.model_from_dict({**d, "kind": "mystery"})
    with pytest.raises(ValueError, match="sum to 2"):
        ent.model_from_dict({**d, "tables": [ent._b64(np.ones(32 * (33 if cls is ent.ContextModel else 1)))]
                             + d["tables"][1:]})


def test_context_model_saves_bits_only_on_correlated_data():
    rng = np.random.default_rng(4)
    walk_train = np.stack([random_walk(rng, 20000, 64) for _ in range(2)], 1)
    walk_test = np.stack([random_walk(rng, 5000, 64) for _ in range(2)], 1)
    iid_train, iid_test = skewed_codes(rng, 20000, [64, 64]), skewed_codes(rng, 5000, [64, 64])
    bits = {}
    for name, train, test in (("walk", walk_train, walk_test), ("iid", iid_train, iid_test)):
        for cls in MODELS:
            bits[name, cls] = ent.estimate_bits(test, cls.fit(train, [64, 64]))
    assert bits["walk", ent.ContextModel] < 0.6 * bits["walk", ent.CategoricalModel]
    assert bits["iid", ent.ContextModel] < 1.05 * bits["iid", ent.CategoricalModel]


@pytest.mark.parametrize("cls", MODELS)
def test_bad_input_errors(cls):
    model = cls.fit(np.zeros((4, 2), np.int32), [4, 3])
    with pytest.raises(ValueError, match=r"row 1, stream 1"):
        ent.encode(np.array([[0, 0], [0, 3]]), model)
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        ent.encode(np.zeros((3, 3), np.int32), model)
    with pytest.raises(TypeError, match="integers"):
        ent.encode(np.zeros((3, 2), np.float32), model)
    data = ent.encode(np.array([[1, 2], [3, 0]] * 50), model)
    with pytest.raises(ValueError, match="multiple of 4"):
        ent.decode(data + b"\0", 100, model)
    with pytest.raises(ValueError, match="left after decoding"):
        ent.decode(data + data, 100, model)
    with pytest.raises(ValueError, match="num_rows"):
        ent.decode(data, -1, model)
    with pytest.raises(TypeError, match="model"):
        ent.encode(np.zeros((1, 2), np.int32), {"not": "a model"})


@pytest.mark.parametrize("cls", MODELS)
def test_damaged_payload_gives_value_error_or_codes(cls):
    """The payload has no checksum of its own (the container's CRC has); damage must still
    give codes in range or a ValueError, never another exception or a hang."""
    rng = np.random.default_rng(6)
    model = cls.fit(skewed_codes(rng, 500, [50, 7, 1]), [50, 7, 1])
    good = ent.encode(skewed_codes(rng, 40, [50, 7, 1]), model)
    with time_limit(20):
        for _ in range(300):
            data = bytearray(good)
            data[rng.integers(len(data))] ^= int(rng.integers(1, 256))
            for case in (bytes(data), rng.bytes(4 * int(rng.integers(0, 12)))):
                try:
                    out = ent.decode(case, 40, model)
                except ValueError:
                    continue
                assert out.shape == (40, 3) and out.min() >= 0
                assert np.all(out < np.array([50, 7, 1]))


# Golden: a change to the coder, the table arithmetic or the serialisation breaks these.
GOLDEN_SIZES = [5, 3, 1, 16]
GOLDEN_PAYLOAD_SHA256 = {
    "categorical": "192ff1b5a26c3a14913d8c45ad989991a8dada1554ce19d57115885cfe123082",
    "context": "f940a04945d341bd22ef59afa3ce3df1d6c17bf769e8c2f1e22bb0f0c40d4e4b",
}
GOLDEN_MODEL_SHA256 = {
    "categorical": "fff45f9ccb3fea31e92fb06425faa1c94a05e6beccef454e03ebfbad39d8b514",
    "context": "60b7511dd1f0a56139f3398305c548decc8214612a4c010992a927c2f11960b2",
}

def golden_codes():
    """40 rows of codes from a fixed LCG (independent of any library RNG), [40, 4]."""
    x, rows = 12345, []
    for _ in range(40):
        row = []
        for a in GOLDEN_SIZES:
            x = (1103515245 * x + 12345) % 2 ** 31
            row.append((x >> 16) % a if (x >> 8) % 3 else 0)
        rows.append(row)
    return np.array(rows, np.int32)


def golden_model(kind):
    weights = [[4, 2, 1, 1, 0], [1, 1, 6], [1], list(range(16))]
    if kind == "categorical":
        return ent.CategoricalModel([ent.quantize_weights(w) for w in weights])
    return ent.ContextModel([ent.quantize_weights([[1.0 + w[i] + 3 * ((i + r) % len(w) == 0)
                                                     for i in range(len(w))]
                                                    for r in range(len(w) + 1)]) for w in weights])


@pytest.mark.parametrize("kind", ["categorical", "context"])
def test_golden_payload(kind):
    model, codes = golden_model(kind), golden_codes()
    data = ent.encode(codes, model)
    assert hashlib.sha256(data).hexdigest() == GOLDEN_PAYLOAD_SHA256[kind]
    assert model.sha256 == GOLDEN_MODEL_SHA256[kind]
    assert ent.model_from_bytes(model.to_bytes()) == model
    np.testing.assert_array_equal(ent.decode(data, len(codes), model), codes)


# ---------------------------------------------------------------- .nac container

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "nac")
# Golden container files, one per version (tests/fixtures/nac/v{1,2,3,4}.nac). The version-1, -2
# and -3 hashes are those of the files the earlier writers made (they predate version 4).
GOLDEN_NAC_SHA256 = {
    1: "2e71b883b78e497175860d030d0e7a9052955705e70e02eac7dca73afe93bd59",
    2: "dcdb254c762f9444a6a1c99594c6a81189384187a4b0dbabfe25a546c05a3751",
    3: "51d3385db07c3f7a689211e88977fb12e69e80624d87c5673c1b58fa9de1c222",
    4: "8542268a7ccdc45d3da5933f55a24dae2b6b99ed14e116c09538f87c5c1300ab",
}
CHUNKS = [b"\x01\x02\x03\x04\x05", b"", bytes(range(7))]


def small_meta(**kw):
    """4800 samples = 10 hops, 4 hops per chunk -> 3 chunks; two modules."""
    return nac.build_metadata(model_name="tiny", model_sha256="ab" * 32, num_samples=4800, num_modules=2,
                              frames_per_chunk=4, stream_format=1, **kw)


def small_nac():
    """A version-4 file (what write_nac writes)."""
    meta = small_meta()
    return nac.write_nac(meta, CHUNKS, 6.1), meta, CHUNKS


def small_nac_v3():
    """The version-3 file (the writer before version 4: the same layout)."""
    meta = small_meta()
    return nac.write_nac_v3(meta, CHUNKS, 6.1), meta, CHUNKS


def small_nac_v2():
    meta = small_meta()
    return nac.write_nac_v2(meta, CHUNKS, 6.1), meta, CHUNKS


def small_nac_v1():
    """The version-1 file the JSON writer made."""
    meta = {"model": {"name": "tiny", "sha256": "ab" * 32}, "sample_rate": 16000, "num_samples": 4800,
            "stages": ["lsf", "res1"], "alphabet_sizes": [5, 3], "num_chunks": 3, "frames_per_chunk": 4,
            "num_frames": 10, "bitrate_kbps": 6.1}
    return nac.write_nac_v1(meta, CHUNKS, 6.1), meta, CHUNKS


MAKERS = {1: small_nac_v1, 2: small_nac_v2, 3: small_nac_v3, 4: small_nac}


def seed_reader(data: bytes):
    """What a reader written from seed 001 alone does, with nothing but `struct`: the 9-byte
    big-endian prefix (3-byte magic, version, 4-byte metadata length, bit rate), skip the
    metadata, then walk the length-prefixed chunks to the end."""
    magic, version, meta_len, bitrate = struct.unpack(">3sBIB", data[:9])
    pos, chunks = 9 + meta_len, []
    while pos < len(data):
        length, crc = struct.unpack(">II", data[pos:pos + 8])
        chunks.append(data[pos + 8: pos + 8 + length])
        pos += 8 + length
    return magic, version, meta_len, bitrate, chunks


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_golden_files_per_version(version):
    """tests/fixtures/nac/v{version}.nac: the bytes the writer of that version makes, readable today."""
    with open(os.path.join(FIXTURES, f"v{version}.nac"), "rb") as f:
        golden = f.read()
    data, meta, chunks = MAKERS[version]()
    assert data == golden
    assert hashlib.sha256(golden).hexdigest() == GOLDEN_NAC_SHA256[version]
    header, meta2, chunks2 = nac.read_nac(golden)
    assert header.version == version and header.bitrate_byte == 24 and chunks2 == chunks
    if version == 1:
        assert meta2 == meta
    else:
        assert meta2 == {**meta, "model": {"name": "tiny", "sha256": "ab" * 8}, "sample_rate": 16000,
                         "num_frames": 10, "num_chunks": 3}


def test_seed_001_prefix_parses_with_struct_alone():
    with open(os.path.join(FIXTURES, "v3.nac"), "rb") as f:
        data = f.read()
    magic, version, meta_len, bitrate, chunks = seed_reader(data)
    assert (magic, version, bitrate) == (b"NAC", 3, 24)      # 6.1 kbps in 0.25 kbps units
    assert bitrate * nac.BITRATE_UNIT_KBPS == 6.0
    assert meta_len == nac.read_nac(data)[0].size - 9        # the metadata block is exactly that long
    assert chunks == CHUNKS                                   # so skipping it lands on the chunks
    with open(os.path.join(FIXTURES, "v1.nac"), "rb") as f:
        old = f.read()                                        # version 1: the same prefix, but its
    magic, version, meta_len, bitrate = struct.unpack(">3sBIB", old[:9])   # length left out the CRC
    assert (magic, version, bitrate) == (b"NAC", 1, 24) and nac.read_nac(old)[0].size == 9 + meta_len + 4


def test_version_3_byte_layout():
    data, meta, chunks = small_nac_v3()
    body = (b"\xab" * 8 + (4800).to_bytes(5, "big") + b"\x01" + b"\x00\x04" + b"\x02" + b"\x00\x00"
            + b"\x04tiny")
    head = b"NAC\x03" + struct.pack(">I", len(body) + 4) + bytes([24]) + body
    assert len(body) + 4 == 22 + 2 + 4                       # M = 22 + k + N
    assert data[:len(head) + 4] == head + struct.pack(">I", zlib.crc32(head))
    assert len(data) == len(head) + 4 + sum(8 + len(c) for c in chunks)
    header, meta2, chunks2 = nac.read_nac(data)
    assert header == (3, len(head) + 4, 24) and header.bitrate_kbps == 6.0
    assert meta2["codebooks"] == [0, 0] and meta2["stages"] == [1, 2]
    assert nac.write_nac_v3(meta2, chunks, 6.1) == data      # what the reader returns writes the same bytes
    reader = nac.NacReader(io.BytesIO(data))
    assert reader.metadata == meta2 and reader.num_chunks == 3 and list(reader) == chunks
    assert reader.bytes_left == sum(8 + len(c) for c in chunks)


def test_version_4_is_version_3s_layout():
    """Version 4 changed what the model id means (bitstream/identity.py), not where anything is."""
    v3, v4 = small_nac_v3()[0], small_nac()[0]
    size = nac.read_nac(v3)[0].size
    assert len(v4) == len(v3) and v4[3] == 4 and v3[3] == 3
    assert v4[:3] == v3[:3] and v4[4:size - 4] == v3[4:size - 4] and v4[size:] == v3[size:]   # all but version, CRC
    assert nac.read_nac(v4)[1:] == nac.read_nac(v3)[1:]


def test_codebook_counts_round_trip_in_version_3_only():
    meta = small_meta(codebooks=[3, 0])
    data = nac.write_nac(meta, CHUNKS, 6.1)
    assert data[9 + 17: 9 + 19] == b"\x03\x00"
    assert nac.read_nac(data)[1]["codebooks"] == [3, 0]
    with pytest.raises(nac.NacFormatError, match="version-2 header cannot hold codebook counts"):
        nac.write_nac_v2(meta, CHUNKS, 6.1)
    for bad in ([1], [256, 0], [-1, 0], [True, 0]):
        with pytest.raises(nac.NacFormatError, match="'codebooks' must be one int"):
            nac.write_nac({**meta, "codebooks": bad}, CHUNKS, 6.1)


def test_header_overhead_is_small():
    """Version 3 spends 31 bytes + one per module + the model name on the header, 8 per chunk."""
    meta = nac.build_metadata(model_name="default", model_sha256="0123456789abcdef" * 4, num_samples=48000,
                              num_modules=3, frames_per_chunk=250, stream_format=1)
    payload = bytes(1000)
    data = nac.write_nac(meta, [payload], 2.7)
    assert len(data) - len(payload) == 31 + 3 + len("default") + 8 < 64
    long_name = "\u00e9" * 200                             # 400 UTF-8 bytes: cut to 254 (whole characters)
    _, back, _ = nac.read_nac(nac.write_nac({**meta, "model": {"name": long_name, "sha256": "0" * 16}},
                                            [payload], 2.7))
    assert back["model"]["name"] == "\u00e9" * 127


def test_bitrate_byte():
    assert [nac.bitrate_to_byte(k) for k in (0, 0.12, 0.13, 6, 63.75, 100)] == [0, 0, 1, 24, 255, 255]
    with pytest.raises(ValueError):
        nac.bitrate_to_byte(float("nan"))


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_every_byte_corruption_and_truncation_raises_nac_error(version):
    data, _, _ = MAKERS[version]()
    rng = np.random.default_rng(5)
    cases = []
    for i in range(len(data)):
        for value in {data[i] ^ 0xFF, *rng.integers(0, 256, 3).tolist()} - {data[i]}:
            cases.append(data[:i] + bytes([value]) + data[i + 1:])
    cases += [data[:k] for k in range(len(data))] + [data + b"\0"]
    with time_limit(20):
        for case in cases:
            with pytest.raises(nac.NacError):
                nac.read_nac(case)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_error_types_and_messages(version):
    data, meta, chunks = MAKERS[version]()
    with pytest.raises(nac.NacVersionError, match="version 5.*supports versions 1, 2, 3 and 4"):
        nac.read_nac(data[:3] + b"\x05" + data[4:])
    with pytest.raises(nac.NacFormatError, match="magic"):
        nac.read_nac(b"RIFF" + data[4:])
    damaged = bytearray(data)
    damaged[len(data) - 1] ^= 1                        # last byte of chunk 2
    with pytest.raises(nac.NacChecksumError, match="chunk 2 at offset") as info:
        nac.read_nac(bytes(damaged))
    assert info.value.chunk_index == 2
    damaged = bytearray(data)
    damaged[10] ^= 1                                   # a metadata byte
    with pytest.raises(nac.NacChecksumError, match="header CRC mismatch"):
        nac.read_nac(bytes(damaged))
    with pytest.raises(nac.NacFormatError, match="truncated.*offset"):
        nac.read_nac(data[:-1])
    huge = bytearray(data)
    off = nac.read_nac(data)[0].size
    huge[off:off + 4] = struct.pack(">I", 2 ** 31)     # a damaged length: no huge allocation
    with pytest.raises(nac.NacFormatError, match="exceeds the limit"):
        nac.read_nac(bytes(huge))
    with pytest.raises(TypeError):
        nac.read_nac("not bytes")


def with_crc(head: bytes) -> bytes:
    return head + struct.pack(">I", zlib.crc32(head))


def test_version_3_length_and_field_limits():
    data = small_nac_v3()[0]
    for meta_len in (2 ** 31, 22, 533):
        bad = bytearray(data)
        bad[4:8] = struct.pack(">I", meta_len)
        with pytest.raises(nac.NacFormatError, match="outside the version-3 range"):
            nac.read_nac(bytes(bad))
    body = bytearray(data[9:9 + 24])                   # metadata without its CRC
    longer = b"NAC\x03" + struct.pack(">I", 29) + data[8:9] + bytes(body) + b"!"   # one byte more than its fields
    with pytest.raises(nac.NacFormatError, match="metadata length 29 at offset 4 does not match its fields"):
        nac.read_nac(with_crc(longer) + data[9 + 28:])
    cases = [(slice(8, 13), b"\0" * 5, "num_samples 0 \\(offset 17\\).*must be >= 1"),
             (slice(14, 15), b"\x10", "frames_per_chunk 4100 at offset 23 exceeds the decoder's limit"),
             (slice(16, 17), b"\0", "does not match its fields \\(0 modules")]
    for where, value, message in cases:           # body offsets = file offsets - 9
        b = bytearray(body)
        b[where] = value
        with pytest.raises(nac.NacFormatError, match=message):
            nac.read_nac(with_crc(data[:9] + bytes(b)) + data[9 + 28:])
    # A header declaring 2**40 - 1 samples in one-hop chunks: refused from the file size, at once.
    b = bytearray(body)
    b[8:13] = (2 ** 40 - 1).to_bytes(5, "big")
    b[14:16] = b"\x00\x01"
    with time_limit(1), pytest.raises(nac.NacFormatError, match="declares 2290649225 chunks"):
        nac.NacReader(io.BytesIO(with_crc(data[:9] + bytes(b)) + data[9 + 28:]))


def test_version_1_metadata_limits():
    data = bytearray(small_nac_v1()[0])
    data[4:8] = struct.pack(">I", 2 ** 21)
    with pytest.raises(nac.NacFormatError, match="metadata length 2097152 at offset 4 exceeds the limit"):
        nac.read_nac(bytes(data))
    with pytest.raises(nac.NacFormatError, match="num_chunks"):
        nac.write_nac_v1({"num_chunks": 2}, [b"a"], 1)

    def v1(raw: bytes) -> bytes:
        return with_crc(b"NAC\x01" + struct.pack(">I", len(raw)) + b"\x18" + raw)
    cases = [(b"[" * 5000 + b"]" * 5000, "nests 5000 deep"),
             (b'{"num_chunks":0,"x":' + b"[" * 17 + b"]" * 17 + b"}", "nests 18 deep"),
             (b'{"num_chunks":0,"n":1' + b"0" * 5000 + b"}", "5001 digits"),
             (b'{"num_chunks":0,"num_samples":NaN}', "NaN is not allowed"),
             (b'{"num_chunks":-1}', "'num_chunks' must be an int in"),
             (b'{"num_chunks":true}', "'num_chunks' must be an int in"),
             (b'{"num_chunks":0,"num_samples":9223372036854775808}', "'num_samples' must be an int in"),
             (b'{"num_chunks":0,"num_samples":"9"}', "'num_samples' must be an int in"),
             (b'{"num_chunks":0,"frames_per_chunk":70000}', "'frames_per_chunk' must be an int in \\[1, 4096\\]"),
             (b'{"num_chunks":0,"model":{"name":"x","sha256":7}}', "'model' must be"),
             (b'{"num_chunks":0,"layout":{"lsf":[0],"modules":[]}}', "'layout' must be"),
             (b'{"num_chunks":0,"bitrate_kbps":-1}', "'bitrate_kbps' must be a finite number"),
             (b'{"x":1}', "'num_chunks' must be an int >= 0, got None"),
             (b'"a string"', "is a JSON str"),
             (b"\xff", "not UTF-8 JSON")]
    for raw, message in cases:
        with time_limit(1), pytest.raises(nac.NacFormatError, match=message):
            nac.read_nac(v1(raw))
    # Strings are not nesting: brackets inside them do not count.
    assert nac.read_nac(v1(b'{"num_chunks":0,"note":"' + b"[" * 100 + b'"}'))[1]["note"] == "[" * 100


def test_writer_refuses_what_the_header_cannot_hold():
    _, meta, chunks = small_nac()
    cases = [({**meta, "estimated_bits": 1.0}, chunks, "no field for metadata keys \\['estimated_bits'\\]"),
             (meta, chunks[:2], "2 chunks given, but 4800 samples at 4 frames per chunk make 3"),
             ({**meta, "num_chunks": 4}, chunks, "'num_chunks' is 4, the header implies 3"),
             ({**meta, "sample_rate": 8000}, chunks, "'sample_rate' is 8000"),
             ({**meta, "model": {"name": "x", "sha256": "abc"}}, chunks, "'model' must be"),
             ({**meta, "model": {"name": "x", "sha256": "zz" * 8}}, chunks, "'model' must be"),
             ({**meta, "stages": [2]}, chunks, "'stages' must be"),
             ({**meta, "stages": list(range(1, 257))}, chunks, "'stages' must be"),
             ({**meta, "num_samples": 0}, chunks, "'num_samples' must be an int in \\[1, "),
             ({**meta, "num_samples": 2 ** 40}, chunks, "'num_samples'"),
             ({**meta, "frames_per_chunk": nac.MAX_FRAMES_PER_CHUNK + 1}, chunks, "'frames_per_chunk'"),
             ({**meta, "stream_format": 256}, chunks, "'stream_format'")]
    for bad, given, message in cases:
        with pytest.raises(nac.NacFormatError, match=message):
            nac.write_nac(bad, given, 6.1)
    with pytest.raises(TypeError):
        nac.write_nac([("model", None)], chunks, 6.1)


def test_streaming_reader_yields_chunks_lazily():
    meta = nac.build_metadata(model_name="", model_sha256="00" * 8, num_samples=9600, num_stages=1,
                              frames_per_chunk=4, stream_format=1)     # 20 hops -> 5 chunks
    chunks = [bytes([i]) * 1000 for i in range(5)]
    data = bytearray(nac.write_nac(meta, chunks, 12))
    data[-10] ^= 0xFF                                  # damage the last chunk only
    reader = nac.NacReader(io.BytesIO(bytes(data)))
    assert reader.num_chunks == 5 and reader.metadata["model"]["name"] == ""
    it = iter(reader)
    assert [next(it) for _ in range(4)] == chunks[:4]  # earlier chunks come out before the error
    with pytest.raises(nac.NacChecksumError) as info:
        next(it)
    assert info.value.chunk_index == 4
    assert zlib.crc32(chunks[4]) != zlib.crc32(bytes(data[-1000:]))


def test_build_metadata_counts_modules_under_either_name():
    kw = dict(model_name="m", model_sha256="00" * 8, num_samples=4800, frames_per_chunk=4, stream_format=1)
    assert nac.build_metadata(num_modules=2, **kw) == nac.build_metadata(num_stages=2, **kw)
    assert nac.build_metadata(num_modules=2, **kw)["stages"] == [1, 2]      # the key keeps version 1's name
    for bad in ({}, {"num_modules": 2, "num_stages": 2}):
        with pytest.raises(TypeError, match="num_modules"):
            nac.build_metadata(**bad, **kw)
