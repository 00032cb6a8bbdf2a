"""Residual module, blocks and the CQ codec: shapes, strides, gradients, serialisation, inference."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.signal import lfilter

import constants as C
import lpc
from cq_codec import inference
from cq_codec.config import Config
from cq_codec.models.cq import CQCodec
from cq_codec.models.residual_module import ResidualModule
from cq_codec.nn.blocks import SubPixelUpsample1D, make_block
from cq_codec.training.trainer import build_model, module_configs


def _speechlike(seconds=2.0, seed=0):
    """AR(2)-coloured noise with a 120 Hz pulse train: formant-ish and voiced-ish."""
    rng = np.random.default_rng(seed)
    n = int(seconds * C.SAMPLE_RATE)
    pulses = np.zeros(n)
    pulses[:: C.SAMPLE_RATE // 120] = 3.0
    return 0.1 * lfilter([1.0], [1.0, -1.3, 0.7], pulses + 0.3 * rng.standard_normal(n))


def _examples(sig):
    lsf = lpc.analyze(sig)
    x, ls = [], []
    for t in range(1, len(lsf) - 2):
        s = t * C.HOP_SIZE
        x.append(sig[s - 16: s + 512])
        ls.append(lsf[t - 1: t + 2])
    return {"x": np.asarray(x, np.float32), "lsf": np.asarray(ls, np.float32)}


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    sig = _speechlike()
    sig = sig / sig.std()
    cfg = Config(num_modules=2, channels=8, bottleneck=4, blocks_per_section=1).validate()
    sample = _examples(sig)
    return cfg, build_model(cfg, 1.0, sample), sample


@pytest.mark.parametrize("block", ["gln", "bottleneck", "separable"])
def test_blocks_keep_shape(block):
    layer = make_block(block, 16, 4, 9, 2)
    x = tf.random.normal([2, 64, 16])
    assert layer(x).shape == (2, 64, 16)


def test_unknown_block_is_refused():
    with pytest.raises(ValueError, match="block_type"):
        make_block("conv9000", 16, 4, 9, 1)


def test_subpixel_interleaves_in_time():
    up = SubPixelUpsample1D(2, 3, kernel_size=1)
    y = up(tf.ones([1, 5, 4]))
    assert y.shape == (1, 10, 3)


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_module_strides_give_frame_back(stride):
    m = ResidualModule(channels=8, bottleneck=4, num_resnets=1, stride=stride)
    y, q = m(tf.random.normal([2, C.FRAME_SIZE, 1]), training=False)
    assert y.shape == (2, C.FRAME_SIZE, 1)
    assert q.codes.shape == (2, C.FRAME_SIZE // stride, 1)
    assert m.num_positions == C.FRAME_SIZE // stride


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_patch_front_end_gives_frame_back_and_runs_at_code_rate(stride):
    m = ResidualModule(channels=8, bottleneck=4, num_resnets=1, stride=stride, front_end="patch")
    x = tf.random.normal([2, C.FRAME_SIZE, 1])
    y, q = m(x, training=False)
    assert y.shape == (2, C.FRAME_SIZE, 1)
    assert q.codes.shape == (2, C.FRAME_SIZE // stride, 1)
    # Depth-to-space: output sample t comes from code-rate position t // stride, channel t % stride.
    last = m.decoder_layers[-1]
    assert last.filters == stride
    h = tf.reshape(m.quantizer.decode(q.codes), (2, C.FRAME_SIZE // stride, 1))
    for layer in m.decoder_layers:
        h = layer(h)
    h, yy = h.numpy(), y.numpy()
    assert h.shape == (2, C.FRAME_SIZE // stride, stride)
    t, j = 5, stride - 1
    assert yy[1, t * stride + j, 0] == h[1, t, j]
    # Every convolution runs at the code rate: none sees frame_size positions (for stride > 1).
    if stride > 1:
        shape = (2, C.FRAME_SIZE // stride, stride)
        for layer in m.encoder_layers:
            assert shape[1] == C.FRAME_SIZE // stride
            shape = layer.compute_output_shape(shape)


def test_patch_front_end_is_cheaper_trains_and_round_trips(tmp_path):
    from cq_codec.flops import count_flops
    base = dict(num_modules=1, channels=16, bottleneck=4, blocks_per_section=1, the_strides=(4,))
    conv = build_model(Config(**base).validate())
    patch = build_model(Config(**base, front_end="patch").validate())
    assert count_flops(patch) < count_flops(conv) / 3
    with tf.GradientTape() as tape:
        batch = {"x": tf.random.normal([2, C.LPC_ORDER + C.FRAME_SIZE]), "lsf": tf.constant(
            np.tile(np.linspace(0.2, 3.0, C.LPC_ORDER, dtype=np.float32), (2, 3, 1)))}
        loss = patch.compute_terms(patch.forward(batch, training=True), training=True)["loss"]
    grads = tape.gradient(loss, patch.codec_modules[0].trainable_variables)
    assert all(g is not None for g in grads)
    path = os.path.join(tmp_path, "patch.keras")
    patch.save(path)
    again = keras.models.load_model(path)
    assert again.codec_modules[0].front_end == "patch"
    np.testing.assert_array_equal(patch(batch, training=False).numpy(), again(batch, training=False).numpy())
    with pytest.raises(ValueError, match="front_end"):
        ResidualModule(front_end="pixel")
    with pytest.raises(Exception, match="front_end"):
        Config(front_end="pixel").validate()


def test_module_vector_grouping_and_bad_stride():
    m = ResidualModule(channels=8, bottleneck=4, num_resnets=1, stride=4, vector_dim=4,
                       quantizer={"name": "vq", "codebook_size": 16})
    y, q = m(tf.random.normal([2, C.FRAME_SIZE, 1]), training=False)
    assert q.codes.shape == (2, 32, 1) and y.shape == (2, C.FRAME_SIZE, 1)
    with pytest.raises(ValueError, match="stride"):
        ResidualModule(stride=3)


def test_reference_module_parameter_count():
    """The reference gln module is ~0.35M parameters (REFERENCE.md)."""
    m = ResidualModule()
    m.build((None, C.FRAME_SIZE, 1))
    assert 0.2e6 < m.count_params() < 0.5e6


def test_forward_shapes_and_gradients_reach_everything(tiny):
    _, model, sample = tiny
    batch = {k: tf.constant(v[:4]) for k, v in sample.items()}
    with tf.GradientTape() as tape:
        terms = model.compute_terms(model.forward(batch, training=True), training=True)
    grads = tape.gradient(terms["loss"], model.trainable_variables)
    names = [v.path for v, g in zip(model.trainable_variables, grads) if g is None or not np.any(g.numpy())]
    # Every trained weight gets a gradient, the LSF codebook included (collaborative quantization).
    assert not [n for n in names if "alpha" not in n], names
    assert any("lsf_quantizer" in v.path for v in model.trainable_variables)
    assert terms["kbps"].shape == () and float(terms["kbps"]) > 0


def test_training_reduces_loss(tiny):
    cfg, _, sample = tiny
    keras.utils.set_random_seed(1)
    model = build_model(cfg, 1.0, sample)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    ds = tf.data.Dataset.from_tensor_slices(sample).repeat().batch(16)
    hist = model.fit(ds, steps_per_epoch=15, epochs=3, verbose=0).history
    assert hist["time"][-1] < hist["time"][0]


def test_keras_file_roundtrip_is_bit_identical(tiny, tmp_path):
    _, model, sample = tiny
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    batch = {k: tf.constant(v[:3]) for k, v in sample.items()}
    np.testing.assert_array_equal(model(batch, training=False).numpy(), again(batch, training=False).numpy())


def test_inference_decode_matches_frame_decoder_and_prefixes(tiny):
    _, model, _ = tiny
    wav = _speechlike(1.0, seed=3)
    codes = inference.encode(model, wav)
    assert codes.lsf.shape == (inference.num_hops_for(wav.size), C.LPC_ORDER)
    assert len(codes.modules) == 2
    full = inference.decode(model, codes)
    one = inference.decode(model, inference.Codes(codes.lsf, codes.modules[:1], codes.num_samples))
    assert full.shape == one.shape == wav.shape
    assert np.all(np.isfinite(full)) and not np.allclose(full, one)
    # Encoding the first module alone gives the same codes as the prefix of the full encode.
    np.testing.assert_array_equal(inference.encode(model, wav, num_active=1).modules[0], codes.modules[0])


def test_inference_rejects_bad_input(tiny):
    _, model, _ = tiny
    with pytest.raises(ValueError, match="non-empty"):
        inference.encode(model, np.zeros(0))
    with pytest.raises(ValueError, match="NaN"):
        inference.encode(model, np.full(1000, np.nan))
    with pytest.raises(ValueError, match="num_active"):
        inference.encode(model, np.zeros(1000), num_active=5)


def test_module_configs_follow_flags():
    cfg = Config(num_modules=3, the_strides=(2, 4), quantizer="vq", embedding_dim=4).validate()
    mc = module_configs(cfg)
    assert [m["stride"] for m in mc] == [2, 4, 4]
    assert all(m["vector_dim"] == 4 and m["quantizer"]["name"] == "vq" for m in mc)


def test_cq_codec_rejects_bad_grid():
    with pytest.raises(ValueError, match="lsf_grid"):
        CQCodec(module_configs(Config(num_modules=1)), lsf_grid=np.zeros((3, 4)))


def test_prefix_loss_scores_every_operating_point(tiny):
    """With prefix_loss (joint fine-tuning), the loss sees each prefix's output, the first of which
    is exactly what the model outputs with one module active."""
    _, model, sample = tiny
    batch = {k: tf.constant(v[:4]) for k, v in sample.items()}
    model.prefix_loss = True
    try:
        full = model.forward(batch, training=True)
        model.num_active = 1
        first = model.forward(batch, training=True)
    finally:
        model.prefix_loss, model.num_active = False, 2
    assert full["loss_x_hat"].shape == (8, C.FRAME_SIZE) and "loss_x" not in first
    np.testing.assert_allclose(full["loss_x_hat"][:4].numpy(), first["x_hat"].numpy(), atol=1e-5)
    np.testing.assert_allclose(full["loss_x_hat"][4:].numpy(), full["x_hat"].numpy(), atol=1e-5)
    # The prefix terms change the loss: without them only the full cascade is scored.
    with_prefix = model.compute_terms(full)["time"]
    without = model.compute_terms({k: v for k, v in full.items() if not k.startswith("loss_")})["time"]
    assert abs(float(with_prefix) - float(without)) > 1e-6


def test_weighted_time_loss_is_the_signal_error_through_a_over_a_gamma(tiny):
    """weighting_gamma < 1: the time term is the RMS of the signal error filtered by
    A(z) / A(z/gamma) (noise shaping); gamma -> 1 gives the plain time RMSE back."""
    from lpc import tf_ops
    _, model, sample = tiny
    batch = {k: tf.constant(v[:4]) for k, v in sample.items()}
    plain = model.forward(batch, training=False)
    try:
        model.weighting_gamma = 0.9
        shaped = model.forward(batch, training=False)
        model.weighting_gamma = 1.0 - 1e-7
        almost = model.forward(batch, training=False)
    finally:
        model.weighting_gamma = 1.0
    assert "loss_err_w" not in plain
    np.testing.assert_allclose(shaped["x_hat"].numpy(), plain["x_hat"].numpy())   # decoding unchanged
    lsf_q, _ = model.quantize_lsf(batch["lsf"], training=False)
    a = tf_ops.lsf_to_lpc_tf(lsf_q[:, 1]).numpy().astype(np.float64)
    err = plain["err_sig"].numpy().astype(np.float64)
    for i in range(4):
        want = lfilter(a[i], a[i] * 0.9 ** np.arange(C.LPC_ORDER + 1), err[i])
        np.testing.assert_allclose(shaped["loss_err_w"][i].numpy(), want, atol=1e-4 * np.abs(want).max())
    t_plain, t_shaped = (float(model.compute_terms(f)["time"]) for f in (plain, shaped))
    assert abs(t_shaped - t_plain) > 1e-4 * t_plain
    assert float(model.compute_terms(almost)["time"]) == pytest.approx(t_plain, rel=1e-4)


def test_weighting_gamma_comes_from_the_config():
    cfg = Config(num_modules=1, channels=8, bottleneck=4, blocks_per_section=1, weighting_gamma=0.92).validate()
    assert build_model(cfg).weighting_gamma == 0.92


def test_compiled_inference_serves_every_prefix(tiny):
    """encode_frames / decode_frames run traced functions; any prefix decodes, bad prefixes are refused."""
    _, model, sample = tiny
    frames = np.asarray(sample["x"][:5, C.LPC_ORDER:], np.float32)
    codes = model.encode_frames(frames)
    assert len(codes) == 2 and codes[0].dtype == tf.int32
    np.testing.assert_array_equal(model.encode_frames(frames, num_active=1)[0].numpy(), codes[0].numpy())
    assert model.decode_frames(codes[:1]).shape == (5, C.FRAME_SIZE)
    with pytest.raises(ValueError, match="1..2 modules"):
        model.decode_frames([])


def test_flops_count_adds_up_over_modules():
    from cq_codec.flops import count_flops
    model = build_model(Config(num_modules=2, channels=8, bottleneck=4, blocks_per_section=1, the_strides=(4,)).validate())
    two = count_flops(model)
    one = count_flops(model, 1)
    assert one > 0 and two == 2 * one            # identical modules, the LSF path has no convolutions
    # enc_in alone: 512 outputs x kernel 55 x 1 input x 8 filters multiply-adds.
    assert one > 2 * 512 * 55 * 8


def test_hard_entropy_is_miller_madow_corrected():
    from cq_codec.quantizers import entropy
    hist = tf.constant([[0.25, 0.25, 0.25, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    got = float(entropy.hard_entropy_bits(hist, 100))
    assert got == pytest.approx(2.0 + 3 / (200 * np.log(2)) + 0.0, rel=1e-5)


def test_rate_control_metric_is_the_hard_code_entropy(tiny):
    """Hh_1 (what the tau controller steers) is the corrected entropy of the batch's hard codes."""
    _, model, sample = tiny
    batch = {k: tf.constant(v[:8]) for k, v in sample.items()}
    fwd = model.forward(batch, training=True)
    terms = model.compute_terms(fwd, training=True)
    codes = fwd["modules"][0].codes.numpy().reshape(-1)
    p = np.bincount(codes) / codes.size
    p = p[p > 0]
    want = -(p * np.log2(p)).sum() + (p.size - 1) / (2 * codes.size * np.log(2))
    assert float(terms["Hh_1"]) == pytest.approx(want, rel=1e-4)


def test_compiled_inference_follows_rvq_stages_in_use():
    keras.utils.set_random_seed(0)
    model = build_model(Config(num_modules=1, channels=8, bottleneck=4, blocks_per_section=1, quantizer="rvq",
                               embedding_dim=4, num_stages=2, codebook_size=8).validate())
    frames = np.random.default_rng(0).standard_normal((3, C.FRAME_SIZE)).astype(np.float32)
    codes = model.encode_frames(frames)
    q = model.codec_modules[0].quantizer
    both = model.decode_frames(codes).numpy()
    q.num_active_stages = 1
    try:
        first = model.encode_frames(frames)
        one = model.decode_frames(first).numpy()
    finally:
        q.num_active_stages = 2
    assert codes[0].shape[-1] == 2 and first[0].shape[-1] == 1
    np.testing.assert_array_equal(first[0].numpy()[..., 0], codes[0].numpy()[..., 0])
    assert not np.allclose(one, both)
    np.testing.assert_array_equal(model.decode_frames(model.encode_frames(frames)).numpy(), both)
