"""The compiled range coder (cq_codec.bitstream.rangecoder) against constriction's: same words
both ways, same decoded symbols, same errors and exhaustion on damaged payloads."""

import constriction
import numpy as np
import pytest

from cq_codec.bitstream import entropy as E
from cq_codec.bitstream import rangecoder as rc

pytestmark = pytest.mark.skipif(not rc.available(), reason="numba is not installed")


def _case(rng, contextual, streams=None, alphabet=None, rows=None, skew=None):
    a = int(alphabet or rng.integers(2, 40))
    k = int(streams or rng.integers(1, 4))
    skew = float(skew or rng.choice([1.0, 5.0, 30.0]))     # 30: near-deterministic tables
    tables = [E.quantize_weights(rng.random((a + 1, a) if contextual else (a,)) ** skew + 1e-12) for _ in range(k)]
    model = E.ContextModel(tables) if contextual else E.CategoricalModel(tables)
    n = int(rng.integers(0, 400) if rows is None else rows)
    # symbols drawn from the first table (so likely and unlikely symbols both occur)
    p = tables[0].reshape(-1, a)[0] / float(1 << 24)
    codes = rng.choice(a, size=(n, k), p=p).astype(np.int32)
    return model, codes


def _constriction_words(model, codes):
    enc = constriction.stream.queue.RangeEncoder()
    model._encode(enc, codes)
    return enc.get_compressed()


@pytest.mark.parametrize("contextual", [True, False])
def test_same_words_and_symbols_as_constriction(contextual):
    rng = np.random.default_rng(7 + contextual)
    for _ in range(150):
        model, codes = _case(rng, contextual)
        ref = _constriction_words(model, codes)
        enc = E.new_encoder(compiled=True)
        model._encode(enc, codes)
        assert np.array_equal(enc.get_compressed(), ref)
        dec, dec_ref = E.new_decoder(ref, compiled=True), E.new_decoder(ref, compiled=False)
        assert np.array_equal(model._decode(dec, len(codes)), codes)
        assert np.array_equal(model._decode(dec_ref, len(codes)), codes)
        assert dec.maybe_exhausted() == dec_ref.maybe_exhausted() is True


def test_groups_share_one_coder_like_a_chunk():
    """Several models' rows through one coder (what codec_stream.encode_chunk does)."""
    rng = np.random.default_rng(3)
    groups = [_case(rng, bool(i % 2)) for i in range(5)]
    ref_enc, enc = E.new_encoder(compiled=False), E.new_encoder(compiled=True)
    for m, c in groups:
        m._encode(ref_enc, c)
        m._encode(enc, c)
    words = enc.get_compressed()
    assert np.array_equal(words, ref_enc.get_compressed())
    dec = E.new_decoder(words, compiled=True)
    for m, c in groups:
        assert np.array_equal(m._decode(dec, len(c)), c)
    assert dec.maybe_exhausted()


def test_carry_cases_are_covered():
    """The encoder's "inverted" situation (a carry pending across words) occurs and is coded as
    constriction codes it: encode row by row and watch the pending-carry counter."""
    rng = np.random.default_rng(11)
    seen = 0
    for _ in range(40):
        model, codes = _case(rng, True, streams=1, alphabet=4, rows=300, skew=1.0)
        enc = rc.RangeEncoder()
        cdf = model._cdf()[1]
        for i in range(len(codes)):     # one row per call: the state carries between calls
            enc.encode(codes[i:i + 1], cdf[:, :1] if i == 0 else cdf[:, codes[i - 1, 0] + 1:codes[i - 1, 0] + 2],
                       contextual=False)
            seen += int(enc._state[2] > 0)
        assert np.array_equal(enc.get_compressed(), _constriction_words(model, codes))
    assert seen > 0


