"""Property tests of the LPC front end (lpc/): numpy reference and TensorFlow ops."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402
import scipy.signal  # noqa: E402
import soundfile as sf  # noqa: E402

import constants as C  # noqa: E402
import lpc  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "real_speech.wav")
P = C.LPC_ORDER


@pytest.fixture(scope="module")
def speech():
    x, sr = sf.read(FIXTURE, dtype="float64")
    assert sr == C.SAMPLE_RATE and x.ndim == 1
    hops = len(x) // C.HOP_SIZE
    return x[:hops * C.HOP_SIZE]


@pytest.fixture(scope="module")
def chain(speech):
    """highpass -> preemphasis -> analysis -> residual (numpy, whole signal)."""
    hp, _ = lpc.highpass(speech)
    pre, _ = lpc.preemphasis(hp)
    lsf = lpc.analyze(pre)
    a_sub = lpc.subframe_lpc(lsf)
    e, _ = lpc.residual(pre, a_sub)
    return dict(hp=hp, pre=pre, lsf=lsf, a_sub=a_sub, e=e)


def _random_lsf(rng, shape):
    return lpc.repair_lsf(np.sort(rng.uniform(0.0, np.pi, shape + (P,)), axis=-1))


def _max_root_radius(a):
    """Largest |root| of A(z) for a [N, P + 1] (companion-matrix eigenvalues, all at once)."""
    comp = np.zeros(a.shape[:-1] + (P, P))
    comp[..., 0, :] = -a[..., 1:]
    comp[..., np.arange(1, P), np.arange(P - 1)] = 1.0
    return np.abs(np.linalg.eigvals(comp)).max()


# ---------------------------------------------------------------- pre-processing and framing

def test_highpass_is_butterworth_at_cutoff():
    b, a = lpc.highpass_coefficients()
    eb, ea = scipy.signal.butter(2, C.HIGHPASS_CUTOFF_HZ, "highpass", fs=C.SAMPLE_RATE)
    np.testing.assert_allclose(b, eb)
    np.testing.assert_allclose(a, ea)
    _, h = scipy.signal.freqz(b, a, worN=[0.0, C.HIGHPASS_CUTOFF_HZ, 1000.0], fs=C.SAMPLE_RATE)
    np.testing.assert_allclose(np.abs(h), [0.0, np.sqrt(0.5), 1.0], atol=1e-3)
    y, _ = lpc.highpass(np.ones(16000))
    assert abs(y[-1000:]).max() < 1e-3  # DC removed


def test_deemphasis_inverts_preemphasis():
    x = np.random.default_rng(0).standard_normal(1000)
    y, _ = lpc.preemphasis(x)
    np.testing.assert_allclose(y[1:], x[1:] - C.PREEMPHASIS * x[:-1])
    back, _ = lpc.deemphasis(y)
    np.testing.assert_allclose(back, x, atol=1e-12)


def test_frame_window_is_complementary():
    w = lpc.frame_window()
    assert w.shape == (C.FRAME_SIZE,)
    np.testing.assert_allclose(w[-C.OVERLAP:] + w[:C.OVERLAP], 1.0, atol=1e-15)
    np.testing.assert_array_equal(w[C.OVERLAP:C.HOP_SIZE], 1.0)
    assert np.all(np.diff(w[:C.OVERLAP]) > 0)


def test_frame_signal_overlap_add_reconstructs_interior():
    x = np.random.default_rng(1).standard_normal(7 * C.HOP_SIZE + 100)
    frames = lpc.frame_signal(x, 7)
    assert frames.shape == (7, C.FRAME_SIZE)
    np.testing.assert_allclose(frames[2], x[960:960 + C.FRAME_SIZE] * lpc.frame_window())
    np.testing.assert_array_equal(lpc.frame_signal(x[:10], 2)[1], 0.0)  # zero padded
    y = lpc.overlap_add(frames)
    assert y.shape == (6 * C.HOP_SIZE + C.FRAME_SIZE,)
    np.testing.assert_allclose(y[C.OVERLAP:7 * C.HOP_SIZE], x[C.OVERLAP:7 * C.HOP_SIZE],
                               atol=1e-12)
    np.testing.assert_allclose(y[:C.OVERLAP], x[:C.OVERLAP] * lpc.frame_window()[:C.OVERLAP])


# ---------------------------------------------------------------- analysis

def test_levinson_solves_normal_equations_vectorised():
    rng = np.random.default_rng(2)
    frames = rng.standard_normal((3, 2, C.LPC_WINDOW)) * lpc.analysis_window()
    r = lpc.autocorrelation(frames, P)
    assert r.shape == (3, 2, P + 1)
    a, refl, err = lpc.levinson(r)
    for i in range(3):
        for j in range(2):
            sol = scipy.linalg.solve_toeplitz(r[i, j, :P], -r[i, j, 1:])
            np.testing.assert_allclose(a[i, j, 1:], sol, atol=1e-10)
            np.testing.assert_allclose(err[i, j], r[i, j] @ a[i, j], rtol=1e-10)
    assert np.all(np.abs(refl) < 1) and np.all(err > 0)
    np.testing.assert_allclose(refl[..., -1], a[..., -1])


def test_lpc_matches_librosa_without_lag_window(chain):
    # librosa.lpc uses Burg's method; on frames tapered by the analysis window it coincides
    # with the autocorrelation method up to end effects (measured max difference ~1e-4).
    starts = [8000, 20000, 30000, 45000]
    frames = np.stack([chain["pre"][s:s + C.LPC_WINDOW] for s in starts])
    ours = lpc.lpc_from_frames(frames, use_lag_window=False)
    for frame, a in zip(frames, ours):
        ref = librosa.lpc(frame * lpc.analysis_window(), order=P)
        np.testing.assert_allclose(a, ref, atol=5e-4)
    assert np.abs(ours[:, 1:]).max() > 0.5  # real speech spectra, not near-flat filters


def test_analysis_window_shape():
    w = lpc.analysis_window()
    rise = C.LPC_WINDOW_RISE
    assert w.shape == (C.LPC_WINDOW,)
    np.testing.assert_allclose(w, w[::-1])
    np.testing.assert_array_equal(w[rise:-rise], 1.0)
    np.testing.assert_allclose(w[:rise] + w[:rise][::-1], 1.0, atol=1e-15)  # Hann half
    np.testing.assert_allclose(w[rise // 2 - 1:rise // 2 + 1].mean(), 0.5, atol=1e-4)
    assert np.all(np.diff(w[:rise]) > 0) and 0 < w[0] < 1e-3
    lw = lpc.lag_window(P)
    assert lw[0] == C.WHITE_NOISE_CORRECTION and np.all(np.diff(lw[1:]) < 0)


def test_analyze_window_is_centred_on_hop(chain):
    pre = chain["pre"]
    lsf = lpc.analyze(pre)
    assert lsf.shape == (int(np.ceil(len(pre) / C.HOP_SIZE)), P)
    left = C.LPC_WINDOW // 2 - C.HOP_SIZE // 2
    padded = np.concatenate([np.zeros(left), pre, np.zeros(C.LPC_WINDOW)])
    for t in (0, 17, lsf.shape[0] - 1):
        frame = padded[t * C.HOP_SIZE:t * C.HOP_SIZE + C.LPC_WINDOW]
        np.testing.assert_allclose(lsf[t], lpc.lpc_to_lsf(lpc.lpc_from_frames(frame)),
                                   atol=1e-12)
    assert lpc.analyze(pre, num_hops=3).shape == (3, P)


def test_silent_frames_give_flat_filter():
    x = np.zeros(5 * C.HOP_SIZE)
    x[-C.HOP_SIZE:] = np.random.default_rng(3).standard_normal(C.HOP_SIZE)
    lsf = lpc.analyze(x)
    assert np.all(np.isfinite(lsf)) and np.all(np.diff(lsf, axis=-1) > 0)
    a = lpc.lsf_to_lpc(lsf[0])
    np.testing.assert_allclose(a, np.eye(1, P + 1)[0], atol=1e-9)
    a, refl, err = lpc.levinson(np.zeros((2, P + 1)))
    np.testing.assert_array_equal(a, np.tile(np.eye(1, P + 1), (2, 1)))
    np.testing.assert_array_equal(err, 0.0)


def test_subframe_lpc_interpolates_lsfs(chain):
    lsf = chain["lsf"][10:14]
    a_sub = lpc.subframe_lpc(lsf)
    assert a_sub.shape == (4, C.NUM_SUBFRAMES, P + 1)
    np.testing.assert_allclose(a_sub[:, -1], lpc.lsf_to_lpc(lsf))
    np.testing.assert_allclose(a_sub[0], np.tile(lpc.lsf_to_lpc(lsf[0]), (C.NUM_SUBFRAMES, 1)))
    np.testing.assert_allclose(a_sub[2, 1], lpc.lsf_to_lpc(lsf[1] + 0.5 * (lsf[2] - lsf[1])))
    with_prev = lpc.subframe_lpc(lsf[1:], lsf[0])
    np.testing.assert_allclose(with_prev, a_sub[1:])


# ---------------------------------------------------------------- LSF conversion

def test_lsf_lpc_lsf_round_trip(chain):
    rng = np.random.default_rng(4)
    for lsf in (chain["lsf"], _random_lsf(rng, (50, 3))):
        back = lpc.lpc_to_lsf(lpc.lsf_to_lpc(lsf))
        assert back.shape == lsf.shape
        np.testing.assert_allclose(back, lsf, atol=1e-6)


def test_lpc_lsf_lpc_round_trip(chain):
    a = lpc.lpc_from_frames(chain["pre"][:50 * C.LPC_WINDOW].reshape(50, C.LPC_WINDOW))
    np.testing.assert_allclose(lpc.lsf_to_lpc(lpc.lpc_to_lsf(a)), a, atol=1e-8)


def test_lpc_to_lsf_is_robust_to_non_minimum_phase_input():
    rng = np.random.default_rng(9)
    a = np.concatenate([np.ones((100, 1)), rng.normal(0.0, 3.0, (100, P))], axis=-1)
    assert _max_root_radius(a) > 1.0
    lsf = lpc.lpc_to_lsf(a)
    assert np.all(np.isfinite(lsf)) and np.all(np.diff(lsf, axis=-1) >= C.LSF_MIN_GAP - 1e-12)
    assert _max_root_radius(lpc.lsf_to_lpc(lsf)) < 1.0


def test_repair_lsf_orders_and_spaces():
    rng = np.random.default_rng(5)
    raw = rng.uniform(-0.5, 4.0, (200, P))
    raw[:20] = 1.0  # collapsed
    fixed = lpc.repair_lsf(raw)
    assert np.all(np.diff(fixed, axis=-1) >= C.LSF_MIN_GAP - 1e-12)
    assert np.all(fixed[:, 0] >= C.LSF_MIN_GAP - 1e-12)
    assert np.all(fixed[:, -1] <= np.pi - C.LSF_MIN_GAP + 1e-12)
    good = _random_lsf(rng, (20,))
    np.testing.assert_array_equal(lpc.repair_lsf(good), good)


def test_repair_lsf_numpy_and_tf_twins_agree():
    """One algorithm, two twins: float32 numpy (the decoder's) equals the TF graph's bit for bit
    (the same elementwise max / add / min, each correctly rounded, in the same order), and the
    float64 numpy version agrees to float32 rounding."""
    import tensorflow as tf
    rng = np.random.default_rng(8)
    raw = rng.uniform(-0.5, 3.8, (300, P)).astype(np.float32)
    raw[:30] = 1.0                                      # collapsed
    raw[30:60] = np.linspace(3.1, 3.14, P)              # crowded under pi: the ceilings bind
    raw[60:] = np.sort(raw[60:], -1)
    got32 = lpc.repair_lsf(raw)
    assert got32.dtype == np.float32
    np.testing.assert_array_equal(got32, lpc.tf_ops.repair_lsf_tf(tf.constant(raw)).numpy())
    got64 = lpc.repair_lsf(raw.astype(np.float64))
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got32, got64, rtol=0, atol=4e-7)   # float32 ulp near pi: 2.4e-7
    for out in (got32, got64):
        assert np.all(np.diff(out, axis=-1) >= C.LSF_MIN_GAP * (1 - 1e-4))
        assert np.all(out[:, 0] >= C.LSF_MIN_GAP) and np.all(out[:, -1] <= np.pi - C.LSF_MIN_GAP + 1e-6)
    np.testing.assert_array_equal(lpc.repair_lsf(got64), got64)      # a fixed point


def test_quantized_lsfs_give_minimum_phase_filters(chain):
    rng = np.random.default_rng(6)
    lsf = np.concatenate([chain["lsf"], _random_lsf(rng, (300,))])
    lsf = lsf + rng.normal(0.0, 0.05, lsf.shape)  # crude quantization noise, may reorder
    for step in (0.01, 0.05, 0.2):
        q = lpc.repair_lsf(np.round(lsf / step) * step)
        assert _max_root_radius(lpc.lsf_to_lpc(q)) < 1.0


def test_analysis_filters_are_minimum_phase(chain):
    assert _max_root_radius(chain["a_sub"].reshape(-1, P + 1)) < 1.0


# ---------------------------------------------------------------- residual and synthesis

def test_chain_reconstructs_real_speech(chain):
    a_sub, e = chain["a_sub"], chain["e"]
    gain = 10 * np.log10(np.sum(chain["pre"] ** 2) / np.sum(e ** 2))
    assert gain > 6.0  # the filters really whiten the speech
    y, _ = lpc.synthesis(e, a_sub)
    out, _ = lpc.deemphasis(y)
    snr = 10 * np.log10(np.sum(chain["hp"] ** 2) / np.sum((out - chain["hp"]) ** 2))
    assert snr >= 60.0


def test_residual_is_the_switched_fir(chain):
    a_sub, pre = chain["a_sub"], chain["pre"]
    sub = C.SUBFRAME_SIZE
    s = 37  # an arbitrary sub-frame
    a = a_sub.reshape(-1, P + 1)[s]
    expected = np.convolve(pre[s * sub - P:(s + 1) * sub], a, mode="valid")
    np.testing.assert_allclose(chain["e"][s * sub:(s + 1) * sub], expected, atol=1e-12)


def _chunks(rng, total_hops):
    cuts = [0]
    while cuts[-1] < total_hops:
        cuts.append(min(total_hops, cuts[-1] + int(rng.integers(1, 6))))
    return list(zip(cuts[:-1], cuts[1:]))


def test_streaming_with_state_equals_whole_signal(speech, chain):
    rng = np.random.default_rng(7)
    a_sub, hop = chain["a_sub"], C.HOP_SIZE
    out = {k: [] for k in ("hp", "pre", "e", "y", "de")}
    st = dict.fromkeys(out)
    for t0, t1 in _chunks(rng, a_sub.shape[0]):
        hp, st["hp"] = lpc.highpass(speech[t0 * hop:t1 * hop], st["hp"])
        pre, st["pre"] = lpc.preemphasis(hp, st["pre"])
        e, st["e"] = lpc.residual(pre, a_sub[t0:t1], st["e"])
        y, st["y"] = lpc.synthesis(e, a_sub[t0:t1], st["y"])
        de, st["de"] = lpc.deemphasis(y, st["de"])
        for k, v in zip(out, (hp, pre, e, y, de)):
            out[k].append(v)
    out = {k: np.concatenate(v) for k, v in out.items()}
    np.testing.assert_allclose(out["hp"], chain["hp"], atol=1e-12)
    np.testing.assert_allclose(out["pre"], chain["pre"], atol=1e-12)
    np.testing.assert_allclose(out["e"], chain["e"], atol=1e-12)
    whole_y, _ = lpc.synthesis(chain["e"], a_sub)
    np.testing.assert_allclose(out["y"], whole_y, atol=1e-12)
    np.testing.assert_allclose(out["de"], lpc.deemphasis(whole_y)[0], atol=1e-12)
    np.testing.assert_allclose(st["e"], chain["pre"][-P:])
    np.testing.assert_allclose(st["y"], whole_y[-P:])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, match", [
    (lambda: lpc.highpass(np.ones((2, 3))), "dimensions"),
    (lambda: lpc.highpass(np.array([1.0, np.nan])), "NaN"),
    (lambda: lpc.preemphasis(np.ones(4), state=np.ones(3)), "state"),
    (lambda: lpc.residual(np.ones(100), np.ones((1, 4, 17))), "480"),
    (lambda: lpc.residual(np.ones(480), np.ones((1, 3, 17))), "a_sub"),
    (lambda: lpc.synthesis(np.ones(480), np.full((1, 4, 17), 2.0)), "a_sub"),
    (lambda: lpc.synthesis(np.ones(480), np.ones((1, 4, 17)), np.ones(5)), "state"),
    (lambda: lpc.lsf_to_lpc(np.ones(15)), "lsf"),
    (lambda: lpc.lpc_to_lsf(np.full(17, np.inf)), "NaN"),
    (lambda: lpc.lpc_to_lsf(np.zeros(17)), "a\\[..., 0\\]"),
    (lambda: lpc.repair_lsf(np.ones(16), min_gap=1.0), "min_gap"),
    (lambda: lpc.analyze(np.ones(100), num_hops=0), "num_hops"),
    (lambda: lpc.subframe_lpc(np.ones((3, 16)), np.ones(4)), "lsf_prev"),
    (lambda: lpc.frame_signal(np.ones(100), 0), "num_frames"),
    (lambda: lpc.overlap_add(np.ones((3, 500))), "frames"),
    (lambda: lpc.levinson(np.array([np.nan, 1.0])), "NaN"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_numeric_input_raises_type_error():
    with pytest.raises(TypeError, match="numeric"):
        lpc.highpass(np.array(["a", "b"]))


# ---------------------------------------------------------------- TensorFlow ops

tf = pytest.importorskip("tensorflow")


def test_lsf_to_lpc_tf_matches_numpy(chain):
    lsf = chain["lsf"].astype(np.float32)
    a_tf = lpc.lsf_to_lpc_tf(lsf)
    assert a_tf.dtype == tf.float32 and a_tf.shape == (lsf.shape[0], P + 1)
    np.testing.assert_allclose(a_tf.numpy(), lpc.lsf_to_lpc(lsf.astype(np.float64)), atol=1e-5)
    batched = lpc.lsf_to_lpc_tf(lsf[:12].reshape(3, 4, P))
    np.testing.assert_allclose(batched.numpy().reshape(12, P + 1), a_tf.numpy()[:12])


def test_subframe_lsf_tf_matches_subframe_lpc(chain):
    lsf = chain["lsf"][20:22].astype(np.float32)
    sub = lpc.subframe_lsf_tf(lsf[0], lsf[1])
    assert sub.shape == (C.NUM_SUBFRAMES, P)
    np.testing.assert_allclose(lpc.lsf_to_lpc_tf(sub).numpy(),
                               lpc.subframe_lpc(lsf[1:].astype(np.float64), lsf[0])[0],
                               atol=1e-5)


def _codec_frames(chain, hops):
    """Numpy reference of one training example per hop t: x [16 + 512], lsf [3, 16]."""
    pre = chain["pre"].astype(np.float32).astype(np.float64)
    lsf = chain["lsf"].astype(np.float32).astype(np.float64)
    x = np.stack([pre[t * C.HOP_SIZE - P:t * C.HOP_SIZE + C.FRAME_SIZE] for t in hops])
    lsf3 = np.stack([lsf[t - 1:t + 2] for t in hops])
    return pre, lsf, x, lsf3


def test_per_sample_filters_and_residual_tf_match_numpy(chain):
    hops = [5, 30, 61]
    pre, lsf, x, lsf3 = _codec_frames(chain, hops)
    a = lpc.per_sample_filters_tf(lsf3.astype(np.float32))
    assert a.shape == (len(hops), C.FRAME_SIZE, P + 1) and a.dtype == tf.float32
    e_tf = lpc.residual_tf(x.astype(np.float32), a).numpy()
    assert e_tf.shape == (len(hops), C.FRAME_SIZE)
    for b, t in enumerate(hops):
        a_sub = lpc.subframe_lpc(lsf[t:t + 2], lsf[t - 1])  # hops t and t + 1
        per_sample = np.repeat(a_sub.reshape(-1, P + 1), C.SUBFRAME_SIZE, axis=0)
        np.testing.assert_allclose(a.numpy()[b], per_sample[:C.FRAME_SIZE], atol=1e-5)
        seg = pre[t * C.HOP_SIZE:(t + 2) * C.HOP_SIZE]
        e_np, _ = lpc.residual(seg, a_sub, state=pre[t * C.HOP_SIZE - P:t * C.HOP_SIZE])
        np.testing.assert_allclose(e_tf[b], e_np[:C.FRAME_SIZE], atol=1e-5)


def test_synthesis_error_tf_matches_lfilter(chain):
    rng = np.random.default_rng(8)
    a = chain["a_sub"][[10, 40, 70], 2]
    err = rng.standard_normal((3, C.FRAME_SIZE))
    got = lpc.synthesis_error_tf(err.astype(np.float32), a.astype(np.float32)).numpy()
    want = np.stack([scipy.signal.lfilter([1.0], a_i, e_i) for a_i, e_i in zip(a, err)])
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    assert got.shape == (3, C.FRAME_SIZE)


def test_tf_ops_run_in_tf_function_with_unknown_batch(chain):
    _, _, x, lsf3 = _codec_frames(chain, [5, 6])

    @tf.function(input_signature=[tf.TensorSpec([None, P + C.FRAME_SIZE], tf.float32),
                                  tf.TensorSpec([None, 3, P], tf.float32)])
    def fn(x, lsf):
        return lpc.residual_tf(x, lpc.per_sample_filters_tf(lsf))

    eager = lpc.residual_tf(x.astype(np.float32), lpc.per_sample_filters_tf(lsf3))
    np.testing.assert_allclose(fn(x.astype(np.float32), lsf3.astype(np.float32)).numpy(),
                               eager.numpy(), atol=1e-6)


def test_gradients_wrt_lsf_are_finite_and_non_zero(chain):
    _, _, x, lsf3 = _codec_frames(chain, [12, 50])
    lsf = tf.Variable(lsf3.astype(np.float32))
    with tf.GradientTape() as tape:
        a = lpc.per_sample_filters_tf(lsf)
        e = lpc.residual_tf(x.astype(np.float32), a)
        y = lpc.synthesis_error_tf(e, a[:, 0])
        loss = tf.reduce_mean(e ** 2) + 1e-3 * tf.reduce_mean(y ** 2)
    grad = tape.gradient(loss, lsf).numpy()
    assert np.all(np.isfinite(grad))
    assert np.all(np.abs(grad[:, :2]).max(axis=-1) > 0)  # hops t-1 and t shape the frame
    with tf.GradientTape() as tape:
        a = lpc.lsf_to_lpc_tf(lsf)
        loss = tf.reduce_sum(a ** 2)
    g = tape.gradient(loss, lsf).numpy()
    assert np.all(np.isfinite(g)) and np.count_nonzero(g) == g.size


@pytest.mark.parametrize("call, match", [
    (lambda: lpc.lsf_to_lpc_tf(np.ones((2, 15), np.float32)), "lsf"),
    (lambda: lpc.lsf_to_lpc_tf(np.full((2, 16), np.nan, np.float32)), "NaN"),
    (lambda: lpc.per_sample_filters_tf(np.ones((2, 2, 16), np.float32)), "lsf"),
    (lambda: lpc.residual_tf(np.ones((2, 500), np.float32), np.ones((2, 512, 17), np.float32)),
     "16 \\+ N"),
    (lambda: lpc.residual_tf(np.ones((2, 528), np.float32), np.ones((2, 512, 16), np.float32)),
     "a"),
    (lambda: lpc.synthesis_error_tf(np.ones((2, 512), np.float32), np.ones((2, 16), np.float32)),
     "a"),
    (lambda: lpc.subframe_lsf_tf(np.ones((2, 16), np.float32), np.ones((3, 16), np.float32)),
     "must match"),
])
def test_tf_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------- decoder postfilter
from lpc.postfilter import Postfilter  # noqa: E402


@pytest.mark.parametrize("kwargs", [{}, {"gamma_num": 0.6, "gamma_den": 0.8, "tilt": 0.8}])
def test_postfilter_streams_exactly(speech, kwargs):
    lsf = lpc.analyze(speech[:40 * C.HOP_SIZE])
    a_sub = lpc.subframe_lpc(lsf)
    y = speech[:40 * C.HOP_SIZE]
    whole = Postfilter(**kwargs)(y, a_sub)
    pf = Postfilter(**kwargs)
    parts = [pf(y[s * C.HOP_SIZE:e * C.HOP_SIZE], a_sub[s:e]) for s, e in ((0, 7), (7, 8), (8, 40))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-12)
    assert whole.shape == y.shape and not np.allclose(whole, y)


def test_postfilter_off_settings_are_the_identity(speech):
    y = speech[:10 * C.HOP_SIZE]
    a_sub = lpc.subframe_lpc(lpc.analyze(y))
    out = Postfilter(gamma_num=0.8, gamma_den=0.8, pitch_gain=0.0)(y, a_sub)
    np.testing.assert_allclose(out, y, rtol=1e-9, atol=1e-12)


def test_postfilter_keeps_loudness_and_deepens_formant_valleys(speech):
    y = speech[:60 * C.HOP_SIZE]
    a_sub = lpc.subframe_lpc(lpc.analyze(y))
    f_in = np.abs(np.fft.rfft(y.reshape(-1, C.HOP_SIZE) * np.hanning(C.HOP_SIZE), axis=1))
    loud = np.sum(f_in ** 2, axis=1) > np.median(np.sum(f_in ** 2, axis=1))
    spread = lambda f: np.std(20 * np.log10(f[loud] + 1e-9), axis=1).mean()
    # A strong setting deepens the valleys by > 1 dB; the default (milder since default_v11,
    # docs/DESIGN.md "Postfilter") by less, but still deepens them.
    default = Postfilter()
    for g_num, g_den, margin in [(0.6, 0.8, 1.0), (default.gamma_num, default.gamma_den, 0.3)]:
        out = Postfilter(gamma_num=g_num, gamma_den=g_den, pitch_gain=0.0)(y, a_sub)
        assert np.sqrt(np.mean(out ** 2)) == pytest.approx(np.sqrt(np.mean(y ** 2)), rel=0.1)
        # Per hop, the envelope's spectrum over the coded band: peaks kept, valleys lowered, so
        # the spread (dB) of the output spectrum exceeds the input's on average.
        f_out = np.abs(np.fft.rfft(out.reshape(-1, C.HOP_SIZE) * np.hanning(C.HOP_SIZE), axis=1))
        assert spread(f_out) > spread(f_in) + margin, (g_num, g_den)


def test_postfilter_tilt_compensation_restores_the_high_band(speech):
    # The formant stage tilts the spectrum down (a low-pass h: k1 < 0); the tilt stage lifts
    # the upper half of the band back relative to the lower half.
    y = speech[:60 * C.HOP_SIZE]
    a_sub = lpc.subframe_lpc(lpc.analyze(y))
    ratio = lambda v: (np.sum(np.abs(np.fft.rfft(v)[len(v) // 4:]) ** 2)
                       / np.sum(np.abs(np.fft.rfft(v)[: len(v) // 4]) ** 2))
    plain = Postfilter(gamma_num=0.6, gamma_den=0.8, pitch_gain=0.0)(y, a_sub)
    tilted = Postfilter(gamma_num=0.6, gamma_den=0.8, pitch_gain=0.0, tilt=0.8)(y, a_sub)
    assert ratio(tilted) > 1.05 * ratio(plain)
    # tilt 0 is exactly the stage off
    np.testing.assert_array_equal(Postfilter(tilt=0.0)(y, a_sub), Postfilter()(y, a_sub))


def test_postfilter_pitch_comb_raises_harmonic_to_noise_ratio():
    rng = np.random.default_rng(0)
    hops, period = 20, 100                       # 160 Hz pulse train + white noise
    n = hops * C.HOP_SIZE
    pulses = np.zeros(n)
    pulses[::period] = 1.0
    y = pulses + 0.05 * rng.standard_normal(n)
    a_sub = np.zeros((hops, C.NUM_SUBFRAMES, C.LPC_ORDER + 1))
    a_sub[..., 0] = 1.0                          # flat envelope: only the pitch stage acts
    out = Postfilter(gamma_num=1.0, gamma_den=1.0, pitch_gain=0.5)(y, a_sub)

    def hnr(x):
        spec = np.abs(np.fft.rfft(x[C.HOP_SIZE * 2:])) ** 2
        freqs = np.fft.rfftfreq(len(x) - 2 * C.HOP_SIZE, 1 / C.SAMPLE_RATE)
        k = (freqs / (C.SAMPLE_RATE / period)) % 1.0
        return spec[(k < 0.05) | (k > 0.95)].mean() / spec[(k > 0.3) & (k < 0.7)].mean()
    assert hnr(out) > 1.5 * hnr(y)   # 1.7x measured with g = 0.5 * correlation


@pytest.mark.parametrize("kwargs, message", [
    ({"gamma_num": 0.9, "gamma_den": 0.8}, "gamma_num <= gamma_den"),
    ({"pitch_gain": 1.5}, "pitch_gain"),
    ({"pitch_threshold": 1.0}, "pitch_threshold"),
    ({"agc": 1.0}, "agc"),
    ({"tilt": -0.1}, "tilt"),
    ({"tilt": 1.5}, "tilt"),
])
def test_postfilter_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Postfilter(**kwargs)


def test_postfilter_length_must_match_the_filters():
    a_sub = np.zeros((2, C.NUM_SUBFRAMES, C.LPC_ORDER + 1))
    a_sub[..., 0] = 1.0
    with pytest.raises(ValueError, match="samples"):
        Postfilter()(np.zeros(C.HOP_SIZE), a_sub)
