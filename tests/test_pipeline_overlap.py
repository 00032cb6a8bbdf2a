"""The pipelined encoder / decoder (network calls on a worker thread beside the numpy work,
`inference` module docstring) computes exactly what the sequential one does: the same codes,
bytes and decoded samples (bit for bit), the same chunks from a stream pushed in any pieces, the
same errors after the same blocks; and it keeps at most one network call in flight."""

import threading

import numpy as np
import pytest

import cq_codec
from cq_codec import api, inference
from cq_codec.backends import get_backend
from cq_codec.codes import Codes
from test_api import ar_signal, make_model
from tests.conftest import Unseekable


@pytest.fixture(scope="module")
def model():
    return make_model(0)


class Watch:
    """A backend wrapper recording which thread runs each network call, and how many overlap."""

    def __init__(self, model):
        self.inner = get_backend(model, "keras")
        self.name = "watch"
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        self.threads = []

    def _run(self, fn, *args):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.append(threading.current_thread() is threading.main_thread())
        try:
            return fn(*args)
        finally:
            with self.lock:
                self.active -= 1

    def encode_frames(self, frames, num_active):
        return self._run(self.inner.encode_frames, frames, num_active)

    def decode_frames(self, codes):
        return self._run(self.inner.decode_frames, codes)


def same_chunks(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(x.lsf, y.lsf) and len(x.modules) == len(y.modules)
        assert all(np.array_equal(p, q) for p, q in zip(x.modules, y.modules))
        for u, v in ((x.gain, y.gain), (x.pitch, y.pitch)):
            assert (u is None) == (v is None) and (u is None or np.array_equal(u, v))


def push_all(enc, wav, sizes):
    chunks, s, k = [], 0, 0
    while s < wav.size:
        chunks += enc.push(wav[s: s + sizes[k % len(sizes)]])
        s, k = s + sizes[k % len(sizes)], k + 1
    return chunks + enc.finish()


def test_shipped_model_bytes_and_audio_are_bit_identical():
    """The shipped model (3 modules, gains, pitch prediction) at every operating point: bytes,
    codes and decoded audio with the pipeline equal those without it, bit for bit."""
    seq = cq_codec.load(frames_per_chunk=20)
    seq.pipeline = False
    pip = api.Codec(seq.model, name=seq.name, frames_per_chunk=20)
    assert pip.pipeline and not seq.pipeline
    wav = ar_signal(2.3, 11, 0.2)                  # 77 hops: 3 full chunks and a short one
    for n in range(1, seq.num_modules + 1):
        data = pip.compress(wav, 16000, num_modules=n)
        assert data == seq.compress(wav, 16000, num_modules=n)
        y, _ = pip.decompress(data)
        np.testing.assert_array_equal(y, seq.decompress(data)[0])
        codes, ref = pip.encode(wav, 16000, num_modules=n), seq.encode(wav, 16000, num_modules=n)
        same_chunks(codes.chunks(20), ref.chunks(20))
        np.testing.assert_array_equal(pip.decode(codes), seq.decode(ref))
        np.testing.assert_array_equal(pip.decode(codes), y)


@pytest.mark.parametrize("sizes", [[480], [7, 1500, 33], [5000], [100000]])
def test_stream_encoder_pieces_and_one_call_in_flight(model, sizes):
    """Pushed in any pieces, the pipelined StreamEncoder returns the sequential one's chunks
    (a chunk comes with the next push that completes a chunk, or with finish); its network calls
    run on a worker thread, never two at once."""
    wav = ar_signal(1.3, 3)
    ref = push_all(inference.StreamEncoder(model, frames_per_chunk=5), wav, sizes)
    watch = Watch(model)
    enc = inference.StreamEncoder(model, frames_per_chunk=5, backend=watch, pipeline=True)
    got = push_all(enc, wav, sizes)
    same_chunks(got, ref)
    assert watch.max_active == 1 and not any(watch.threads) and len(watch.threads) == len(ref)
    assert enc._inflight is None
    whole = inference.encode(model, wav, frames_per_chunk=5)
    same_chunks(whole.chunks(5), inference.encode(model, wav, frames_per_chunk=5, pipeline=False).chunks(5))
    same_chunks(whole.chunks(5), ref)


def test_pipelined_push_returns_each_chunk_one_chunk_later(model):
    wav = ar_signal(0.5, 4)                        # 17 hops, chunks of 4
    enc = inference.StreamEncoder(model, frames_per_chunk=4, pipeline=True)
    seq = inference.StreamEncoder(model, frames_per_chunk=4)
    counts = [(len(enc.push(wav[s: s + 960])), len(seq.push(wav[s: s + 960]))) for s in range(0, wav.size, 960)]
    assert sum(a for a, _ in counts) == sum(b for _, b in counts) - 1     # one chunk still in flight
    assert len(enc.finish()) == len(seq.finish()) + 1


def test_stream_decoder_equals_push_and_overlaps(model, monkeypatch):
    """`StreamDecoder.stream` yields what `push` returns, chunk by chunk, bit for bit, and starts
    chunk k's network call before chunk k - 1's synthesis."""
    codes = inference.encode(model, ar_signal(1.1, 6), frames_per_chunk=6)
    chunks = codes.chunks(6)
    seq = inference.StreamDecoder(model, codes.num_samples)
    want = [seq.push(c) for c in chunks]
    watch = Watch(model)
    dec = inference.StreamDecoder(model, codes.num_samples, backend=watch)
    started, seen, synthesize = [], [], dec._synthesize

    class Counted(inference._Background):
        def __init__(self, fn, *args):
            started.append(len(started))
            super().__init__(fn, *args)
    monkeypatch.setattr(inference, "_Background", Counted)

    def recorded(prepared, frames):
        seen.append(len(started))                 # network calls started when chunk k - 1 is synthesised
        return synthesize(prepared, frames)
    dec._synthesize = recorded
    got = list(dec.stream(chunks))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert watch.max_active == 1 and not any(watch.threads) and len(watch.threads) == len(chunks)
    # chunk k - 1 is synthesised after chunk k's network call started (the last one after all)
    assert seen == [min(k + 2, len(chunks)) for k in range(len(chunks))]
    np.testing.assert_array_equal(inference.decode(model, codes, 6), inference.decode(model, codes, 6, pipeline=False))


def test_stream_decoder_errors_come_after_the_blocks_before_them(model):
    """An error from the chunk source or from a chunk's checks is raised after the samples of
    the chunks before it, as with push."""
    codes = inference.encode(model, ar_signal(0.9, 7), frames_per_chunk=5)
    chunks = codes.chunks(5)

    def source(bad):
        for k, c in enumerate(chunks):
            if k == 2:
                if bad == "source":
                    raise RuntimeError("source failed")
                c = c._replace(lsf=c.lsf[:, :3])
            yield c
    ref = inference.StreamDecoder(model)
    want = [ref.push(c) for c in chunks[:2]]
    for bad, err in (("source", RuntimeError), ("chunk", ValueError)):
        got = []
        with pytest.raises(err):
            for y in inference.StreamDecoder(model).stream(source(bad)):
                got.append(y)
        assert len(got) == 2 and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_damaged_stream_gives_the_same_blocks_then_the_same_error(model):
    pip = api.Codec(model, frames_per_chunk=5)
    seq = api.Codec(model, frames_per_chunk=5, pipeline=False)
    data = pip.compress(ar_signal(1.0, 8), 16000)
    assert data == seq.compress(ar_signal(1.0, 8), 16000)
    cut = data[: len(data) - 40]                    # the last chunks truncated
    outcomes = []
    for codec in (pip, seq):
        _, blocks = codec.decompress_blocks(Unseekable(cut))
        got = []
        with pytest.raises(Exception) as info:
            for y in blocks:
                got.append(y)
        outcomes.append((got, type(info.value), str(info.value)))
    (a, ta, ma), (b, tb, mb) = outcomes
    assert (ta, ma) == (tb, mb) and len(a) == len(b) > 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_codes_join_of_pipelined_stream(model):
    wav = ar_signal(0.8, 9)
    enc = inference.StreamEncoder(model, frames_per_chunk=3, pipeline=True)
    joined = Codes.join(push_all(enc, wav, [777]), enc.num_samples)
    ref = inference.encode(model, wav, frames_per_chunk=3, pipeline=False)
    assert np.array_equal(joined.lsf, ref.lsf)
    assert all(np.array_equal(a, b) for a, b in zip(joined.modules, ref.modules))
