"""More voices for the demo corpus: the many-speaker Debian packages of shared/DATA.md.

`build_demo_corpus(..., voices="many")` adds these to the five demo packages: about 75-95
voices in about 30 languages (spoken letters and syllables, single words, acted one-liners),
all recorded at >= 16 kHz. Each package is fetched with ``apt-get download`` and unpacked with
``dpkg -x`` into a temporary folder; nothing is installed.

Splits hold out whole voices and whole languages (the demo's own rules are unchanged, so
today's test voices stay in test):
- val:  languages fr, nl, ga (klettres / ktuberling), hedgewars voices Mobster and Surfer,
        the megaglest faction egypt;
- test: languages it, de, el (klettres / ktuberling), hedgewars voices Pirate, Singer and
        Default_uk, the megaglest faction indian;
- train: everything else.
The rule per clip is `voice_split`; the manifest records each clip's package, speaker,
language and split, and `holdout` names the held-out voices and languages.

Isolated words are silence-trimmed (frames more than 40 dB below the clip's loudest 10 ms,
keeping 50 ms either side) and level-checked: a clip whose active level is below -50 dBFS is
dropped, one whose peak is above -1 dBFS is scaled down to it. Files below 16 kHz are dropped
(DATA.md: 22 ktuberling fr files), exact duplicates (megaglest ships some units twice) too.
"""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np
import soundfile as sf

import constants

__all__ = ["VOICE_PACKAGES", "VOICE_LICENCES", "HOLDOUT", "voice_sources", "voice_split",
           "trim_and_level"]

# package -> licence (written next to the audio with the package's Debian copyright file)
VOICE_LICENCES = {
    "klettres-data": "GPL-2+",
    "ktuberling-data": "GPL-2+",
    "hedgewars-data": "GFDL-1.3",
    "megaglest-data": "CC-BY-SA-3.0",
    "unknown-horizons": "GPL-2+ / CC-BY-SA-3.0",
    "supertux-data": "GPL",
    "warmux-data": "GPL-2+",
}
VOICE_PACKAGES = tuple(VOICE_LICENCES)

_KTUBERLING_LANGUAGES = ("ca", "da", "de", "el", "en", "fr", "ga", "gl", "lt", "nn", "ro", "ru",
                         "sl", "sr", "uk", "wa")
HOLDOUT = {
    "val": {"languages": ("fr", "nl", "ga"), "hedgewars": ("Mobster", "Surfer"),
            "megaglest": ("egypt",)},
    "test": {"languages": ("it", "de", "el"), "hedgewars": ("Pirate", "Singer", "Default_uk"),
             "megaglest": ("indian",)},
}
_HEDGEWARS_LANGUAGE = {"Default_es": "es", "Default_pl": "pl", "Default_ru": "ru", "Default_uk": "uk",
                       "Russian": "ru", "Russian_pl": "pl"}

MIN_RATE = 16000
TRIM_DB = 40.0
PAD_SECONDS = 0.05
MIN_ACTIVE_DBFS = -50.0
MAX_PEAK = 10 ** (-1.0 / 20)


def voice_split(package: str, speaker: str, language: str) -> str:
    """'train', 'val' or 'test' for one clip of a voice package (the rule in the docstring)."""
    for split in ("val", "test"):
        rule = HOLDOUT[split]
        if package in ("klettres-data", "ktuberling-data") and language in rule["languages"]:
            return split
        if package == "hedgewars-data" and speaker.split("-", 1)[1] in rule["hedgewars"]:
            return split
        if package == "megaglest-data" and speaker.split("-")[1] in rule["megaglest"]:
            return split
    return "train"


