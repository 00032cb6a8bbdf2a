"""Shared test helpers: tiny generated corpora in every on-disk layout (never downloaded)."""

import io
import os

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite runs the keras backend unless a test asks for another: its codes define the golden
# files, and the default ("auto": tflite where it serves the model) is tested where it is chosen
# (tests/test_tflite.py). Set before cq_codec.api reads it.
os.environ["CQ_CODEC_BACKEND"] = "keras"


def speechlike(seconds, rate=16000, channels=1, seed=0):
    """A voiced-speech-like test signal: harmonics of a gliding pitch, amplitude-modulated,
    plus a little noise. float32 [N] or [N, channels], peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
    x = (0.5 * x / np.max(np.abs(x))).astype(np.float32)
    if channels == 1:
        return x
    return np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)


def _write(path, seconds, rate=16000, channels=1, seed=0, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, speechlike(seconds, rate, channels, seed), rate, **kwargs)
    return path


def write_broken(path):
    """A file with an audio name that is not audio."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"this is not audio at all" * 10)
    return path


def write_timit(root, lower=False, speakers=None, seconds=0.25):
    """TRAIN|TEST/DRn/<SPK>/<UTT>.WAV in NIST SPHERE; SA1, SI.., SX.. per speaker; plus .PHN."""
    speakers = speakers or {"train": [("dr1", "FCJF0"), ("dr1", "MDAC0"), ("dr2", "FAEM0"),
                                      ("dr3", "MADC0"), ("dr4", "FALK0")],
                            "test": [("dr1", "MDAB0"), ("dr2", "FPAS0"), ("dr5", "MHMR0")]}
    case = str.lower if lower else str.upper
    paths = []
    for i, (subset, spks) in enumerate(sorted(speakers.items())):
        for j, (dr, spk) in enumerate(spks):
            d = os.path.join(root, case(subset), case(dr), case(spk))
            for k, utt in enumerate(("sa1", "si1027", "sx127")):
                paths.append(_write(os.path.join(d, case(utt) + case(".wav")), seconds,
                                    seed=100 * i + 10 * j + k, format="NIST",
                                    subtype="PCM_16"))
            with open(os.path.join(d, case("si1027.phn")), "w") as f:
                f.write("0 100 h#\n")
    return paths


def write_vctk(root, version="0.92", speakers=("p225", "p226", "p227", "p228"), seconds=0.2):
    """VCTK 0.80 (wav48/<spk>/<spk>_<n>.wav) or 0.92 (..._mic1.flac and _mic2.flac), 48 kHz."""
    paths = []
    for i, spk in enumerate(speakers):
        for n in (1, 2):
            if version == "0.80":
                paths.append(_write(os.path.join(root, "wav48", spk, f"{spk}_{n:03d}.wav"),
                                    seconds, 48000, seed=i * 10 + n))
            else:
                for mic in (1, 2):
                    paths.append(_write(os.path.join(root, "wav48_silence_trimmed", spk,
                                                     f"{spk}_{n:03d}_mic{mic}.flac"),
                                        seconds, 48000, seed=i * 10 + n))
    return paths


def write_librispeech(root, speakers=("19", "26", "32", "39", "40"), seconds=0.2):
    """<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac at 16 kHz."""
    paths = []
    for i, spk in enumerate(speakers):
        chapter = str(198 + i)
        for n in range(2):
            paths.append(_write(os.path.join(root, "train-clean-100", spk, chapter,
                                             f"{spk}-{chapter}-{n:04d}.flac"),
                                seconds, seed=i * 10 + n))
    return paths


def write_folder(root, seconds=0.2):
    """Plain folder: 48 kHz stereo wav, 22.05 kHz ogg, 8 kHz flac, in speaker sub-folders."""
    return [
        _write(os.path.join(root, "alice", "a1.wav"), seconds, 48000, 2, seed=1),
        _write(os.path.join(root, "alice", "a2.ogg"), seconds, 22050, 1, seed=2),
        _write(os.path.join(root, "bob", "b1.flac"), seconds, 8000, 1, seed=3),
        _write(os.path.join(root, "carol", "c1.wav"), seconds, 48000, 2, seed=4),
        _write(os.path.join(root, "dave", "d1.wav"), seconds, 16000, 1, seed=5),
    ]


@pytest.fixture
def corpus_factory(tmp_path):
    """make(layout, **kwargs) -> root of a tiny corpus of that layout under tmp_path."""
    writers = {"timit": write_timit, "vctk": write_vctk, "librispeech": write_librispeech,
               "folder": write_folder}

    def make(layout, **kwargs):
        root = str(tmp_path / layout)
        writers[layout](root, **kwargs)
        return root
    return make


def check_backend_against_keras(keras_codec, other, wav, num_modules, code_agreement, audio_close):
    """A backend's codes agree with keras's (LSF codes equal, at least `code_agreement` of each
    module's codes), and bytes made by either decode with both: `audio_close(y_keras, y_other)`
    asserts how close the two decodes of the same bytes must be."""
    ck, co = keras_codec.encode(wav, 16000, num_modules), other.encode(wav, 16000, num_modules)
    assert np.array_equal(ck.lsf, co.lsf)            # LSF codes are numpy on every backend
    assert len(co.modules) == num_modules
    for a, b in zip(ck.modules, co.modules):
        assert a.shape == b.shape and b.dtype == np.int32
        assert np.mean(a == b) >= code_agreement
    for data in (keras_codec.compress(wav, 16000, num_modules=num_modules),
                 other.compress(wav, 16000, num_modules=num_modules)):
        yk, _ = keras_codec.decompress(data)
        yo, _ = other.decompress(data)
        assert yk.shape == yo.shape == wav.shape
        audio_close(yk, yo)


class Unseekable(io.RawIOBase):
    """A pipe-like stream: no size known up front (the per-chunk checks must hold alone)."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self._f.readinto(b)
