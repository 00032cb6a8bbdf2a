"""Finding the utterances of a speech corpus on disk, and reading them robustly.

Layouts (`corpus=`):
- ``'timit'``: ``TRAIN|TEST/DR1..DR8/<SPEAKER>/<UTT>.WAV`` (either case), NIST SPHERE.
  SA1/SA2 (read by every speaker) are left out unless ``include_sa=True``.
- ``'vctk'``: ``wav48/<spk>/<spk>_<n>.wav`` (0.80) or
  ``wav48_silence_trimmed/<spk>/<spk>_<n>_mic1.flac`` (0.92; mic2 is left out).
- ``'librispeech'``: ``<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac``.
- ``'demo'``: a folder with a ``manifest.json`` (as written by `cq_codec.data.demo`): speakers
  and splits come from the manifest.
- ``'folder'``: every wav/flac/ogg below the folder; the speaker is the file's parent folder
  relative to the root (files directly in the root are each their own speaker).
- ``'auto'``: the demo manifest if present, else the layout that most audio files match
  (more than half of them), else ``'folder'``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np

import constants
from cq_codec.data.audio import AudioError, is_audio_path, load_audio

__all__ = ["CORPORA", "Utterance", "detect_corpus", "discover", "AudioReader",
           "MANIFEST_NAME"]

log = logging.getLogger(__name__)

CORPORA = ("auto", "timit", "vctk", "librispeech", "demo", "folder")
MANIFEST_NAME = "manifest.json"

_TIMIT_SUBSET = re.compile(r"^(train|test)$", re.I)
_TIMIT_DR = re.compile(r"^dr[1-8]$", re.I)
_TIMIT_UTT = re.compile(r"^(sa|si|sx)\d+\.wav$", re.I)
_VCTK_DIRS = ("wav48", "wav48_silence_trimmed")
_VCTK_UTT = re.compile(r"^(?P<spk>[a-z]\d+)_(?P<n>\d+)(?P<mic>_mic[12])?\.(wav|flac)$", re.I)
_LIBRI_UTT = re.compile(r"^(?P<spk>\d+)-(?P<chap>\d+)-(?P<n>\d+)\.flac$", re.I)


@dataclasses.dataclass(frozen=True, order=True)
class Utterance:
    """One audio file of a corpus.

    path: absolute path; speaker: speaker id (unique within the corpus); corpus: layout name;
    subset: the corpus's own partition if it has one (TIMIT 'train' / 'test', the demo's
    'train' / 'val' / 'test'), else None; language: ISO code if known, else None.
    """
    path: str
    speaker: str
    corpus: str
    subset: str | None = None
    language: str | None = None


def _audio_files(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_audio_path(f))
    return found


def _parts(path: str, root: str) -> list[str]:
    return os.path.relpath(path, root).split(os.sep)


def _timit(path: str, root: str, include_sa: bool) -> Utterance | None:
    p = _parts(path, root)
    if (len(p) < 4 or not _TIMIT_SUBSET.match(p[-4]) or not _TIMIT_DR.match(p[-3])
            or not _TIMIT_UTT.match(p[-1])):
        return None
    if not include_sa and p[-1].lower().startswith("sa"):
        return None
    return Utterance(path, p[-2].upper(), "timit", p[-4].lower(), "en")


def _is_timit_sa(path: str, root: str) -> bool:
    p = _parts(path, root)
    return (len(p) >= 4 and bool(_TIMIT_SUBSET.match(p[-4])) and bool(_TIMIT_DR.match(p[-3]))
            and bool(_TIMIT_UTT.match(p[-1])) and p[-1].lower().startswith("sa"))


def _vctk(path: str, root: str, any_mic: bool = False) -> Utterance | None:
    p = _parts(path, root)
    m = _VCTK_UTT.match(p[-1])
    if len(p) < 3 or p[-3] not in _VCTK_DIRS or not m or m.group("spk") != p[-2]:
        return None
    if (not any_mic and p[-3] == "wav48_silence_trimmed"
            and (m.group("mic") or "").lower() != "_mic1"):
        return None
    return Utterance(path, p[-2], "vctk", None, "en")


def _librispeech(path: str, root: str) -> Utterance | None:
    p = _parts(path, root)
    m = _LIBRI_UTT.match(p[-1])
    if len(p) < 3 or not m or m.group("spk") != p[-3] or m.group("chap") != p[-2]:
        return None
    return Utterance(path, p[-3], "librispeech", None, "en")


def _folder(path: str, root: str) -> Utterance:
    p = _parts(path, root)
    speaker = "/".join(p[:-1]) if len(p) > 1 else os.path.splitext(p[-1])[0]
    return Utterance(path, speaker, "folder")


def _demo(root: str) -> list[Utterance]:
    manifest_path = os.path.join(root, MANIFEST_NAME)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            entries = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{manifest_path}: not a readable corpus manifest ({e})") from e
    utts = []
    for e in entries:
        path = os.path.join(root, e["file"])
        if not os.path.isfile(path):
            log.warning("%s: listed in %s but missing; skipped", path, MANIFEST_NAME)
            continue
        utts.append(Utterance(path, e["speaker"], "demo", e.get("split"), e.get("language")))
    return utts


def _is_demo_manifest(path: str) -> bool:
    """A manifest.json with a list of {'file', 'speaker', ...} entries (see demo.py)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            files = json.load(f).get("files")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(files, list) and all(isinstance(e, dict) and "file" in e
                                           and "speaker" in e for e in files)


