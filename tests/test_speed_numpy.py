"""The numpy side's speed-ups (docs/DESIGN.md "Speed, fourth pass") change no number: the blocked
postfilter pitch search, the blocked LTP analysis, the LTP synthesis that skips unpredicted
sub-frames and the batched context-model range encoder, each against the implementation it
replaced (kept here as the reference), bit for bit (tolerance 0) on fixed inputs."""

import os

import constriction
import numpy as np
import pytest
import scipy.fft
import soundfile as sf

import lpc
from cq_codec.bitstream import entropy as ent
from lpc.ltp import MAX_LAG, MIN_LAG, LongTermPredictor
from lpc.postfilter import PITCH_MAX, PITCH_MIN, Postfilter

SPEECH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "real_speech.wav")


def speech(n: int | None = None) -> np.ndarray:
    """The fixture's speech, high-passed and pre-emphasised (what the postfilter and the LTP see),
    with 0.2 s of digital silence inserted (ties everywhere)."""
    x, _ = sf.read(SPEECH)
    y = lpc.preemphasis(lpc.highpass(x)[0])[0] / 0.05
    y = np.concatenate([y[:20000], np.zeros(3200), y[20000:]])
    return y if n is None else y[:n]


# ---------------------------------------------------------------- references (the replaced code)

class ReferencePitch:
    """Postfilter._pitch before the fourth pass: one pass over all of a call's sub-frames."""

    def __init__(self, pf: Postfilter):
        self.pf, self.sub, self.hist = pf, 120, np.zeros(PITCH_MAX + 120)

    def __call__(self, y):
        sub, hist_len = self.sub, PITCH_MAX + self.sub
        buf = np.concatenate([self.hist, y])
        self.hist = buf[-hist_len:].copy()
        n_sub = len(y) // sub
        if n_sub == 0:
            return y
        starts = hist_len + sub * np.arange(n_sub)
        firsts = starts - PITCH_MAX
        n_lags = PITCH_MAX - PITCH_MIN + 1
        segs = np.lib.stride_tricks.sliding_window_view(buf, n_lags + sub - 1)[firsts]
        cur = buf[starts[:, None] + np.arange(sub)]
        spec = scipy.fft.rfft(segs.astype(np.float32), 448) * np.conj(scipy.fft.rfft(cur.astype(np.float32), 448))
        num = scipy.fft.irfft(spec, 448)[:, :n_lags].astype(np.float64)
        run = np.concatenate([np.zeros((n_sub, 1)), np.cumsum(np.square(segs), axis=1)], axis=1)
        den = (run[:, sub:] - run[:, :-sub]) * np.sum(np.square(cur), axis=1)[:, None]
        corr = num / np.sqrt(np.maximum(den, 1e-30))
        best = n_lags - 1 - np.argmax(corr[:, ::-1], axis=1)
        c = corr[np.arange(n_sub), best]
        g = np.where(c > self.pf.pitch_threshold, self.pf.pitch_gain * np.minimum(c, 1.0), 0.0)
        past = buf[(firsts + best)[:, None] + np.arange(sub)]
        out = (cur + g[:, None] * past) / (1.0 + g[:, None])
        return np.concatenate([out.reshape(-1), y[n_sub * sub:]])


def reference_analyze(ltp: LongTermPredictor, history, e, prev_lag=0):
    """LongTermPredictor.analyze before the fourth pass (all sub-frames in one batch)."""
    ext = np.concatenate([history, e])
    n, sub = len(e) // ltp.subframe, ltp.subframe
    out = np.zeros((n, 2), np.int32)
    span = MAX_LAG - MIN_LAG + sub
    rows = np.lib.stride_tricks.sliding_window_view(ext, MAX_LAG + sub)[::sub][:n]
    seg, target = rows[:, :span], rows[:, MAX_LAG:]
    dot = np.fft.irfft(np.fft.rfft(seg, 512) * np.conj(np.fft.rfft(target, 512)), 512)[:, : span - sub + 1]
    cs = np.concatenate([np.zeros((n, 1)), np.cumsum(seg * seg, axis=1)], axis=1)
    energy = np.maximum(cs[:, sub:] - cs[:, : span - sub + 1], 1e-30)
    score = np.where(dot > 0, dot * dot / energy, 0.0)
    best = np.argmax(score, axis=1)
    t_energy = np.einsum("ij,ij->i", target, target)

    def gain_index(d, en, te):
        corr = np.where(d > 0, d / np.sqrt(np.maximum(en * te, 1e-60)), 0.0)
        k = np.clip(np.rint(d / en / ltp.gain_step), 0, ltp.gain_levels - 1)
        return np.where(corr >= ltp.threshold, k, 0).astype(np.int64)

    rows_ = np.arange(n)
    k_best = gain_index(dot[rows_, best], energy[rows_, best], t_energy).tolist()
    best_l, s_best = best.tolist(), score[rows_, best].tolist()
    voiced = False
    for s in range(n):
        j, k = best_l[s], k_best[s]
        if ltp.hold and voiced:
            held = MAX_LAG - MIN_LAG - prev_lag
            if held != j and score[s, held] >= ltp.hold * s_best[s]:
                j, k = held, int(gain_index(dot[s, held], energy[s, held], t_energy[s]))
        lag_code = MAX_LAG - j - MIN_LAG if k else prev_lag
        out[s] = lag_code, k
        prev_lag, voiced = lag_code, k > 0
    return out


