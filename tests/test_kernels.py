"""The decoder's compiled filters (lpc._kernels, docs/DESIGN.md "Speed, seventh pass") against the
numpy / scipy reference they stand in for: the LPC synthesis and the postfilter within float64
rounding (stated tolerances), the pitch synthesis bit for bit, chunked calls equal to whole ones
(the same path, bit-exact), the switch and its errors, and a real model's decode: the same bytes
(only the decoder uses them) and audio equal within float32 rounding."""

import os

import numpy as np
import pytest
import soundfile as sf

import constants as C
import lpc
import lpc.filters as F
from lpc.ltp import LongTermPredictor
from lpc.postfilter import Postfilter
from test_speed_numpy import SPEECH, speech as speech_samples

MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cq_codec", "pretrained",
                     "default.keras")


def speech(hops: int) -> np.ndarray:
    """test_speed_numpy's fixture speech (high-passed, pre-emphasised, digital silence inside), whole hops."""
    return speech_samples(hops * C.HOP_SIZE)


def with_kernels(monkeypatch, name, f, *args):
    monkeypatch.setenv("CQ_CODEC_KERNELS", name)
    return f(*args)


def test_kernel_choice(monkeypatch):
    monkeypatch.delenv("CQ_CODEC_KERNELS", raising=False)
    assert F.kernels() == "numba" and F.compiled()
    monkeypatch.setattr(F, "_numba_available", lambda: False)
    assert F.kernels() == "numpy" and not F.compiled()
    monkeypatch.setenv("CQ_CODEC_KERNELS", "numba")
    with pytest.raises(ValueError, match="CQ_CODEC_KERNELS=numba, but numba cannot be imported"):
        F.kernels()
    monkeypatch.setenv("CQ_CODEC_KERNELS", "fortran")
    with pytest.raises(ValueError, match=r"\$CQ_CODEC_KERNELS must be one of numba, numpy; got 'fortran'"):
        lpc.synthesis(np.zeros(C.HOP_SIZE), np.tile(np.eye(1, C.LPC_ORDER + 1), (1, C.NUM_SUBFRAMES, 1)))


def test_lpc_synthesis_agrees_inverts_and_streams(monkeypatch):
    y = speech(100)
    a_sub = lpc.subframe_lpc(lpc.analyze(y))
    e, _ = lpc.residual(y, a_sub)
    ref, ref_state = with_kernels(monkeypatch, "numpy", lpc.synthesis, e, a_sub)
    got, got_state = with_kernels(monkeypatch, "numba", lpc.synthesis, e, a_sub)
    peak = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-12 * peak and np.abs(got_state - ref_state).max() <= 1e-12 * peak
    assert np.abs(got - y).max() <= 1e-9 * peak          # the inverse of the residual filter
    # chunked calls with the carried state: the same numbers as one call (same path, bit-exact)
    state, parts = None, []
    for t in range(0, 100, 7):
        part, state = lpc.synthesis(e[t * C.HOP_SIZE:(t + 7) * C.HOP_SIZE], a_sub[t:t + 7], state)
        parts.append(part)
    np.testing.assert_array_equal(np.concatenate(parts), got)
    with pytest.raises(ValueError, match="a_sub must have shape"):
        lpc.synthesis(e[:C.HOP_SIZE], a_sub[:1, :, :5])


def test_pitch_synthesis_bit_identical(monkeypatch):
    ltp = LongTermPredictor(gain_levels=8, gain_step=0.125, threshold=0.4, hold=0.8)
    y = speech(80)
    e, _ = lpc.residual(y, lpc.subframe_lpc(lpc.analyze(y)))
    hist = ltp.initial_history()
    codes = ltp.analyze(hist, e, 0)
    assert codes[:, 1].any() and not codes[:, 1].all()
    e2 = ltp.analysis_filter(hist, e, codes)
    ref = with_kernels(monkeypatch, "numpy", ltp.synthesis_filter, hist, e2, codes)
    got = with_kernels(monkeypatch, "numba", ltp.synthesis_filter, hist, e2, codes)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_allclose(got, e, atol=1e-9 * np.abs(e).max())   # undoes the analysis filter


def test_postfilter_agrees_and_streams(monkeypatch):
    y = speech(120)
    a_sub = lpc.subframe_lpc(lpc.analyze(y))
    ref = with_kernels(monkeypatch, "numpy", Postfilter(), y, a_sub)
    got = with_kernels(monkeypatch, "numba", Postfilter(), y, a_sub)
    assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()
    pf = Postfilter()
    chunked = np.concatenate([pf(y[t * C.HOP_SIZE:(t + 16) * C.HOP_SIZE], a_sub[t:t + 16]) for t in range(0, 120, 16)])
    np.testing.assert_array_equal(chunked, got)


@pytest.mark.skipif(not os.path.exists(MODEL), reason="the shipped model is not in this checkout")
def test_shipped_model_decodes_alike_with_both_kernels(monkeypatch):
    """Pitch prediction, LPC synthesis and postfilter on a real model: the encoder does not use
    the kernels (same bytes); the decoded float32 audio agrees within 1e-5 of full scale."""
    import cq_codec
    x, _ = sf.read(SPEECH, dtype="float32")
    x = x[: 3 * C.SAMPLE_RATE]
    monkeypatch.setenv("CQ_CODEC_KERNELS", "numpy")
    codec = cq_codec.load(MODEL, backend="keras")
    data = codec.compress(x, C.SAMPLE_RATE, num_modules=3)
    ref, rate = codec.decompress(data)
    assert rate == C.SAMPLE_RATE
    monkeypatch.setenv("CQ_CODEC_KERNELS", "numba")
    assert codec.compress(x, C.SAMPLE_RATE, num_modules=3) == data
    got, _ = codec.decompress(data)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5


def test_kernels_that_do_not_load_fall_back_with_a_warning(monkeypatch):
    """Where lpc._kernels cannot be imported (e.g. numba finds no writable cache directory), the
    default is the scipy reference, said once in a warning; asking for numba is then an error."""
    import builtins
    import sys
    real_import = builtins.__import__

    def failing(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "lpc" and fromlist and "_kernels" in fromlist:
            raise RuntimeError("cannot cache function: no locator available")
        return real_import(name, globals, locals, fromlist, level)
    monkeypatch.setattr(F, "_NUMBA", [])
    monkeypatch.delitem(sys.modules, "lpc._kernels", raising=False)
    monkeypatch.delattr(lpc, "_kernels", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing)
    monkeypatch.delenv("CQ_CODEC_KERNELS", raising=False)
    with pytest.warns(UserWarning, match="compiled filters did not load .*no locator available"):
        assert F.kernels() == "numpy"
    monkeypatch.setenv("CQ_CODEC_KERNELS", "numba")
    with pytest.raises(ValueError, match="numba cannot be imported"):
        F.kernels()
