"""Speaker-disjoint, deterministic train / val / test splits.

Speakers are sorted and shuffled with `numpy.random.default_rng(seed)`, then the first
round(test_fraction * n) go to test, the next round(val_fraction * n) to val, the rest to
train (each non-zero fraction gets at least one speaker while two or more are left for
training). Corpora with their own partition keep it: TIMIT's TEST is the test set (or only its
24-speaker core test set with `timit_core_test=True`) and val speakers are drawn from TRAIN; the
demo corpus uses the splits written in its manifest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cq_codec.data.corpora import Utterance

__all__ = ["SPLITS", "TIMIT_CORE_TEST_SPEAKERS", "split_speakers", "split_utterances"]

SPLITS = ("train", "val", "test")

# The TIMIT core test set: 2 male + 1 female speaker per dialect region (TIMIT README.DOC).
TIMIT_CORE_TEST_SPEAKERS = frozenset({
    "MDAB0", "MWBT0", "FELC0", "MTAS1", "MWEW0", "FPAS0", "MJMP0", "MLNT0", "FPKT0",
    "MLLL0", "MTLS0", "FJLM0", "MBPM0", "MKLT0", "FNLP0", "MCMJ0", "MJDH0", "FMGD0",
    "MGRT0", "MNJM0", "FDHC0", "MJLN0", "MPAM0", "FMLD0"})


def _count(fraction: float, n: int, left: int) -> int:
    if fraction <= 0:
        return 0
    k = max(1, int(round(fraction * n)))
    return max(0, min(k, left - 2))


def split_speakers(speakers: Sequence[str], val_fraction: float = 0.1,
                   test_fraction: float = 0.1, seed: int = 0) -> dict[str, list[str]]:
    """Partitions distinct speaker ids -> {'train', 'val', 'test'}: sorted lists, disjoint."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got "
                         f"{val_fraction} + {test_fraction}")
    unique = sorted(set(speakers))
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n_test = _count(test_fraction, len(unique), len(unique))
    n_val = _count(val_fraction, len(unique), len(unique) - n_test)
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def split_utterances(utterances: Sequence[Utterance], val_fraction: float = 0.1,
                     test_fraction: float = 0.1, seed: int = 0,
                     timit_core_test: bool = False) -> dict[str, list[Utterance]]:
    """Utterances -> {'train', 'val', 'test'}: lists sorted by path, no speaker in two splits.

    For TIMIT `test_fraction` is unused (TEST is the test set); for the demo corpus neither
    fraction is used (the manifest decides).
    """
    utterances = sorted(utterances)
    if not utterances:
        raise ValueError("no utterances to split")
    corpora = {u.corpus for u in utterances}
    if len(corpora) != 1:
        raise ValueError(f"utterances of several corpora cannot be split together: {corpora}")
    corpus = corpora.pop()
    if corpus == "demo":
        speaker_split: dict[str, str] = {}
        for u in utterances:
            if u.subset not in SPLITS:
                raise ValueError(f"{u.path}: manifest split {u.subset!r} not in {SPLITS}")
            if speaker_split.setdefault(u.speaker, u.subset) != u.subset:
                raise ValueError(f"manifest puts speaker {u.speaker!r} in two splits")
        return {s: [u for u in utterances if u.subset == s] for s in SPLITS}
    if corpus == "timit":
        train_spk = sorted({u.speaker for u in utterances if u.subset == "train"})
        test_spk = {u.speaker for u in utterances if u.subset == "test"}
        if timit_core_test:
            test_spk &= TIMIT_CORE_TEST_SPEAKERS
        parts = split_speakers(train_spk, val_fraction, 0.0, seed)
        by_speaker = {s: k for k in ("train", "val") for s in parts[k]}
        by_speaker.update({s: "test" for s in test_spk})
    else:
        parts = split_speakers([u.speaker for u in utterances], val_fraction, test_fraction, seed)
        by_speaker = {s: k for k in SPLITS for s in parts[k]}
    out: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for u in utterances:
        if u.speaker in by_speaker:
            out[by_speaker[u.speaker]].append(u)
    return out