def reference_synthesis(ltp: LongTermPredictor, history, e2, codes):
    """LongTermPredictor.synthesis_filter before the fourth pass (a Python step per sub-frame)."""
    y = np.concatenate([history, np.zeros(len(e2))])
    for s, (lag_code, k) in enumerate(np.asarray(codes, np.int64)):
        p = MAX_LAG + s * ltp.subframe
        end = p + ltp.subframe
        if k == 0:
            y[p:end] = e2[p - MAX_LAG: end - MAX_LAG]
            continue
        lag, b = int(lag_code) + MIN_LAG, k * ltp.gain_step
        for q in range(p, end, lag):
            r = min(q + lag, end)
            y[q:r] = e2[q - MAX_LAG: r - MAX_LAG] + b * y[q - lag: r - lag]
    return y[MAX_LAG:]


def reference_context_payload(codes, model: ent.ContextModel) -> bytes:
    """ContextModel encoding before the fourth pass: one constriction call per symbol, with the
    context's own precomputed categorical model."""
    c = np.asarray(codes, np.int32).reshape(len(codes), -1)
    encoder = constriction.stream.queue.RangeEncoder()
    ctx = np.concatenate([np.zeros((1, c.shape[1]), np.int32), c[:-1] + 1])
    for row, crow in zip(c, ctx):
        for s, (x, k) in enumerate(zip(row, crow)):
            if model.alphabet_sizes[s] >= 2:
                m = constriction.stream.model.Categorical(model.tables[s][k].astype(np.float64) - 1.0, perfect=False)
                encoder.encode(int(x), m)
    return encoder.get_compressed().astype(">u4").tobytes()


# ---------------------------------------------------------------- postfilter

@pytest.mark.parametrize("call_sub_frames", [1000, 130, 64, 7])
def test_pitch_search_bit_identical(call_sub_frames):
    """Blocked (64 sub-frames) vs one batch, for call sizes below, at and above the block, and a
    trailing partial sub-frame; over speech with digital silence."""
    y = speech()
    y = y[: (len(y) // 120) * 120 - 37]
    pf = Postfilter()
    ref = ReferencePitch(Postfilter())
    step = call_sub_frames * 120
    for s in range(0, len(y), step):
        part = y[s:s + step]
        np.testing.assert_array_equal(pf._pitch(part), ref(part))


def test_postfilter_unchanged_across_chunkings():
    """The whole postfilter, chunked 1000 / 64 sub-frames per call, gives the same numbers."""
    y = speech(480 * 120)
    a_sub = lpc.subframe_lpc(lpc.analyze(y))
    outs = []
    for hops in (120, 16):
        pf = Postfilter()
        outs.append(np.concatenate([pf(y[t * 480:(t + hops) * 480], a_sub[t:t + hops])
                                    for t in range(0, 120, hops)]))
    np.testing.assert_array_equal(outs[0], outs[1])


# ---------------------------------------------------------------- long-term predictor

@pytest.mark.parametrize("cfg", [dict(threshold=0.4, hold=0.8), dict(threshold=0.3, hold=0.0),
                                 dict(threshold=0.1, hold=0.5)])
def test_ltp_analysis_and_synthesis_bit_identical(cfg):
    ltp = LongTermPredictor(gain_levels=8, gain_step=0.125, **cfg)
    y = speech()
    e = lpc.residual(y[: (len(y) // 480) * 480], lpc.subframe_lpc(lpc.analyze(y[: (len(y) // 480) * 480])))[0]
    hist = ltp.initial_history()
    for n_sub in (1, 63, 64, 65, 200, len(e) // 120):   # below, at and above the block
        part = e[: n_sub * 120]
        codes = ltp.analyze(hist, part, 5)
        np.testing.assert_array_equal(codes, reference_analyze(ltp, hist, part, 5))
    codes = ltp.analyze(hist, e, 0)
    assert codes[:, 1].any() and not codes[:, 1].all()   # predicted and unpredicted sub-frames
    e2 = ltp.analysis_filter(hist, e, codes)
    np.testing.assert_array_equal(ltp.synthesis_filter(hist, e2, codes), reference_synthesis(ltp, hist, e2, codes))


# ---------------------------------------------------------------- range coding

@pytest.mark.parametrize("alphabet,n", [(2, 1), (32, 2047), (32, 2048), (32, 4097), (21, 900), (289, 3000)])
def test_batched_context_encoder_same_words(alphabet, n):
    """Single-stream context models: the batched family encoder writes the per-symbol coder's
    words, on skewed tables (symbols of frequency 1 included) and runs of repeated symbols."""
    rng = np.random.default_rng(alphabet * 7 + n)
    w = rng.random((alphabet + 1, alphabet)) ** 4
    w[:, 0] = 0.0                                  # rare symbols: frequency 1 after quantization
    w[:, -1] += 1e-3
    model = ent.ContextModel([ent.quantize_weights(w)])
    codes = rng.integers(0, alphabet, n)
    codes[n // 3: n // 2] = alphabet - 1           # a run (one context over and over)
    codes[:: 17] = 0
    data = ent.encode(codes[:, None], model)
    assert data == reference_context_payload(codes[:, None], model)
    np.testing.assert_array_equal(ent.decode(data, n, model)[:, 0], codes)
