"""One file of weights, many bitrates for CQ: a cascade whose modules quantize with an RVQ runs at
any number of each module's first codebooks through compress / decompress and the CLI."""

import keras
import numpy as np
import pytest
from scipy.signal import lfilter

import cq_codec
import lpc
from cq_codec import inference
from cq_codec.__main__ import main as cli
from cq_codec.api import BitrateError
from cq_codec.bitstream.container import read_nac
from cq_codec.config import Config
from cq_codec.training.trainer import build_model


def ar_signal(seconds, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    x = lfilter([1.0], [1.0, -1.6, 0.8], rng.standard_normal(int(16000 * seconds)))
    return (scale * x / x.std()).astype(np.float32)


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    """Two modules, each an RVQ of 3 stages with unequal codebook sizes (16, 8, 4)."""
    keras.utils.set_random_seed(0)
    sig = ar_signal(1.0, 0, 1.0).astype(np.float64)
    lsf = lpc.analyze(sig)
    ts = range(1, len(lsf) - 2)
    sample = {"x": np.array([sig[t * 480 - 16: t * 480 + 512] for t in ts], np.float32),
              "lsf": np.array([lsf[t - 1: t + 2] for t in ts], np.float32)}
    cfg = Config(num_modules=2, channels=8, bottleneck=4, blocks_per_section=1, quantizer="rvq", num_stages=3,
                 codebook_sizes=(16, 8, 4), embedding_dim=4, the_strides=(4,)).validate()
    model = build_model(cfg, 1.0, sample)
    assert model.codec_modules[0].quantizer.codebook_sizes == [16, 8, 4]
    inference.fit_entropy_tables(model, [ar_signal(0.5, k) for k in range(4)])
    path = tmp_path_factory.mktemp("m") / "rvq.keras"
    model.save(str(path))
    return cq_codec.load(str(path), frames_per_chunk=8)


def test_operating_points_list_every_combination(codec):
    points = codec.operating_points
    assert codec.has_rvq
    combos = {(p.modules, p.codebooks) for p in points}
    want = {(1, (a,)) for a in (1, 2, 3)} | {(2, (a, b)) for a in (1, 2, 3) for b in (1, 2, 3)}
    assert combos == want and len(points) == 12
    kbps = {(p.modules, p.codebooks): p.kbps for p in points}
    assert kbps[1, (1,)] < kbps[1, (2,)] < kbps[1, (3,)] < kbps[2, (3, 1)] < kbps[2, (3, 3)]


def test_fewer_codebooks_compress_decompress_at_every_combination(codec):
    x = ar_signal(0.6, 9)
    for p in codec.operating_points:
        data = codec.compress(x, 16000, codebooks=p.codebooks)
        _, meta, _ = read_nac(data)
        assert meta["codebooks"] == [c if c != 3 else 0 for c in p.codebooks], (p, meta["codebooks"])
        assert meta["stages"] == list(range(1, p.modules + 1))
        back, _ = codec.decompress(data)          # the decoder needs nothing but the header
        assert back.shape == x.shape and np.all(np.isfinite(back))
        if p.codebooks in ((1, 2), (3,)):          # codes -> bytes -> codes, exactly
            codes = codec.encode(x, 16000, codebooks=p.codebooks)
            assert [m.shape[-1] for m in codes.modules] == list(p.codebooks)
            np.testing.assert_array_equal(back, codec.decode(codes))
            assert codec.compress(x, 16000, codebooks=p.codebooks) == data


def test_bitrate_picks_the_fitting_combination_and_unreachable_is_an_error(codec):
    points = codec.operating_points
    mid = sorted(points, key=lambda p: p.kbps)[5]
    p = codec.point_for_bitrate(mid.kbps + 1e-6)
    assert p.kbps == pytest.approx(mid.kbps)
    data = codec.compress(ar_signal(0.3, 2), 16000, bitrate=mid.kbps + 1e-6)
    assert read_nac(data)[1]["stages"] == list(range(1, p.modules + 1))
    low = min(q.kbps for q in points)
    with pytest.raises(BitrateError, match="below every operating point"):
        codec.compress(ar_signal(0.3, 2), 16000, bitrate=low / 2)


def test_cli_fewer_codebooks_and_unreachable_bitrate(codec, tmp_path, capsys):
    import soundfile as sf
    path = str(tmp_path / "m.keras")
    codec.model.save(path)
    wav = tmp_path / "in.wav"
    sf.write(str(wav), ar_signal(0.5, 3), 16000)
    one = min(codec.operating_points, key=lambda p: p.kbps)
    assert cli(["encode", str(wav), str(tmp_path / "a.nac"), "--model", path, "--bitrate", f"{one.kbps + 1e-3:.6f}"]) == 0
    assert read_nac((tmp_path / "a.nac").read_bytes())[1]["codebooks"] == [1]
    assert cli(["decode", str(tmp_path / "a.nac"), str(tmp_path / "a.wav"), "--model", path]) == 0
    assert sf.info(str(tmp_path / "a.wav")).frames == 8000
    capsys.readouterr()
    assert cli(["encode", str(wav), str(tmp_path / "b.nac"), "--model", path, "--bitrate", f"{one.kbps / 3:.6f}"]) == 1
    err = capsys.readouterr().err
    assert "below every operating point" in err and not (tmp_path / "b.nac").exists()
