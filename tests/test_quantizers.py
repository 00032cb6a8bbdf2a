"""Property tests for cq_codec.quantizers: one interface, every family."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from cq_codec import quantizers as Q  # noqa: E402

B, T = 4, 32


def _make(kind):
    """(quantizer, input dim D) for each configuration under test."""
    if kind == "softmax":
        return Q.SoftmaxQuantizer(), 1
    if kind == "softmax_st":
        return Q.SoftmaxQuantizer(num_bins=8, straight_through=True, alpha_mode="trainable"), 1
    if kind == "softmax_lsf":
        bins = Q.uniform_grids([0.0, 0.5, 1.0, 1.5], [0.6, 1.1, 1.6, 2.1], 8)
        return Q.SoftmaxQuantizer(initial_bins=bins), 4
    if kind == "vq":
        return Q.VectorQuantizer(codebook_size=16, seed=1), 4
    if kind == "vq_grad":
        return Q.VectorQuantizer(codebook_size=16, use_ema=False, seed=1), 4
    if kind == "rvq":
        return Q.ResidualVectorQuantizer(num_stages=3, codebook_size=8, seed=1), 4
    if kind == "gumbel":
        return Q.GumbelQuantizer(codebook_size=16, seed=1), 4
    if kind == "pq":
        return Q.ProductQuantizer(num_groups=2, codebook_size=8, seed=1), 4
    raise AssertionError(kind)


KINDS = ["softmax", "softmax_st", "softmax_lsf", "vq", "vq_grad", "rvq", "gumbel", "pq"]


def _latents(dim, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(B, T, dim)).astype(np.float32) * 0.6 + shift)


def _ready(kind):
    """A quantizer after one training call (VQs are k-means initialised by it)."""
    q, dim = _make(kind)
    z = _latents(dim, shift=0.8 if kind == "softmax_lsf" else 0.0)
    q(z, training=True)
    return q, z


def _entropy_bits_np(codes):
    """Sum over streams of the empirical entropy of codes [B, T, S] times B*T."""
    codes = codes.reshape(-1, codes.shape[-1])
    total = 0.0
    for s in range(codes.shape[1]):
        _, counts = np.unique(codes[:, s], return_counts=True)
        p = counts / counts.sum()
        total += -(p * np.log2(p)).sum() * codes.shape[0]
    return total


def _expected_hard(q, codes):
    """The codebook entries named by codes, built from the raw weights with numpy."""
    if isinstance(q, Q.SoftmaxQuantizer):
        bins = q.bins.numpy()
        g = np.arange(codes.shape[-1]) % bins.shape[0]
        return bins[g, codes]
    if isinstance(q, Q.VectorQuantizer):
        return q.codebook.numpy()[codes[..., 0]]
    if isinstance(q, Q.GumbelQuantizer):
        return q.embedding.numpy()[codes[..., 0]]
    if isinstance(q, Q.ProductQuantizer):
        return np.concatenate([vq.codebook.numpy()[codes[..., g]]
                               for g, vq in enumerate(q.groups)], -1)
    if isinstance(q, Q.ResidualVectorQuantizer):
        return sum(st.codebook.numpy()[codes[..., i]] for i, st in enumerate(q.stages))
    raise AssertionError(type(q))


@pytest.mark.parametrize("kind", KINDS)
def test_inference_values_are_codebook_entries(kind):
    q, z = _ready(kind)
    out = q(z, training=False)
    codes = out.codes.numpy()
    assert out.codes.dtype == tf.int32
    assert codes.shape == (B, T, q.num_streams) and out.quantized.shape == z.shape
    assert np.all(codes >= 0) and np.all(codes < np.array(q.codebook_sizes))
    np.testing.assert_allclose(out.quantized.numpy(), _expected_hard(q, codes), atol=1e-6)
    if isinstance(q, Q.SoftmaxQuantizer):
        # float32 |z - b| is one correctly rounded subtraction: the same bits on every CPU, so the
        # codes are the numpy argmin exactly (first index on ties, as tf.argmin).
        np.testing.assert_array_equal(codes, np.abs(z.numpy()[..., None] - q.bins.numpy()).argmin(-1))
    elif isinstance(q, Q.VectorQuantizer):
        dist = ((z.numpy()[..., None, :] - q.codebook.numpy()) ** 2).sum(-1)[..., None, :]
        assert_nearest(codes, dist)


def assert_nearest(codes, dist, rtol=1e-5):
    """codes [..., S] pick a nearest entry of dist [..., S, K]. The quantizer's distances are
    |z|^2 - 2 z.c + |c|^2 (a matmul whose kernel depends on the CPU), the reference's (z - c)^2
    summed: the two may order near-ties differently, so a code may differ from the reference's
    argmin only where another entry is within float32 rounding (rtol x the distance scale)."""
    dist = np.asarray(dist, np.float64)
    chosen = np.take_along_axis(dist, np.asarray(codes)[..., None], -1)[..., 0]
    tol = rtol * (1.0 + np.abs(dist).max())
    assert np.all(chosen <= dist.min(-1) + tol)
    order = np.sort(dist, -1)
    clear = order[..., 1] - order[..., 0] > tol          # no near-tie: the code is pinned exactly
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(np.asarray(codes)[clear], dist.argmin(-1)[clear])


@pytest.mark.parametrize("kind", KINDS)
def test_decode_equals_inference_output(kind):
    # Bit-exact by construction: inference output and decode are the same gathers (summed in the
    # same order for RVQ), not two float computations.
    q, z = _ready(kind)
    out = q(z)
    np.testing.assert_array_equal(q.decode(out.codes).numpy(), out.quantized.numpy())


@pytest.mark.parametrize("kind", ["softmax", "softmax_lsf"])
def test_softmax_numpy_encode_decode_equal_the_layer(kind):
    """The numpy twins the codec's LSF path uses: codes and values equal the layer's (float32
    |z - b| is the same correctly rounded arithmetic in numpy and TensorFlow)."""
    q, z = _ready(kind)
    out = q(z)
    codes = q.encode_numpy(z.numpy())
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, out.codes.numpy())
    np.testing.assert_array_equal(q.decode_numpy(codes), q.decode(out.codes).numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_encoder(kind):
    q, z = _ready(kind)
    z = tf.Variable(z)
    target = tf.random.stateless_normal(z.shape, seed=(3, 4))
    with tf.GradientTape() as tape:
        out = q(z, training=True)
        loss = tf.reduce_mean((out.quantized - target) ** 2) + 1e-3 * out.bits + out.aux_loss
    trainables = list(q.trainable_weights)
    grad, *weight_grads = tape.gradient(loss, [z] + trainables)
    assert grad is not None
    assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).sum() > 0
    for v, g in zip(trainables, weight_grads):
        assert g is not None and np.all(np.isfinite(tf.convert_to_tensor(g).numpy())), v.path


@pytest.mark.parametrize("kind", KINDS)
def test_entropy_estimate_on_hard_codes_matches_empirical(kind):
    q, z = _ready(kind)
    out = q(z)
    codes = out.codes.numpy()
    expected = _entropy_bits_np(codes)
    assert float(out.bits) == pytest.approx(expected, rel=1e-5, abs=1e-3)
    assert float(out.metrics["bits_per_code"]) == pytest.approx(expected / (B * T), rel=1e-5,
                                                                abs=1e-5)
    hard = tf.one_hot(codes, max(q.codebook_sizes))
    assert float(Q.entropy.total_bits(hard)) == pytest.approx(expected, rel=1e-5, abs=1e-3)
    train_bits = q(z, training=True).bits
    assert np.isfinite(float(train_bits)) and float(train_bits) >= 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_saved_model_reloads_bit_identical(kind, tmp_path):
    q, z = _ready(kind)
    inp = keras.Input(shape=(T, z.shape[-1]))
    out = q(inp)
    model = keras.Model(inp, [out.quantized, out.codes, out.bits])
    path = str(tmp_path / "q.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    a, b = model(z), loaded(z)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    layer = loaded.layers[-1]
    assert type(layer) is type(q) and layer.get_config() == q.get_config()


def test_vq_dead_codes_are_revived():
    vq = Q.VectorQuantizer(codebook_size=16, seed=2, dead_code_threshold=5)
    spread = _latents(4, seed=1) * 3.0
    vq(spread, training=True)  # k-means on spread-out latents
    rng = np.random.default_rng(5)
    centre = spread.numpy()[0, 0]
    tight = lambda: tf.constant(centre + 0.05 * rng.normal(size=(B, T, 4)), tf.float32)
    first = vq(tight(), training=True)
    assert float(first.metrics["utilisation"]) <= 2 / 16  # collapsed onto one region
    replaced = 0.0
    for _ in range(12):
        out = vq(tight(), training=True)
        replaced += float(out.metrics["replaced_codes"])
    assert replaced >= 8
    assert float(vq(tight()).metrics["utilisation"]) >= 0.5


def test_vq_ema_step_moves_codes_to_cluster_means():
    vq = Q.VectorQuantizer(codebook_size=8, decay=0.0, epsilon=1e-9, kmeans_iters=0,
                           dead_code_threshold=0, seed=4)
    z = _latents(3, seed=2)
    vq(z, training=True)  # initialisation picks 8 latents, then one EMA step
    before = vq.codebook.numpy()
    out = vq(z, training=True)
    codes = out.codes.numpy().reshape(-1)
    flat = z.numpy().reshape(-1, 3)
    assert_nearest(codes, ((flat[:, None] - before) ** 2).sum(-1))
    after = vq.codebook.numpy()
    for k in np.unique(codes):
        np.testing.assert_allclose(after[k], flat[codes == k].mean(0), rtol=1e-4, atol=1e-5)


def test_straight_through_forward_is_the_hard_value():
    for kind in ("softmax_st", "vq", "gumbel"):
        q, z = _ready(kind)
        table = {"softmax_st": "bins", "vq": "codebook", "gumbel": "embedding"}[kind]
        weights = getattr(q, table).numpy()
        out = q(z, training=True)
        codes = out.codes.numpy()
        if kind == "gumbel":
            # Forward: a hard (noisy) sample, i.e. some embedding row; codes: the inference argmax.
            dist = np.abs(out.quantized.numpy()[..., None, :] - weights).max(-1).min(-1)
            assert dist.max() < 1e-5
            np.testing.assert_array_equal(codes, q(z, training=False).codes.numpy())
            continue
        expected = weights[0][codes] if kind == "softmax_st" else weights[codes[..., 0]]
        np.testing.assert_allclose(out.quantized.numpy(), expected, atol=1e-5)


def test_graph_mode_training_and_switches_without_retracing():
    vq = Q.VectorQuantizer(codebook_size=8, seed=5)
    step = tf.function(lambda z: vq(z, training=True).metrics["utilisation"])
    z = _latents(4, seed=6)
    step(z)
    assert float(vq.initialized.numpy()) == 1.0  # k-means ran inside the graph
    assert_nearest(vq(z).codes.numpy(), ((z.numpy()[..., None, :] - vq.codebook.numpy()) ** 2).sum(-1)[..., None, :])
    sq = Q.SoftmaxQuantizer(num_bins=4)
    infer = tf.function(lambda z: sq(z, training=False).quantized)
    z1 = _latents(1)
    hard = infer(z1).numpy()
    sq.set_bypass(True)
    np.testing.assert_array_equal(infer(z1).numpy(), z1.numpy())
    sq.set_bypass(False)
    np.testing.assert_array_equal(infer(z1).numpy(), hard)
    assert infer.experimental_get_tracing_count() == 1


def test_soft_bits_approach_hard_bits_as_alpha_grows():
    q = Q.SoftmaxQuantizer(num_bins=8)
    z = _latents(1, seed=7)
    hard = float(q(z).bits)
    gaps = []
    for alpha in (3.0, 30.0, 3000.0):
        q.set_alpha(alpha)
        gaps.append(abs(float(q(z, training=True).bits) - hard))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.01 * hard


def test_rvq_fewer_stages_have_higher_error():
    q, z = _ready("rvq")
    for _ in range(5):
        q(z, training=True)
    errors = [float(tf.reduce_mean((q(z, num_stages=n).quantized - z) ** 2)) for n in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    out = q(z, num_stages=2)
    assert out.codes.shape[-1] == 2
    full = q(z).codes
    np.testing.assert_array_equal(q.decode(full, num_stages=2).numpy(), out.quantized.numpy())
    q.num_active_stages = 1
    assert q(z).codes.shape[-1] == 1


def test_rvq_quantizer_dropout_varies_active_stages():
    q = Q.ResidualVectorQuantizer(num_stages=4, codebook_size=4, dropout_prob=0.5, seed=3)
    z = _latents(2)
    seen = {int(q(z, training=True).metrics["active_stages"]) for _ in range(20)}
    assert 4 in seen and len(seen) >= 2 and seen <= {1, 2, 3, 4}
    assert int(q(z).metrics["active_stages"]) == 4


def test_softmax_bypass_alpha_and_straight_through():
    q = Q.SoftmaxQuantizer(num_bins=8)
    z = _latents(1)
    plan = Q.Schedule(alpha_start=1.0, alpha_end=100.0, alpha_steps=10)
    assert q.anneal(0, plan) == pytest.approx(1.0)
    assert float(q(z, training=True).metrics["alpha"]) == pytest.approx(1.0)
    assert q.anneal(5, plan) == pytest.approx(10.0) and q.anneal(50, plan) == pytest.approx(100.0)
    q.set_bypass(True)
    np.testing.assert_array_equal(q(z, training=True).quantized.numpy(), z.numpy())
    q.set_bypass(False)
    soft = q(z, training=True).quantized.numpy()
    hard = q(z).quantized.numpy()
    assert not np.allclose(soft, hard)
    st = Q.SoftmaxQuantizer(num_bins=8, straight_through=True)
    np.testing.assert_allclose(st(z, training=True).quantized.numpy(), st(z).quantized.numpy(),
                               atol=1e-6)


def test_softmax_per_dimension_bins_index_their_own_grid():
    bins = Q.uniform_grids([0.0, 10.0], [1.0, 11.0], 5)
    q = Q.SoftmaxQuantizer(initial_bins=bins)
    z = tf.constant([[[0.26, 10.74]]])
    out = q(z)
    np.testing.assert_array_equal(out.codes.numpy(), [[[1, 3]]])
    np.testing.assert_allclose(out.quantized.numpy(), [[[0.25, 10.75]]], atol=1e-6)
    assert q.codebook_sizes == [5, 5]


def test_gumbel_temperature_anneals():
    q = Q.GumbelQuantizer(codebook_size=8, temperature=2.0, min_temperature=0.5,
                          anneal_rate=0.1)
    assert q.anneal(0) == pytest.approx(2.0)
    assert q.anneal(5) == pytest.approx(2.0 * math.exp(-0.5))
    assert q.anneal(1000) == pytest.approx(0.5)
    out = q(_latents(3), training=True)
    assert float(out.metrics["temperature"]) == pytest.approx(0.5)


def test_bits_per_second_and_factory():
    q = Q.get_quantizer("softmax", num_bins=32)
    q(_latents(1))
    fps = 16000 / 480
    assert q.bits_per_second(fps, 256) == pytest.approx(fps * 256 * 5)
    assert q.bits_per_second(fps, 256, bits_per_code=2.2) == pytest.approx(fps * 256 * 2.2)
    rvq = Q.get_quantizer("RVQ", num_stages=2, codebook_size=1024)
    assert rvq.bits_per_second(50, 1) == pytest.approx(50 * 20)
    for name, cls in Q.QUANTIZERS.items():
        assert isinstance(Q.get_quantizer(name), cls)


@pytest.mark.parametrize("build, match", [
    (lambda: Q.get_quantizer("lattice"), "valid names: softmax, vq, rvq, gumbel, pq"),
    (lambda: Q.SoftmaxQuantizer(num_bins=1), "num_bins"),
    (lambda: Q.SoftmaxQuantizer(alpha_mode="cosine"), "alpha_mode"),
    (lambda: Q.SoftmaxQuantizer(alpha=-1.0), "alpha must be > 0"),
    (lambda: Q.SoftmaxQuantizer(initial_bins=[1.0, 2.0]), "initial_bins"),
    (lambda: Q.SoftmaxQuantizer().anneal(-1), "step must be >= 0"),
    (lambda: Q.GumbelQuantizer().anneal(-1), "step must be >= 0"),
    (lambda: Q.VectorQuantizer(codebook_size=0), "codebook_size"),
    (lambda: Q.VectorQuantizer(decay=1.5), "decay"),
    (lambda: Q.VectorQuantizer(epsilon=0.0), "epsilon"),
    (lambda: Q.ResidualVectorQuantizer(num_stages=0), "num_stages"),
    (lambda: Q.ResidualVectorQuantizer(num_stages=2, num_active_stages=3), "num_active_stages"),
    (lambda: Q.ResidualVectorQuantizer(dropout_prob=2.0), "dropout_prob"),
    (lambda: Q.ResidualVectorQuantizer(vq_config={"seed": 1}), "vq_config"),
    (lambda: Q.GumbelQuantizer(temperature=0.0), "temperature"),
    (lambda: Q.ProductQuantizer(num_groups=3)(tf.zeros([1, 2, 4])), "divisible"),
    (lambda: Q.VectorQuantizer()(tf.zeros([2, 4])), r"\[B, T, D\]"),
    (lambda: Q.SoftmaxQuantizer(initial_bins=np.zeros((3, 4)))(tf.zeros([1, 2, 2])),
     "one per dimension"),
    (lambda: Q.SoftmaxQuantizer().bits_per_second(0, 256), "frames_per_second"),
])
def test_bad_arguments_raise_clear_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_codes_and_stage_counts_raise():
    q, z = _ready("rvq")
    with pytest.raises(ValueError, match="num_stages"):
        q(z, num_stages=4)
    with pytest.raises(ValueError, match="streams"):
        q.decode(tf.zeros([1, 2, 5], tf.int32))
    vq, _ = _ready("vq")
    with pytest.raises(TypeError, match="integers"):
        vq.decode(tf.zeros([1, 2, 1], tf.float32))
    with pytest.raises(ValueError, match="1 streams"):
        vq.decode(tf.zeros([1, 2, 2], tf.int32))


def test_softmax_identity_straight_through_passes_gradient_even_when_collapsed():
    """Forward is the hard value; d(out)/dz is the identity, also for latents far outside the
    bins where soft gradients vanish (the collapse the soft path cannot recover from)."""
    from cq_codec.quantizers import SoftmaxQuantizer
    q = SoftmaxQuantizer(num_bins=8, straight_through="identity")
    z = tf.constant(np.array([[[5.0], [0.13], [-7.0]]], np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        out = q(z, training=True)
        loss = tf.reduce_sum(out.quantized * tf.constant([[[1.0], [2.0], [3.0]]]))
    np.testing.assert_allclose(out.quantized.numpy(), q.decode(out.codes).numpy())
    np.testing.assert_allclose(tape.gradient(loss, z).numpy(), [[[1.0], [2.0], [3.0]]])
    assert np.any(tape.gradient(loss, q.bins).numpy() != 0)
    with pytest.raises(ValueError, match="straight_through"):
        SoftmaxQuantizer(straight_through="sideways")


def test_gumbel_sharp_entropy_estimate_tracks_the_argmax_codes():
    """With entropy_temperature 0.1 the training estimate follows the argmax codes' histogram
    (what inference codes), where the plain soft assignments overstate it."""
    z = tf.random.stateless_normal([8, 64, 4], seed=[3, 4])
    est = {}
    for t in (1.0, 0.1):
        q = Q.GumbelQuantizer(codebook_size=64, seed=0, entropy_temperature=t)
        q.build(z.shape)
        out = q(z, training=True)
        est[t] = float(out.bits) / (8 * 64)
        hard = float(out.metrics["hard_bits_per_code"])
    assert abs(est[0.1] - hard) < abs(est[1.0] - hard)
    assert "entropy_temperature" not in Q.GumbelQuantizer(codebook_size=4).get_config()   # identity kept
    cfg = Q.GumbelQuantizer(codebook_size=4, entropy_temperature=0.1).get_config()
    assert Q.GumbelQuantizer.from_config(cfg).entropy_temperature == 0.1
    with pytest.raises(ValueError, match="entropy_temperature"):
        Q.GumbelQuantizer(codebook_size=4, entropy_temperature=0.0)


def test_rvq_counts_codebooks_under_their_own_name():
    q = Q.ResidualVectorQuantizer(num_stages=3, codebook_size=4)
    assert q.num_codebooks == 3 and q.num_active_codebooks == 3
    q.num_active_codebooks = 2                      # the stored attribute keeps seed 000's name
    assert q.num_active_stages == 2 and q.get_config()["num_active_stages"] == 2
    with pytest.raises(ValueError, match=r"num_active_stages must be an int in \[1, 3\]"):
        q.num_active_codebooks = 4
