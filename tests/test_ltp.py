"""Open-loop long-term (pitch) prediction (lpc/ltp.py) and its side stream: the lag it finds, the
prediction gain, analysis/synthesis inverses, chunked = whole (bit-exact), the pitch codes'
bit-exact trip through `.nac` bytes with their bits counted, and clear errors."""

import io

import numpy as np
import pytest

import cq_codec
from cq_codec import inference
from cq_codec.bitstream import codec_stream as cs
from cq_codec.bitstream import entropy
from cq_codec.bitstream.container import NacReader
from cq_codec.codes import Codes
from cq_codec.models.cq import with_ltp
from lpc.ltp import MAX_LAG, MIN_LAG, LongTermPredictor
from test_api import ar_signal, make_model


def pulse_residual(period: int, n: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """A glottal-pulse-like residual: one pulse per `period` samples plus a little noise."""
    rng = np.random.default_rng(seed)
    e = noise * rng.standard_normal(n)
    e[::period] += 1.0
    return e


def voiced(seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """Speech-like voiced signal: a pulse train through a resonant filter, plus breath noise."""
    from scipy.signal import lfilter
    n = int(16000 * seconds)
    period = int(round(16000 / f0))
    x = lfilter([1.0], [1.0, -1.3, 0.7], pulse_residual(period, n, seed, noise=0.02))
    return (0.1 * x / x.std()).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    m = with_ltp(make_model(0))
    inference.fit_entropy_tables(m, [voiced(0.6, 110 + 20 * k, k) for k in range(3)] + [ar_signal(0.5, 9)])
    return m


def test_finds_the_pitch_lag_and_removes_the_pulses():
    ltp = LongTermPredictor()
    e = pulse_residual(230, 120 * 40, seed=1, noise=0.01)   # one lag in range (460 > MAX_LAG)
    hist, x = e[:MAX_LAG], e[MAX_LAG: MAX_LAG + 120 * 30]
    codes = ltp.analyze(hist, x)
    voiced_ = codes[:, 1] > 0
    # Sub-frames holding a pulse are predicted (those between pulses hold only noise).
    pulses = np.zeros(len(codes), bool)
    at = np.arange(0, len(e), 230) - MAX_LAG
    pulses[at[(at >= 0) & (at < len(x))] // 120] = True
    assert voiced_[pulses].mean() > 0.9 and voiced_[~pulses].mean() < 0.2
    assert np.all(codes[voiced_ & pulses, 0] + MIN_LAG == 230)
    e2 = ltp.analysis_filter(hist, x, codes)
    assert np.sum(e2 ** 2) < 0.2 * np.sum(x ** 2)    # > 7 dB prediction gain on a periodic residual


def test_noise_is_not_predicted():
    ltp = LongTermPredictor(threshold=0.3)
    e = np.random.default_rng(3).standard_normal(MAX_LAG + 120 * 20)
    codes = ltp.analyze(e[:MAX_LAG], e[MAX_LAG:], prev_lag=17)
    assert (codes[:, 1] == 0).mean() > 0.8
    # Unpredicted sub-frames repeat the previous lag code (cheap for the context model).
    off = np.flatnonzero(codes[:, 1] == 0)
    prev = np.concatenate([[17], codes[:-1, 0]])
    assert np.array_equal(codes[off, 0], prev[off])


def test_synthesis_inverts_analysis():
    ltp = LongTermPredictor()
    e = pulse_residual(97, MAX_LAG + 120 * 16, seed=2)
    hist, x = e[:MAX_LAG], e[MAX_LAG:]
    codes = ltp.analyze(hist, x)
    y = ltp.synthesis_filter(hist, ltp.analysis_filter(hist, x, codes), codes)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-12)   # float64: (a - c) + c within rounding


def test_synthesis_is_the_same_for_any_split():
    ltp = LongTermPredictor()
    rng = np.random.default_rng(4)
    e2 = rng.standard_normal(120 * 12)
    codes = np.stack([rng.integers(0, MAX_LAG - MIN_LAG + 1, 12), rng.integers(0, 8, 12)], 1).astype(np.int32)
    whole = ltp.synthesis_filter(np.zeros(MAX_LAG), e2, codes)
    hist, parts = np.zeros(MAX_LAG), []
    for a, b in [(0, 1), (1, 5), (5, 12)]:
        y = ltp.synthesis_filter(hist, e2[a * 120: b * 120], codes[a:b])
        hist = np.concatenate([hist, y])[-MAX_LAG:]
        parts.append(y)
    assert np.array_equal(np.concatenate(parts), whole)      # same arithmetic, bit-exact


@pytest.mark.parametrize("kwargs, match", [({"gain_levels": 1}, "gain_levels"), ({"gain_levels": 9}, "below 1"),
                                           ({"threshold": 1.0}, "threshold"), ({"gain_step": 0.0}, "below 1")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LongTermPredictor(**kwargs)


def test_bad_codes_and_shapes_are_refused():
    ltp = LongTermPredictor()
    with pytest.raises(ValueError, match="alphabets"):
        ltp.synthesis_filter(np.zeros(MAX_LAG), np.zeros(120), np.array([[289, 0]], np.int32))
    with pytest.raises(ValueError, match="sub-frames"):
        ltp.analyze(np.zeros(MAX_LAG), np.zeros(100))
    with pytest.raises(ValueError, match="history"):
        ltp.analysis_filter(np.zeros(10), np.zeros(120), np.zeros((1, 2), np.int32))


def test_codec_codes_trip_through_the_file_bit_exact(model, tmp_path):
    model.save(str(tmp_path / "ltp.keras"))
    codec = cq_codec.load(str(tmp_path / "ltp.keras"), frames_per_chunk=5)
    assert codec.model.get_config()["ltp"] == model.get_config()["ltp"]
    wav = voiced(1.2, 125, 7)
    codes = codec.encode(wav, 16000)
    assert codes.pitch.shape == (codes.lsf.shape[0], 4, 2) and codes.pitch.dtype == np.int32
    assert (codes.pitch[..., 1] > 0).mean() > 0.5                      # a voiced signal is predicted
    data = codec.compress(wav, 16000)
    info = cs.check_metadata(NacReader(io.BytesIO(data)).metadata, codec.model, codec.sha256)
    assert info["layout"]["pitch"] == {"subframes": 4, "alphabet_sizes": [MAX_LAG - MIN_LAG + 1, 8]}
    models = cs.entropy_models(codec.model)
    got = [cs.decode_chunk(p, min(5, info["num_frames"] - 5 * i), info["num_active"], models, info["layout"])
           for i, p in enumerate(NacReader(io.BytesIO(data)))]
    joined = Codes.join(got, info["num_samples"])
    assert np.array_equal(joined.pitch, codes.pitch) and np.array_equal(joined.lsf, codes.lsf)
    assert all(np.array_equal(a, b) for a, b in zip(joined.modules, codes.modules))
    audio, _ = codec.decompress(data)
    np.testing.assert_array_equal(audio, codec.decode(codes))
    # The pitch codes' bits are in the payload: the information content with them exceeds the
    # one without by exactly their own, and the payload carries it.
    chunks = codes.chunks(5)
    pitch_bits = sum(entropy.estimate_bits(cs._side_rows(c.pitch, [289, 8]), models.pitch) for c in chunks)
    total = sum(cs.chunk_bits(c, models) for c in chunks)
    without = sum(cs.chunk_bits(c._replace(pitch=None), models._replace(pitch=None)) for c in chunks)
    assert pitch_bits > 0 and abs(total - without - pitch_bits) < 1e-6
    assert total <= 8 * sum(len(cs.encode_chunk(c, models)) for c in chunks) + 32 * len(chunks)


def test_streaming_equals_whole_file(model):
    wav = voiced(1.0, 150, 8)
    whole = inference.encode(model, wav, frames_per_chunk=4)
    enc = inference.StreamEncoder(model, frames_per_chunk=4)
    chunks, s = [], 0
    for n in [5, 480, 2222, 1, 1031] * 10:
        if s >= wav.size:
            break
        chunks += enc.push(wav[s:s + n])
        s += n
    chunks += enc.finish()
    streamed = Codes.join(chunks, enc.num_samples)
    assert np.array_equal(streamed.pitch, whole.pitch) and np.array_equal(streamed.lsf, whole.lsf)
    assert all(np.array_equal(a, b) for a, b in zip(streamed.modules, whole.modules))
    dec = inference.StreamDecoder(model, whole.num_samples)
    pieces = np.concatenate([dec.push(c) for c in whole.chunks(3)])
    # Other chunk sizes give the network other batch shapes, whose float32 results may differ in
    # the last bit (oneDNN kernels); the pitch synthesis carries its state across chunks, so the
    # audio agrees to float32 rounding, not beyond.
    other = inference.decode(model, whole, frames_per_chunk=7)
    np.testing.assert_allclose(pieces, other, rtol=0, atol=1e-5 * np.abs(other).max())


def test_decoder_refuses_missing_pitch_codes(model):
    chunk = inference.encode(model, voiced(0.3)).chunks()[0]
    with pytest.raises(ValueError, match="pitch"):
        inference.StreamDecoder(model).push(chunk._replace(pitch=None))
    with pytest.raises(ValueError, match="pitch"):
        cs.encode_chunk(chunk._replace(pitch=None), cs.entropy_models(model))
    with pytest.raises(ValueError, match="ltp codes"):
        inference.StreamDecoder(model).push(chunk._replace(pitch=chunk.pitch[:, :3]))


def test_ltp_off_leaves_the_model_as_before():
    m = make_model(0)
    assert m.ltp is None and "ltp" not in m.get_config() and "pitch" not in cs.code_layout(m)


def test_hold_keeps_the_lag_when_it_predicts_nearly_as_well():
    from scipy.signal import lfilter
    rng = np.random.default_rng(5)
    # A residual whose pitch period drifts 150 -> 160 samples: the best lag moves by a sample now
    # and then; holding the previous lag while it scores >= 0.9 x the best changes it less often.
    t = np.cumsum(1.0 / np.linspace(150, 160, 16000))
    e = np.diff(np.floor(t), prepend=0.0) + 0.02 * rng.standard_normal(16000)
    e = lfilter([1.0], [1.0, -0.5], e)
    n = (len(e) - MAX_LAG) // 120 * 120
    free = LongTermPredictor().analyze(e[:MAX_LAG], e[MAX_LAG: MAX_LAG + n])
    held = LongTermPredictor(hold=0.9).analyze(e[:MAX_LAG], e[MAX_LAG: MAX_LAG + n])
    changes = lambda c: int(np.count_nonzero(np.diff(c[:, 0])))   # noqa: E731
    assert changes(held) < changes(free)
    assert (held[:, 1] > 0).mean() >= (free[:, 1] > 0).mean() - 0.05
    assert LongTermPredictor(hold=0.9).get_config()["hold"] == 0.9 and "hold" not in LongTermPredictor().get_config()