def detect_corpus(data_dir: str | os.PathLike) -> str:
    """The layout of `data_dir`: one of 'timit', 'vctk', 'librispeech', 'demo', 'folder'."""
    root = _check_dir(data_dir)
    if _is_demo_manifest(os.path.join(root, MANIFEST_NAME)):
        return "demo"
    files = _audio_files(root)
    if not files:
        raise ValueError(f"no audio files ({', '.join(('wav', 'flac', 'ogg'))}) under {root}")
    counts = {
        "timit": sum(_timit(f, root, True) is not None for f in files),
        "vctk": sum(_vctk(f, root, any_mic=True) is not None for f in files),
        "librispeech": sum(_librispeech(f, root) is not None for f in files),
    }
    best = max(counts, key=counts.get)
    return best if counts[best] * 2 > len(files) else "folder"


def _check_dir(data_dir: str | os.PathLike) -> str:
    if data_dir is None or str(data_dir) == "":
        raise ValueError("data_dir is empty: give the folder that holds the corpus")
    root = os.path.abspath(os.fspath(data_dir))
    if not os.path.exists(root):
        raise FileNotFoundError(f"corpus directory does not exist: {root}")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"corpus path is not a directory: {root}")
    return root


def discover(data_dir: str | os.PathLike, corpus: str = "auto",
             include_sa: bool = False) -> list[Utterance]:
    """All utterances of the corpus under `data_dir`, sorted by path.

    Raises FileNotFoundError for a missing directory, ValueError for an unknown `corpus` or a
    directory without audio files matching the layout.
    """
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {CORPORA}")
    root = _check_dir(data_dir)
    if corpus == "auto":
        corpus = detect_corpus(root)
        log.info("%s: detected corpus layout %r", root, corpus)
    if corpus == "demo":
        utts = _demo(root)
    else:
        files = _audio_files(root)
        if corpus == "timit":
            utts = [u for f in files if (u := _timit(f, root, include_sa)) is not None]
            n_sa = 0 if include_sa else sum(_is_timit_sa(f, root) for f in files)
            ignored = len(files) - len(utts) - n_sa
        elif corpus == "vctk":
            utts = [u for f in files if (u := _vctk(f, root)) is not None]
            ignored = sum(_vctk(f, root, any_mic=True) is None for f in files)
        elif corpus == "librispeech":
            utts = [u for f in files if (u := _librispeech(f, root)) is not None]
            ignored = len(files) - len(utts)
        else:
            utts = [_folder(f, root) for f in files]
            ignored = 0
        if ignored:
            log.warning("%s: %d audio files do not fit the %s layout and are ignored",
                        root, ignored, corpus)
    if not utts:
        raise ValueError(f"no {corpus} audio files found under {root}")
    return sorted(utts)


class AudioReader:
    """Iterates (utterance, audio float32 [N] at `sample_rate`, mono), skipping bad files.

    A file that cannot be used is reported with `logging.warning` (path and reason) and
    skipped; `skipped` lists (path, reason) and the end of the iteration logs the count.
    """

    def __init__(self, utterances: Sequence[Utterance],
                 sample_rate: int = constants.SAMPLE_RATE):
        self.utterances = list(utterances)
        self.sample_rate = sample_rate
        self.skipped: list[tuple[str, str]] = []
        self.loaded = 0

    def __iter__(self) -> Iterator[tuple[Utterance, np.ndarray]]:
        self.skipped, self.loaded = [], 0
        for utt in self.utterances:
            try:
                audio = load_audio(utt.path, self.sample_rate)
            except AudioError as e:
                log.warning("skipping %s: %s", e.path, e.reason)
                self.skipped.append((e.path, e.reason))
                continue
            self.loaded += 1
            yield utt, audio
        if self.skipped:
            log.warning("skipped %d of %d audio files (unreadable, empty or not audio)",
                        len(self.skipped), len(self.utterances))
