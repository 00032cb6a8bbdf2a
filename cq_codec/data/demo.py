"""The demo corpus: free human speech from Debian packages, as 16 kHz mono 16-bit wav.

Sources (see /work/shared/DATA.md): Asterisk's G.722 prompts in English, Spanish, French and
Italian (CC-BY-SA 3.0, Digium / the Asterisk project) and the Czech dialogue of Fish Fillets
NG (fillets-ng-data-cs, GPL-2+). Packages are fetched with ``apt-get download`` and unpacked
with ``dpkg -x`` into a temporary folder (nothing is installed).

Splits hold out speakers (and languages) that training never hears:
- train: en, es, the Czech big fish (``*-v-*``) and the guest characters of most levels;
- val:   fr, the Czech guest characters of level 'briefcase';
- test:  it, the Czech small fish (``*-m-*``), the Czech guest characters of level 'gods'.
Czech speakers are read from file names ``[<level>-]<character>-<line>.ogg``: ``m`` is the
small fish and ``v`` the big fish throughout the game (one voice each); the other characters
cannot be told apart by actor, so each level's guest cast counts as one speaker
``cs-<level>`` (an actor may voice guests in several levels: val/test guests are new
characters, not provably new voices). Clips shorter than 0.5 s and silent clips are skipped.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numpy as np

import constants
from cq_codec.data.audio import AudioError, load_audio, write_wav
from cq_codec.data.corpora import MANIFEST_NAME
from cq_codec.data import voices as V

__all__ = ["DEMO_PACKAGES", "DemoCorpusError", "build_demo_corpus", "czech_speaker",
           "demo_split", "NO_DEMO_HELP", "MIN_SECONDS"]

log = logging.getLogger(__name__)

MIN_SECONDS = 0.5
SILENCE_PEAK = 1e-3
# package -> (language, licence file name written next to the audio)
DEMO_PACKAGES = {
    "asterisk-core-sounds-en-g722": "en",
    "asterisk-core-sounds-es-g722": "es",
    "asterisk-core-sounds-fr-g722": "fr",
    "asterisk-core-sounds-it-g722": "it",
    "fillets-ng-data-cs": "cs",
}
_LANGUAGE_SPLIT = {"en": "train", "es": "train", "fr": "val", "it": "test"}
_CZECH_SPLIT = {"cs-small-fish": "test", "cs-gods": "test", "cs-briefcase": "val"}

NO_DEMO_HELP = (
    "The demo corpus could not be built. Train on a corpus of your own instead:\n"
    "  python main.py --data_dir /path/to/corpus   (TIMIT, VCTK, LibriSpeech or any folder\n"
    "  of wav/flac/ogg files; the layout is detected, see cq_codec/data/corpora.py)")

_LICENSE_TEXT = {
    "asterisk": (
        "Asterisk core sounds (English, Spanish, French, Italian prompts)\n"
        "Licence: Creative Commons Attribution-ShareAlike 3.0 Unported (CC-BY-SA 3.0),\n"
        "https://creativecommons.org/licenses/by-sa/3.0/\n"
        "Attribution: Digium, Inc. / the Asterisk project; voices credited in the Debian\n"
        "copyright files below. Changes: decoded from G.722 to 16 kHz 16-bit PCM wav.\n"),
    "fillets": (
        "Fish Fillets NG Czech speech data (fillets-ng-data-cs)\n"
        "Licence: GNU General Public License, version 2 or later (GPL-2+),\n"
        "https://www.gnu.org/licenses/old-licenses/gpl-2.0.html\n"
        "Authors: Ivo Danihelka, Pavel Danihelka, ALTAR interactive and contributors.\n"
        "Changes: decoded from Ogg Vorbis, downmixed and resampled to 16 kHz 16-bit wav.\n"),
}


class DemoCorpusError(RuntimeError):
    """The demo corpus cannot be built here (no apt-get, a failed download, ...)."""


def czech_speaker(path: str) -> str:
    """Speaker id of a fillets-ng Czech clip ``.../<level>/cs/[<level>-]<char>-<line>.ogg``."""
    parts = os.path.basename(path).rsplit(".", 1)[0].split("-")
    character = parts[1] if len(parts) >= 3 else parts[0]
    if character == "m":
        return "cs-small-fish"
    if character == "v":
        return "cs-big-fish"
    return "cs-" + os.path.basename(os.path.dirname(os.path.dirname(path)))


def demo_split(language: str, speaker: str) -> str:
    """'train', 'val' or 'test' for a demo speaker (the rule in the module docstring)."""
    if language == "cs":
        return _CZECH_SPLIT.get(speaker, "train")
    if language not in _LANGUAGE_SPLIT:
        raise ValueError(f"no split rule for language {language!r}")
    return _LANGUAGE_SPLIT[language]


def _run(cmd: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _fetch(package: str, tmp: str, say: Callable[[str], None], updated: list[bool]) -> str:
    """apt-get download + dpkg -x -> the unpacked folder."""
    result = _run(["apt-get", "download", package], tmp)
    if result.returncode != 0 and not updated[0]:
        say(f"apt-get download {package} failed; running apt-get update and retrying")
        _run(["apt-get", "update"], tmp)
        updated[0] = True
        result = _run(["apt-get", "download", package], tmp)
    debs = glob.glob(os.path.join(tmp, f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise DemoCorpusError(f"apt-get download {package} failed: "
                              f"{(result.stderr or result.stdout).strip()[-500:]}")
    root = os.path.join(tmp, package)
    unpack = _run(["dpkg", "-x", debs[0], root], tmp)
    if unpack.returncode != 0:
        raise DemoCorpusError(f"dpkg -x {debs[0]} failed: {unpack.stderr.strip()[-500:]}")
    os.remove(debs[0])
    return root


def _decode_g722(src: str) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "g722", "-i", src,
           "-ar", str(constants.SAMPLE_RATE), "-ac", "1", "-f", "s16le", "-"]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0:
        raise AudioError(src, f"ffmpeg failed: {result.stderr.decode(errors='replace')[-300:]}")
    return np.frombuffer(result.stdout, dtype="<i2").astype(np.float32) / 32768.0


def _sources(package: str, root: str) -> list[tuple[str, str, str]]:
    """(source file, speaker, output name) of one unpacked package, sorted."""
    out = []
    if package.startswith("asterisk"):
        sounds = os.path.join(root, "usr", "share", "asterisk", "sounds")
        for src in sorted(glob.glob(os.path.join(sounds, "**", "*.g722"), recursive=True)):
            rel = os.path.relpath(src, sounds).split(os.sep)
            if "silence" in rel[1:-1]:
                continue
            out.append((src, rel[0], "_".join(rel[1:])[:-5] + ".wav"))
    else:
        base = os.path.join(root, "usr", "share", "games", "fillets-ng", "sound")
        for src in sorted(glob.glob(os.path.join(base, "**", "cs", "*.ogg"), recursive=True)):
            level = os.path.basename(os.path.dirname(os.path.dirname(src)))
            name = os.path.basename(src)[:-4]
            out.append((src, czech_speaker(src), f"{level}_{name}.wav"))
    return out


def _save_copyright(out_dir: str, package: str, root: str) -> None:
    src = os.path.join(root, "usr", "share", "doc", package, "copyright")
    if os.path.isfile(src):
        os.makedirs(os.path.join(out_dir, "copyright"), exist_ok=True)
        shutil.copyfile(src, os.path.join(out_dir, "copyright", package))


def _write_licences(out_dir: str) -> None:
    """LICENSE-*.txt next to the audio: licence, attribution and the Debian copyright files."""
    names = {"asterisk": "LICENSE-asterisk-CC-BY-SA-3.0.txt",
             "fillets": "LICENSE-fillets-ng-GPL-2+.txt"}
    for key, text in _LICENSE_TEXT.items():
        parts = [text]
        for package in sorted(DEMO_PACKAGES):
            path = os.path.join(out_dir, "copyright", package)
            if package.startswith(key) and os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    parts.append(f"\n===== Debian copyright file of {package} =====\n"
                                 + f.read())
        with open(os.path.join(out_dir, names[key]), "w", encoding="utf-8") as f:
            f.write("".join(parts))


def _summary(files: list[dict]) -> dict:
    out = {}
    for split in ("train", "val", "test"):
        sel = [e for e in files if e["split"] == split]
        out[split] = {"files": len(sel), "minutes": round(sum(e["seconds"] for e in sel) / 60, 2),
                      "speakers": sorted({e["speaker"] for e in sel}),
                      "languages": sorted({e["language"] for e in sel})}
    return out


def _minutes_text(manifest: dict) -> str:
    return ", ".join(f"{k} {v['minutes']} min" for k, v in manifest["splits"].items())


VOICE_SETS = ("demo", "many")


def _add_voice_package(package: str, root: str, out_dir: str, files: list, seen: set,
                       say: Callable[[str], None]) -> int:
    """Converts one many-voices package (cq_codec.data.voices) into `out_dir`; returns skips."""
    skipped = 0
    sources = V.voice_sources(package, root)
    for i, (src, speaker, language, name) in enumerate(sources):
        try:
            if V.source_rate(src) < V.MIN_RATE:
                skipped += 1
                continue
            key = V.content_key(src)
            if key in seen:
                continue
            seen.add(key)
            x = V.trim_and_level(load_audio(src))
        except (AudioError, RuntimeError) as e:   # soundfile raises RuntimeError subclasses
            log.warning("skipping %s: %s", src, e)
            skipped += 1
            continue
        if x is None or len(x) < MIN_SECONDS * constants.SAMPLE_RATE:
            continue
        split = V.voice_split(package, speaker, language)
        rel = os.path.join(split, speaker, name)
        os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
        write_wav(os.path.join(out_dir, rel), x)
        files.append({"file": rel.replace(os.sep, "/"), "speaker": speaker, "language": language,
                      "split": split, "seconds": round(len(x) / constants.SAMPLE_RATE, 3),
                      "source": package})
        if (i + 1) % 500 == 0 or i + 1 == len(sources):
            say(f"[{package}] {i + 1}/{len(sources)} clips converted")
    return skipped


def _write_voice_licences(out_dir: str) -> None:
    for package, licence in V.VOICE_LICENCES.items():
        path = os.path.join(out_dir, "copyright", package)
        text = (f"{package} (Debian), speech clips converted to 16 kHz 16-bit mono wav,\n"
                f"silence-trimmed and level-checked (cq_codec/data/voices.py).\nLicence: {licence}\n")
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                text += f"\n===== Debian copyright file of {package} =====\n" + f.read()
        with open(os.path.join(out_dir, f"LICENSE-{package}-{licence.replace(' / ', '_')}.txt"), "w",
                  encoding="utf-8") as f:
            f.write(text)


def _reuse_package(reuse: str | None, package: str, out_dir: str, files: list) -> bool:
    """Copies (hard-links where possible) one demo package's clips from an earlier build of the
    demo corpus at `reuse` (same rules, same output); False when there is nothing to reuse."""
    if not reuse:
        return False
    try:
        with open(os.path.join(reuse, MANIFEST_NAME), encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return False
    entries = [e for e in old.get("files", []) if e.get("source") == package]
    if not entries or not all(os.path.isfile(os.path.join(reuse, e["file"])) for e in entries):
        return False
    for e in entries:
        dst = os.path.join(out_dir, e["file"])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(os.path.join(reuse, e["file"]), dst)
        except OSError:
            shutil.copyfile(os.path.join(reuse, e["file"]), dst)
        files.append(dict(e))
    src = os.path.join(reuse, "copyright", package)
    if os.path.isfile(src):
        os.makedirs(os.path.join(out_dir, "copyright"), exist_ok=True)
        shutil.copyfile(src, os.path.join(out_dir, "copyright", package))
    return True


def build_demo_corpus(out_dir: str = "data/demo", force: bool = False,
                      say: Callable[[str], None] | None = None, voices: str = "demo",
                      reuse: str | None = None) -> dict:
    """Builds the demo corpus into `out_dir` (skipped if its manifest.json already exists).

    `voices="many"` adds the many-speaker packages of `cq_codec.data.voices` (about 75-95 more
    voices, 30 languages; whole voices and languages held out for val / test). `reuse` names an
    earlier build of the demo corpus whose clips are copied instead of converted again.

    Returns the manifest dict: {'files': [{file, speaker, language, split, seconds,
    source}], 'splits': {split: {files, minutes, speakers, languages}}, ...}.
    Raises DemoCorpusError (with `NO_DEMO_HELP`) if apt-get, dpkg or ffmpeg is missing or a
    download fails.
    """
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if voices not in VOICE_SETS:
        raise ValueError(f"voices must be one of {VOICE_SETS}; got {voices!r}")
    out_dir = os.path.abspath(out_dir)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if os.path.isfile(manifest_path) and not force:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        say(f"demo corpus already present in {out_dir}: nothing to do "
            f"({_minutes_text(manifest)})")
        return manifest
    missing = [t for t in ("apt-get", "dpkg", "ffmpeg") if shutil.which(t) is None]
    if missing:
        raise DemoCorpusError(f"{', '.join(missing)} not found on this machine.\n{NO_DEMO_HELP}")
    if force and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    files, skipped = [], 0
    with tempfile.TemporaryDirectory(prefix="cq_demo_") as tmp:
        updated = [False]
        seen: set = set()
        for package in V.VOICE_PACKAGES if voices == "many" else ():
            say(f"[{package}] downloading")
            try:
                root = _fetch(package, tmp, say, updated)
            except DemoCorpusError as e:
                raise DemoCorpusError(f"{e}\n{NO_DEMO_HELP}") from e
            skipped += _add_voice_package(package, root, out_dir, files, seen, say)
            _save_copyright(out_dir, package, root)
            shutil.rmtree(root)
        for package, language in DEMO_PACKAGES.items():
            if _reuse_package(reuse, package, out_dir, files):
                say(f"[{package}] reused from {reuse}")
                continue
            say(f"[{package}] downloading")
            try:
                root = _fetch(package, tmp, say, updated)
            except DemoCorpusError as e:
                raise DemoCorpusError(f"{e}\n{NO_DEMO_HELP}") from e
            sources = _sources(package, root)
            for i, (src, speaker, name) in enumerate(sources):
                if language != "cs":
                    speaker = f"{language}-{speaker}"
                split = demo_split(language, speaker)
                try:
                    x = _decode_g722(src) if src.endswith(".g722") else load_audio(src)
                except AudioError as e:
                    log.warning("skipping %s: %s", e.path, e.reason)
                    skipped += 1
                    continue
                seconds = len(x) / constants.SAMPLE_RATE
                if seconds < MIN_SECONDS or np.max(np.abs(x), initial=0.0) < SILENCE_PEAK:
                    continue
                rel = os.path.join(split, speaker, name)
                os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
                write_wav(os.path.join(out_dir, rel), x)
                files.append({"file": rel.replace(os.sep, "/"), "speaker": speaker,
                              "language": language, "split": split,
                              "seconds": round(seconds, 3), "source": package})
                if (i + 1) % 200 == 0 or i + 1 == len(sources):
                    say(f"[{package}] {i + 1}/{len(sources)} clips converted")
            _save_copyright(out_dir, package, root)
            shutil.rmtree(root)
    files.sort(key=lambda e: e["file"])
    _write_licences(out_dir)
    if voices == "many":
        _write_voice_licences(out_dir)
    packages = list(DEMO_PACKAGES) + (list(V.VOICE_PACKAGES) if voices == "many" else [])
    manifest = {"name": "cq-codec demo corpus" + (" with many voices" if voices == "many" else ""),
                "version": 1, "voices": voices,
                "sample_rate": constants.SAMPLE_RATE, "min_seconds": MIN_SECONDS,
                "packages": packages, "skipped": skipped,
                **({"holdout": {k: {kk: list(vv) for kk, vv in v.items()} for k, v in V.HOLDOUT.items()}}
                   if voices == "many" else {}),
                "splits": _summary(files), "files": files}
    tmp_path = manifest_path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp_path, manifest_path)
    say(f"demo corpus written to {out_dir}: "
        f"{_minutes_text(manifest)}")
    return manifest
