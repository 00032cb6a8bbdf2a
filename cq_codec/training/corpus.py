"""One policy from a corpus to its splits, shared by the CQ trainer (`modes.load_data`) and the
waveform trainer (`waveform.train_codec`); a module of its own so neither trainer imports the other.
"""

from __future__ import annotations

import os

from cq_codec.config import Config, ConfigError
from cq_codec.data import corpora, splits
from cq_codec.data.demo import DemoCorpusError, build_demo_corpus

__all__ = ["load_splits"]


def load_splits(cfg: Config) -> dict:
    """Corpus -> {"train", "val", "test"} utterances (seeded speaker split), every split non-empty;
    builds the demo corpus when asked for and missing. ConfigError naming --data_dir otherwise.
    (The CQ and the waveform trainers both start here.)"""
    if cfg.corpus == "demo" and not os.path.exists(os.path.join(cfg.data_dir, "manifest.json")):
        parent = os.path.dirname(os.path.abspath(cfg.data_dir))
        if not os.path.isdir(cfg.data_dir) and not os.path.isdir(parent):
            raise ConfigError(f"--data_dir {cfg.data_dir!r}: no such folder (the demo corpus is built only into a "
                              f"folder whose parent exists; for another corpus set --corpus)")
        try:
            build_demo_corpus(cfg.data_dir)
        except (DemoCorpusError, OSError) as exc:
            raise ConfigError(f"--data_dir {cfg.data_dir!r} (--corpus demo): the demo corpus is not there and "
                              f"cannot be built: {exc}") from exc
    try:
        utts = corpora.discover(cfg.data_dir, cfg.corpus)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        raise ConfigError(f"--data_dir {cfg.data_dir!r} (--corpus {cfg.corpus}): {exc}") from exc
    if not utts:
        raise ConfigError(f"--data_dir {cfg.data_dir!r} (--corpus {cfg.corpus}): no audio files found")
    parts = splits.split_utterances(utts, seed=cfg.seed)
    empty = [s for s in ("train", "val", "test") if not parts.get(s)]
    if empty:
        raise ConfigError(f"--data_dir {cfg.data_dir!r}: {len(utts)} utterance(s) leave the {', '.join(empty)} "
                          f"split(s) empty; the corpus needs more speakers")
    return parts
