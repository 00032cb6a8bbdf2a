"""Study scripts check their arguments before any work and name the corpus they really used."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import bitrate_scaling  # noqa: E402

from cq_codec.evaluation import studies  # noqa: E402


@pytest.mark.parametrize("baselines, kbps, message", [
    ("amrwb", "8,16", "--baseline_kbps: amrwb has no 8 kbps mode"),        # AMR-WB: 6.6, 8.85, ...
    ("opus,amrwb", "8.85,16", "--baseline_kbps: amrwb has no 16 kbps mode"),
    ("speex", "10", "--baseline_kbps: speex has no 10 kbps mode"),
    ("opus", "4", "--baseline_kbps: Opus takes 6 to 510 kbps"),
    ("opus", "8,x", "--baseline_kbps"),
    ("flac", "", "--baselines: unknown codec 'flac'"),
])
def test_bad_baseline_rates_fail_before_any_scoring(tmp_path, baselines, kbps, message):
    # Nothing exists: a check that ran after loading models or data would fail differently.
    opts = bitrate_scaling.options(models=str(tmp_path / "no_models"), data_dir=str(tmp_path / "no_data"),
                                   baselines=baselines, baseline_kbps=kbps, out=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        bitrate_scaling.run(opts)
    assert not (tmp_path / "out").exists()


def test_valid_baseline_rates_pass_the_check():
    bitrate_scaling.check_baselines(bitrate_scaling.options(baselines="opus,amrwb", baseline_kbps="8.85,23.85"))
    bitrate_scaling.check_baselines(bitrate_scaling.options(baselines="opus,amrwb,speex", baseline_kbps=""))


def test_summaries_name_the_corpus_used():
    demo = studies.options({"corpus": "demo", "data_dir": "data/demo"})
    other = studies.options({"corpus": "vctk", "data_dir": "/data/my vctk"})
    assert studies.corpus_phrase(demo) == "the demo corpus"
    assert studies.corpus_phrase(other) == "the vctk corpus in /data/my vctk"
    assert studies.corpus_flags(other) == " --corpus vctk --data_dir '/data/my vctk'"


def test_postfilter_study_settings_parse_and_fail_clearly():
    import postfilter_study
    from lpc.postfilter import Postfilter
    got = postfilter_study.parse_settings("0.7:0.85:0.25, 0.85:0.9:0.2:0.6,")
    assert got == [dict(gamma_num=0.7, gamma_den=0.85, pitch_gain=0.25),
                   dict(gamma_num=0.85, gamma_den=0.9, pitch_gain=0.2, pitch_threshold=0.6)]
    pf = Postfilter(**got[1])
    assert (pf.gamma_num, pf.gamma_den, pf.pitch_gain, pf.pitch_threshold) == (0.85, 0.9, 0.2, 0.6)
    with pytest.raises(ValueError, match="expected gamma_num:gamma_den:pitch_gain"):
        postfilter_study.parse_settings("0.7:0.85")
    with pytest.raises(ValueError, match="every field must be a number"):
        postfilter_study.parse_settings("0.7:x:0.2")