def voice_sources(package: str, root: str) -> list[tuple[str, str, str, str]]:
    """(source file, speaker, language, output name) of one unpacked voice package, sorted."""
    usr = os.path.join(root, "usr", "share")
    out = []
    if package == "klettres-data":
        for src in sorted(glob.glob(os.path.join(usr, "klettres", "*", "*", "*.ogg"))):
            lang_dir = src.split(os.sep)[-3]
            language = lang_dir.split("_")[0]
            out.append((src, f"klettres-{lang_dir}", language, f"{src.split(os.sep)[-2]}_{os.path.basename(src)}"))
    elif package == "ktuberling-data":
        for lang in _KTUBERLING_LANGUAGES:
            for src in sorted(glob.glob(os.path.join(usr, "ktuberling", "sounds", lang, "*"))):
                if src.rsplit(".", 1)[-1].lower() in ("ogg", "wav", "opus", "flac"):
                    out.append((src, f"ktuberling-{lang}", lang, os.path.basename(src)))
    elif package == "hedgewars-data":
        base = os.path.join(usr, "games", "hedgewars", "Data", "Sounds", "voices")
        for voice in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            if voice == "Robot":   # vocoded
                continue
            for src in sorted(glob.glob(os.path.join(base, voice, "*.ogg"))):
                out.append((src, f"hedgewars-{voice}", _HEDGEWARS_LANGUAGE.get(voice, "en"), os.path.basename(src)))
    elif package == "megaglest-data":
        pattern = os.path.join(usr, "games", "megaglest", "techs", "*", "factions", "*", "units", "*", "sounds", "*")
        for src in sorted(glob.glob(pattern)):
            name = os.path.basename(src).lower()
            if not name.endswith((".wav", ".ogg")) or "attack" in name or not ("select" in name or "ack" in name):
                continue
            parts = src.split(os.sep)
            faction, unit = parts[-5], parts[-3]
            out.append((src, f"megaglest-{faction}-{unit}", "en", f"{parts[-7]}_{unit}_{os.path.basename(src)}"))
    elif package == "unknown-horizons":
        base = os.path.join(usr, "unknown-horizons", "content", "audio", "voice")
        for src in sorted(glob.glob(os.path.join(base, "**", "*.ogg"), recursive=True)):
            rel = os.path.relpath(src, base).split(os.sep)
            out.append((src, f"unknown-horizons-{rel[0]}", rel[0], "_".join(rel)))
    elif package == "supertux-data":
        for src in sorted(glob.glob(os.path.join(usr, "games", "supertux2", "speech", "*.ogg"))):
            out.append((src, "supertux", "en", os.path.basename(src)))
    elif package == "warmux-data":
        base = os.path.join(usr, "games", "warmux", "sound", "default", "voices")
        for src in sorted(glob.glob(os.path.join(base, "**", "*.ogg"), recursive=True)):
            out.append((src, "warmux", "en", "_".join(os.path.relpath(src, base).split(os.sep))))
    else:
        raise ValueError(f"not a voice package: {package!r}")
    return [(s, spk, lang, name.rsplit(".", 1)[0] + ".wav") for s, spk, lang, name in out]


def source_rate(path: str) -> int:
    return int(sf.info(path).samplerate)


def trim_and_level(x: np.ndarray, sample_rate: int = constants.SAMPLE_RATE) -> np.ndarray | None:
    """Silence-trims and level-checks one isolated-word clip; None if it is (nearly) silent."""
    x = np.asarray(x, np.float32)
    hop = sample_rate // 100
    n = len(x) // hop
    if n == 0:
        return None
    energy = np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1)
    loud = energy.max()
    if loud <= 0:
        return None
    active = np.flatnonzero(energy > loud * 10 ** (-TRIM_DB / 10))
    pad = int(PAD_SECONDS * sample_rate)
    x = x[max(0, active[0] * hop - pad): min(len(x), (active[-1] + 1) * hop + pad)]
    if 10 * np.log10(np.mean(energy[active]) + 1e-20) < MIN_ACTIVE_DBFS:
        return None
    peak = float(np.max(np.abs(x)))
    return x * (MAX_PEAK / peak) if peak > MAX_PEAK else x


def content_key(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