@pytest.mark.parametrize("contextual", [True, False])
def test_damaged_payloads_fail_or_decode_alike(contextual):
    """Random words: constriction and the compiled decoder raise at the same place, or decode
    the same symbols with the same exhaustion verdict."""
    rng = np.random.default_rng(5)
    raised = 0
    for _ in range(200):
        model, codes = _case(rng, contextual, rows=int(rng.integers(1, 200)))
        words = rng.integers(0, 1 << 32, int(rng.integers(0, 12)), dtype=np.uint64).astype(np.uint32)
        outcome = []
        for compiled in (False, True):
            dec = E.new_decoder(words, compiled=compiled)
            try:
                outcome.append((model._decode(dec, len(codes)).tolist(), dec.maybe_exhausted()))
            except (ValueError, RuntimeError, AssertionError):
                outcome.append("raised")
        assert outcome[0] == outcome[1]
        raised += outcome[0] == "raised"
    assert raised > 0


def test_entropy_encode_decode_use_the_compiled_coder_and_match_constriction():
    rng = np.random.default_rng(1)
    model, codes = _case(rng, True, streams=2, rows=500)
    data = E.encode(codes, model)
    assert data == _constriction_words(model, codes).astype(">u4").tobytes()
    assert np.array_equal(E.decode(data, len(codes), model), codes)
    with pytest.raises(ValueError, match="data left|corrupt"):
        E.decode(data, len(codes) - 1, model)


def test_range_coder_choice(monkeypatch):
    """The compiled coder by default where numba imports (constriction where it does not);
    $CQ_CODEC_RANGE_CODER picks either (same bytes); a bad value is a clear error; importing the
    codec does not import numba."""
    import subprocess
    import sys
    monkeypatch.delenv("CQ_CODEC_RANGE_CODER", raising=False)
    assert E.range_coder() == "numba" and isinstance(E.new_encoder(), rc.RangeEncoder)
    monkeypatch.setattr(rc, "loads", lambda: False)   # numba missing or its kernels not loading
    assert E.range_coder() == "constriction"
    monkeypatch.undo()
    monkeypatch.setenv("CQ_CODEC_RANGE_CODER", "constriction")
    assert E.range_coder() == "constriction"
    assert isinstance(E.new_encoder(), constriction.stream.queue.RangeEncoder)
    model, codes = _case(np.random.default_rng(2), True, streams=1, rows=300)
    data = E.encode(codes, model)
    monkeypatch.setenv("CQ_CODEC_RANGE_CODER", "numba")
    assert isinstance(E.new_encoder(), rc.RangeEncoder) and isinstance(E.new_decoder(np.zeros(2, np.uint32)), rc.RangeDecoder)
    assert E.encode(codes, model) == data and np.array_equal(E.decode(data, len(codes), model), codes)
    monkeypatch.setenv("CQ_CODEC_RANGE_CODER", "fast")
    with pytest.raises(ValueError, match="CQ_CODEC_RANGE_CODER must be one of constriction, numba"):
        E.encode(codes, model)
    out = subprocess.run([sys.executable, "-c", "import sys, cq_codec.bitstream.codec_stream; print('numba' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("contextual", [True, False])
def test_costly_symbols_overflow_the_first_buffer_and_are_recoded(contextual):
    """The compiled encoder first sizes its buffer for 8 bits a symbol; symbols of ~20 bits each
    overflow it, and the group is coded again from the saved state: the same words as
    constriction, the buffer grown to the worst case."""
    rng = np.random.default_rng(11)
    a = 8
    table = np.full(a, 1, np.float64)
    table[0] = 1e6                                     # symbols 1..7 cost ~20 bits each
    tables = [E.quantize_weights(np.tile(table, (a + 1, 1)) if contextual else table)]
    model = E.ContextModel(tables) if contextual else E.CategoricalModel(tables)
    ref_enc, enc = E.new_encoder(compiled=False), E.new_encoder(compiled=True)
    for rows in (5, 3000):   # a cheap group first: the costly one then starts mid-stream
        codes = (rng.integers(1, a, size=(rows, 1)) if rows > 5 else np.zeros((rows, 1))).astype(np.int32)
        model._encode(ref_enc, codes)
        model._encode(enc, codes)
    words = enc.get_compressed()
    assert len(words) > 3000 // 4 + 16 and np.array_equal(words, ref_enc.get_compressed())
