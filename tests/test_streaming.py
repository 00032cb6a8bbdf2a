"""Chunked (streaming) encoding/decoding equals whole-signal processing, with bounded state."""

import numpy as np
import pytest
import soundfile as sf

import constants as C
import lpc
from lpc.postfilter import Postfilter
from cq_codec import api, inference
from test_api import ar_signal, make_model


@pytest.fixture(scope="module")
def model():
    return make_model(0)


def reference_frames(model, wav):
    """The whole-signal numpy path (docs/DESIGN.md): [T, 512] windowed residual frames, LSF codes."""
    hops = inference.num_hops_for(wav.size)
    x = np.zeros(hops * C.HOP_SIZE)
    x[: wav.size] = inference.preprocess(wav, model.signal_std)
    lsf = lpc.analyze(x, num_hops=hops)
    _, out = model.quantize_lsf(lsf[None].astype(np.float32), training=False)
    codes = out.codes[0].numpy()
    a_sub = lpc.subframe_lpc(inference._quantized_lsf(model, codes))
    e, _ = lpc.residual(x, a_sub)
    return lpc.frame_signal(e, hops).astype(np.float32), codes, a_sub


class Recorder:
    """Wraps a model's frame codec to record what it is given and returns."""

    def __init__(self, model):
        self.model, self.inputs, self.outputs = model, [], []
        self._enc, self._dec = model.encode_frames, model.decode_frames

    def __enter__(self):
        def enc(frames, num_active=None):
            self.inputs.append(np.array(frames))
            return self._enc(frames, num_active)

        def dec(codes):
            out = self._dec(codes)
            self.outputs.append(out.numpy().astype(np.float64))
            return out
        self.model.encode_frames, self.model.decode_frames = enc, dec
        return self

    def __exit__(self, *exc):
        del self.model.encode_frames, self.model.decode_frames


def push_all(enc, wav, sizes):
    chunks, s, k = [], 0, 0
    while s < wav.size:
        n = sizes[k % len(sizes)]
        chunks += enc.push(wav[s: s + n])
        s, k = s + n, k + 1
    return chunks + enc.finish()


@pytest.mark.parametrize("seconds", [0.01, 0.5, 1.37])
def test_streamed_frames_equal_whole_signal_frames(model, seconds):
    wav = ar_signal(seconds, 3)
    want, lsf_codes, _ = reference_frames(model, wav)
    with Recorder(model) as rec:
        chunks = push_all(inference.StreamEncoder(model, frames_per_chunk=7), wav, [1, 479, 481, 3000, 17])
    got = np.concatenate(rec.inputs)
    # Bit-exact: the numpy DSP is the same arithmetic either way (filters run sample by sample with
    # carried state, each hop's LPC is computed from its own window row), which the streaming
    # encoder promises (codes independent of push sizes).
    assert got.shape == want.shape and np.array_equal(got, want)
    assert np.array_equal(np.concatenate([c.lsf for c in chunks]), lsf_codes)
    assert all(len(c.lsf) == 7 for c in chunks[:-1])


def test_codes_do_not_depend_on_push_sizes(model):
    wav = ar_signal(0.6, 4)
    whole = inference.encode(model, wav, frames_per_chunk=5)
    for sizes in ([480], [7, 1500, 33]):
        chunks = push_all(inference.StreamEncoder(model, frames_per_chunk=5), wav, sizes)
        assert np.array_equal(np.concatenate([c.lsf for c in chunks]), whole.lsf)
        for i in range(2):
            assert np.array_equal(np.concatenate([c.modules[i] for c in chunks]), whole.modules[i])


def test_streamed_decode_equals_whole_signal_synthesis(model):
    wav = ar_signal(0.9, 5)
    codes = inference.encode(model, wav, frames_per_chunk=6)
    with Recorder(model) as rec:
        y = inference.decode(model, codes, frames_per_chunk=6, postfilter=False)
    frames = np.concatenate(rec.outputs)
    hops = codes.lsf.shape[0]
    a_sub = lpc.subframe_lpc(inference._quantized_lsf(model, codes.lsf))
    e = lpc.overlap_add(frames)[: hops * C.HOP_SIZE]
    syn, _ = lpc.synthesis(e, a_sub)
    ref, _ = lpc.deemphasis(syn * model.signal_std)
    # Bit-exact: the reference re-synthesises the very frames the decoder produced (recorded), so
    # only the numpy overlap-add / 1/A(z) / de-emphasis state carry is compared: same arithmetic.
    np.testing.assert_array_equal(y, ref[: wav.size].astype(np.float32))
    # With the postfilter (the default), chunk by chunk equals the whole signal postfiltered.
    post = inference.decode(model, codes, frames_per_chunk=6)
    ref_post, _ = lpc.deemphasis(Postfilter()(syn, a_sub) * model.signal_std)
    np.testing.assert_allclose(post, ref_post[: wav.size].astype(np.float32), rtol=0, atol=1e-6)
    assert not np.allclose(post, y, atol=1e-4)


def test_state_stays_bounded(model):
    enc = inference.StreamEncoder(model, frames_per_chunk=4)
    rng = np.random.default_rng(0)
    for _ in range(12):
        enc.push(0.1 * rng.standard_normal(1000))
        assert len(enc._xp) < C.LPC_WINDOW + 1000 + C.HOP_SIZE
        assert len(enc._e) <= 2 * C.HOP_SIZE
        assert sum(len(f) for f in enc._frames) < 4
    assert len(enc.finish()) >= 1
    with pytest.raises(RuntimeError, match="after finish"):
        enc.push(np.zeros(3))


def test_chunked_file_and_whole_array_give_identical_bytes(model, tmp_path):
    codec = api.Codec(model, frames_per_chunk=5)
    wav = ar_signal(0.7, 6)
    whole = codec.compress(wav, 16000)
    path = str(tmp_path / "in.wav")
    sf.write(path, wav, 16000, subtype="FLOAT")
    audio = api.read_audio_blocks(path, block=777)
    streamed = codec.compress_blocks(audio.blocks)
    assert streamed == whole
    small = codec.compress_blocks((wav[s: s + 100] for s in range(0, wav.size, 100)))
    assert small == whole


def test_empty_and_non_finite_input_rejected(model):
    with pytest.raises(ValueError, match="non-empty"):
        inference.StreamEncoder(model).finish()
    with pytest.raises(ValueError, match="NaN"):
        inference.StreamEncoder(model).push(np.array([0.0, np.nan]))
