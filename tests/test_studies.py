"""Study helpers and tiny runs of the three study scripts (files, columns, measured kbps from bytes)."""

import csv
import os
import sys

import numpy as np
import pytest

from cq_codec.config import Config
from cq_codec.data.corpora import Utterance
from cq_codec import experiment
from cq_codec.evaluation import studies
from cq_codec.training import modes
from tests.conftest import write_librispeech

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("libri")
    write_librispeech(str(root), speakers=("19", "26", "32", "39", "40", "41", "42", "43", "44", "45"), seconds=1.2)
    return str(root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    tmp = tmp_path_factory.mktemp("train")
    cfg = Config(name="tiny_vq", results_dir=str(tmp / "results"), cache_dir=str(tmp / "cache"), corpus="librispeech",
                 data_dir=corpus, training_mode=1, num_modules=1, channels=8, bottleneck=2, blocks_per_section=1,
                 quantizer="vq", embedding_dim=8, codebook_size=16, epoch_tanh=2, pretrain_step=1, steps_per_epoch=1,
                 validation_steps=1, batch_size=4).validate()
    out = modes.train(cfg)
    return cfg, out


def test_select_clips_round_robin_and_deterministic():
    utts = [Utterance(f"/c/{lang}/{spk}/{k}.wav", spk, "folder", None, lang)
            for lang, spk, n in (("en", "a", 5), ("en", "b", 1), ("it", "c", 3)) for k in range(n)]
    got = studies.select_clips(list(reversed(utts)), 5)
    assert [u.speaker for u in got] == ["a", "b", "c", "a", "c"]
    assert got == studies.select_clips(utts, 5)
    assert len(studies.select_clips(utts, 100)) == len(utts)
    with pytest.raises(ValueError, match="max_clips"):
        studies.select_clips(utts, 0)


def test_tables_and_plots(tmp_path):
    rows = [{"codec": "a", "kbps": 8.0, "pesq_wb": 2.0, "stoi": 0.9, "si_sdr": 5.0},
            {"codec": "a", "kbps": 16.0, "pesq_wb": 3.0, "stoi": 0.95, "si_sdr": float("nan")},
            {"codec": "b", "kbps": 9.0, "pesq_wb": 2.5, "stoi": 0.92, "si_sdr": 6.0, "extra": 1}]
    studies.write_csv(rows, str(tmp_path / "x.csv"))
    back = _read(tmp_path / "x.csv")
    assert list(back[0]) == ["codec", "kbps", "pesq_wb", "stoi", "si_sdr", "extra"] and len(back) == 3
    mean = studies.mean_rows(rows, ["codec"], ["pesq_wb", "si_sdr"])
    assert mean[0]["pesq_wb"] == 2.5 and mean[0]["si_sdr"] == 5.0 and mean[0]["clips"] == 2
    studies.write_markdown(mean, str(tmp_path / "x.md"), ["codec", "pesq_wb"], "T", "note")
    text = (tmp_path / "x.md").read_text()
    assert "| codec | pesq_wb |" in text and "| a | 2.500 |" in text and text.startswith("# T")
    studies.plot_metric_vs_kbps(rows, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no rows"):
        studies.write_csv([], str(tmp_path / "e.csv"))


def test_codec_rows_measure_kbps_from_bytes(trained):
    cfg, out = trained
    codec = experiment.load_codec(cfg.experiment_dir)
    clips = studies.load_clips(studies.select_clips(out["parts"]["test"], 2))
    rows = studies.codec_rows(codec, clips, "tiny", processes=1)
    assert len(rows) == len(clips)
    for r, (_, wav) in zip(rows, clips):
        data = codec.compress(wav, 16000)
        assert r["bytes"] == len(data)
        assert r["kbps"] == pytest.approx(len(data) * 8 / (len(wav) / 16000) / 1000)
        assert 0 < r["payload_kbps"] < r["kbps"]
        assert {"pesq_wb", "stoi", "si_sdr", "encode_ms_per_s"} <= set(r)
    stats = studies.code_statistics(codec, clips)
    assert 0 < stats["utilisation"] <= 1 and 1 <= stats["perplexity"] <= 16 and stats["alphabet"] == 16


def test_compare_clip_matches_baselines_to_each_operating_point(trained, tmp_path):
    cfg, out = trained
    codec = experiment.load_codec(cfg.experiment_dir)
    (name, wav), = studies.load_clips(studies.select_clips(out["parts"]["test"], 1))
    rows = studies.compare_clip(codec, wav, name="c", out_dir=str(tmp_path))
    assert [r["codec"].split()[0] for r in rows] == ["cq", "opus", "amrwb"] * codec.num_modules
    cq_kbps = codec.compress(wav, 16000)
    assert rows[0]["kbps"] == pytest.approx(len(cq_kbps) * 8 / (len(wav) / 16000) / 1000)
    # Opus is asked for the CQ file's rate (at least its 6 kbps floor); AMR-WB gets its nearest mode.
    assert rows[1]["codec"] == f"opus {max(6.0, round(rows[0]['kbps'], 1)):g}"
    assert rows[2]["codec"] == f"amrwb {studies.nearest_amrwb_mode(rows[0]['kbps']):g}"
    assert all(np.isfinite(r["pesq_wb"]) and 0 <= r["stoi"] <= 1 for r in rows)
    assert len(list(tmp_path.glob("c_*.wav"))) == len(rows) + 1       # every decoded version + the reference
    assert studies.nearest_amrwb_mode(9.0) == 8.85 and studies.nearest_amrwb_mode(30.0) == 23.85


sys.path.insert(0, os.path.join(ROOT, "scripts"))
import bitrate_scaling  # noqa: E402
import compare_quantizers  # noqa: E402
import denoise_study  # noqa: E402


def _bitrate_scaling(tmp_path, cfg, corpus, name, **kw):
    out = tmp_path / name
    bitrate_scaling.run(bitrate_scaling.options(models=cfg.experiment_dir, data_dir=corpus, corpus="librispeech",
                                                processes=1, out=str(out), **kw))
    return out


def test_bitrate_scaling_script(tmp_path, trained, corpus):
    cfg, _ = trained
    out = _bitrate_scaling(tmp_path, cfg, corpus, "bs", max_clips=2, baselines="opus", baseline_kbps="12")
    for f in ("bitrate_scaling.csv", "summary.csv", "summary.md", "bitrate_scaling.png"):
        assert (out / f).exists(), f
    rows = _read(out / "bitrate_scaling.csv")
    assert {r["codec"] for r in rows} == {"cq tiny_vq", "opus"}
    for r in rows:
        assert float(r["kbps"]) == pytest.approx(int(r["bytes"]) * 8 / float(r["seconds"]) / 1000, rel=1e-6)
        assert {"pesq_wb", "stoi", "si_sdr", "snr_0_05", "snr_6_8", "seg_snr", "oracle_pesq_wb"} <= set(r)
        assert not any(k.startswith("_") for k in r)           # the per-clip spectra went to the plot only
    summary = (out / "summary.md").read_text()
    assert f"--corpus librispeech --data_dir {corpus}" in summary and "of the librispeech corpus in" in summary
    assert "--baselines opus --baseline_kbps 12" in summary
    assert "| snr_0_05 | snr_05_1 | snr_1_2 | snr_2_4 | snr_4_6 | snr_6_8 | seg_snr | oracle_pesq_wb |" in summary
    assert "seg_snr" in _read(out / "summary.csv")[0] and (out / "error_spectra.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="no model.keras"):
        bitrate_scaling.model_dirs(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="--split must be train, val or test"):
        _bitrate_scaling(tmp_path, cfg, corpus, "bs_dev", split="dev")
    assert not (tmp_path / "bs_dev").exists()


def test_bitrate_scaling_on_the_training_split_with_and_without_postfilter(tmp_path, trained, corpus):
    cfg, _ = trained
    out = _bitrate_scaling(tmp_path, cfg, corpus, "bs_train", max_clips=1, baselines="", split="train",
                           postfilter="both", diagnostics="off")
    text = (out / "summary.md").read_text()
    assert "train split" in text and "--split train" in text and "--postfilter both" in text
    assert "--diagnostics off" in text and "seg_snr" not in text and not (out / "error_spectra.png").exists()
    rows = _read(out / "bitrate_scaling.csv")
    assert {r["codec"] for r in rows} == {"cq tiny_vq", "cq tiny_vq (no postfilter)"}
    by = {(r["codec"], r["modules"]): r for r in rows}
    for (codec, n), r in by.items():   # the postfilter is decoder-side: same bytes, other audio
        if codec == "cq tiny_vq":
            other = by[("cq tiny_vq (no postfilter)", n)]
            assert r["bytes"] == other["bytes"] and r["si_sdr"] != other["si_sdr"]
    with pytest.raises(ValueError, match="--postfilter must be on, off or both"):
        _bitrate_scaling(tmp_path, cfg, corpus, "bs_pf", postfilter="yes")
    assert not (tmp_path / "bs_pf").exists()
    with pytest.raises(ValueError, match="--diagnostics must be on or off"):
        _bitrate_scaling(tmp_path, cfg, corpus, "bs_diag", diagnostics="no")
    assert not (tmp_path / "bs_diag").exists()


def test_compare_quantizers_script(tmp_path, corpus):
    out = tmp_path / "q"
    compare_quantizers.run(compare_quantizers.options(
        quantizers="rvq", seeds="1", steps=2, epochs=2, batch_size=4, channels=8, max_clips=1, data_dir=corpus,
        corpus="librispeech", cache_dir=str(tmp_path / "cache"), out=str(out), work=str(tmp_path / "work")))
    for f in ("quantizers.csv", "summary.csv", "summary.md", "per_clip.csv", "quantizers.png", "training.png"):
        assert (out / f).exists(), f
    summary = _read(out / "summary.csv")
    assert [r["quantizer"] for r in summary] == ["rvq"]
    for col in ("kbps", "payload_kbps", "utilisation", "pesq_wb", "stoi", "params", "encode_ms_per_s", "pesq_wb_std"):
        assert col in summary[0]
    assert float(summary[0]["operating_points"]) == 2      # 2 RVQ stages
    assert not list(out.glob("*.keras")) and (tmp_path / "work" / "rvq_s1" / "model.keras").exists()
    # Training seconds persist, so a rerun that re-scores finished models reports the real cost.
    seconds = float((tmp_path / "work" / "rvq_s1" / "train_seconds.txt").read_text())
    assert seconds == pytest.approx(float(summary[0]["train_seconds"]), rel=1e-3)
    with pytest.raises(ValueError, match="unknown quantizer"):
        compare_quantizers.make_config("nope", 1, "w", **{k: compare_quantizers.DEFAULTS[k] for k in (
            "steps", "epochs", "batch_size", "channels", "target_kbps", "learning_rate", "max_train_minutes",
            "data_dir", "corpus", "cache_dir")})


def test_denoise_study_script(tmp_path, corpus, trained):
    out, work = tmp_path / "d", tmp_path / "dw"
    denoise_study.run(denoise_study.options(
        quantizers="gumbel", steps=2, epochs=2, batch_size=4, channels=8, max_clips=1, test_snrs="5",
        babble_utterances=4, data_dir=corpus, corpus="librispeech", cache_dir=str(tmp_path / "cache"),
        out=str(out), work=str(work), reference_models=trained[0].experiment_dir, clean_reference="gumbel"))
    for f in ("denoising.csv", "summary.csv", "summary.md", "denoising.png"):
        assert (out / f).exists(), f
    summary = _read(out / "summary.csv")
    assert {r["system"] for r in summary} == {"noisy input", "gumbel denoiser", "tiny_vq (clean-trained)",
                                              "clean_gumbel_s1 (clean-trained)"}
    assert (work / "clean_gumbel_s1" / "model.keras").exists()     # same config, trained without noise
    assert {r["noise"] for r in summary} == {"coloured", "babble"}
    noisy_input = [r for r in summary if r["system"] == "noisy input"]
    # The SI-SDR of the noisy input against the clean clip is the mixing SNR (noise uncorrelated).
    assert all(abs(float(r["si_sdr"]) - 5.0) < 1.5 for r in noisy_input)
    assert any(f.endswith("_denoised.wav") for f in os.listdir(work / "examples"))


def test_noisy_test_set_is_seeded_and_exact():
    from cq_codec.data import noise
    clips = [("a", np.sin(np.arange(8000) * 0.05).astype(np.float32)), ("b", np.cos(np.arange(6000) * 0.07).astype(np.float32))]
    sources = {"coloured": noise.ColouredNoise()}
    a = denoise_study.noisy_test_set(clips, ["s1", "s2"], sources, [0.0, 10.0], seed=3)
    b = denoise_study.noisy_test_set(clips, ["s1", "s2"], sources, [0.0, 10.0], seed=3)
    assert len(a) == 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["noisy"], y["noisy"])
        clean = clips[x["index"]][1].astype(np.float64)
        assert abs(noise.measured_snr_db(clean, x["noisy"] - clean) - x["snr_db"]) < 0.1
