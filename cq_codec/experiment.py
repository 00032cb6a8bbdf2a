"""The experiment driver: one run of `main.py` end to end, and the steps the study scripts share.

    run(cfg)               main.py --training_mode N: train (cq_codec.training.modes.train) or
                           restore (mode 0), then evaluate on the test split
    load_codec(path)       a trained results folder / .keras file -> cq_codec.api.Codec (entropy
                           tables fitted on training utterances when the file has none)
    evaluate(cfg, model)   real .nac bytes at every operating point: audio/, eval.csv, eval.md

Training, table fitting and data loading are `cq_codec.training.modes` (one policy each), the
reports `cq_codec.evaluation.studies`. This module sits above both and above the API.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile

import keras
import numpy as np

import constants as C
from cq_codec import api
from cq_codec.bitstream.container import read_nac
from cq_codec.config import Config, ConfigError
from cq_codec.data.audio import load_audio, write_wav
from cq_codec.data.noise import mix_at_snr
from cq_codec.evaluation.metrics import score
from cq_codec.evaluation.studies import eval_summary_markdown
from cq_codec.models.waveform import WaveformCodec
from cq_codec.training import modes, trainer
from cq_codec.training import waveform as waveform_training
from cq_codec.waveform_api import WaveformCodecAPI
from cq_codec.training.atomic import ExperimentLock, atomic_write, write_text

__all__ = ["run", "evaluate", "evaluate_waveform", "load_codec"]

log = logging.getLogger("cq_codec.experiment")


def load_codec(model_dir_or_path: str, train_utterances=None, seed: int = 0) -> api.Codec:
    """A `cq_codec.api.Codec` from results/<name>/ or a .keras path; fits entropy tables on
    `train_utterances` (`modes.fit_tables`) when the saved model has none. Named after the
    results folder."""
    path = model_dir_or_path
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no trained model at {path}")
    model = api.load_model(path)
    if isinstance(model, WaveformCodec):    # the waveform codec: n codebooks = its operating points
        return api.load(path)
    if not getattr(model, "entropy_tables", None):
        if not train_utterances:
            raise ValueError(f"{path} has no entropy tables and no training utterances were given to fit them")
        modes.fit_tables(model, train_utterances, seed)
    return api.Codec(model, name=os.path.basename(os.path.dirname(os.path.abspath(path))))


def _eval_clips(cfg: Config, utterances, audio_dir: str):
    """The first cfg.eval_clips test utterances: (index, utterance, wav, seconds, file stem), each
    clean clip written to audio_dir as <stem>_clean.wav."""
    os.makedirs(audio_dir, exist_ok=True)
    for k, utt in enumerate(utterances[: cfg.eval_clips]):
        wav = load_audio(utt.path)
        base = f"{k:02d}_{os.path.splitext(os.path.basename(utt.path))[0]}"
        write_wav(os.path.join(audio_dir, f"{base}_clean.wav"), wav)
        yield k, utt, wav, len(wav) / C.SAMPLE_RATE, base


def evaluate(cfg: Config, model, utterances, out_dir: str, source=None, modules: int | None = None) -> list[dict]:
    """Compresses to real .nac bytes and decodes up to `cfg.eval_clips` test utterances at every
    operating point (modules 1..N); writes audio/, eval.csv and eval.md. `kbps` is measured from
    the coded chunks (payload with each chunk's length and CRC, as Opus packets are counted
    without a container), `file_kbps` from the whole file (its 34-42 byte header included),
    `entropy_kbps` is the zeroth-order entropy of the same codes. `modules`: score operating points
    1..modules only (default: every module of the model)."""
    codec = api.Codec(model, name=cfg.name)
    audio_dir = os.path.join(out_dir, "audio")
    rows = []
    for k, utt, wav, seconds, base in _eval_clips(cfg, utterances, audio_dir):
        inputs = [(None, wav, "decoded")]
        if cfg.eval_snr:  # denoising: noisy input, clean reference; modules=0 scores the noisy input
            inputs = []
            for snr in cfg.eval_snr:
                noisy, _ = mix_at_snr(wav, source.sample(len(wav), np.random.default_rng([cfg.seed, k]), exclude=utt.speaker), snr)
                write_wav(os.path.join(audio_dir, f"{base}_noisy_{snr:g}dB.wav"), noisy)
                rows.append({"clip": base, "snr_db": snr, "modules": 0, "seconds": seconds, "kbps": float("nan"),
                             "file_kbps": float("nan"), "entropy_kbps": float("nan"), **score(wav, noisy, name=base)})
                inputs.append((snr, noisy, f"denoised_{snr:g}dB"))
        for snr, x, tag in inputs:
            for n in range(1, (modules or len(model.codec_modules)) + 1):
                data = codec.compress(x, C.SAMPLE_RATE, num_modules=n)
                decoded, _ = codec.decompress(data)
                codes = codec.encode(x, C.SAMPLE_RATE, num_modules=n)
                write_wav(os.path.join(audio_dir, f"{base}_{tag}_{n}modules.wav"), decoded)
                payload = sum(len(c) + 8 for c in read_nac(data)[2])  # chunks with their length + CRC32
                row = {"clip": base, **({"snr_db": snr} if cfg.eval_snr else {}), "modules": n, "seconds": seconds,
                       "kbps": payload * 8 / seconds / C.BITS_PER_KBIT,
                       "file_kbps": len(data) * 8 / seconds / C.BITS_PER_KBIT,
                       "entropy_kbps": codes.entropy_bits() / seconds / C.BITS_PER_KBIT}
                row.update(score(wav, decoded, name=base))  # always against the clean clip
                rows.append(row)
                log.info("eval %s with %d modules: %s", base, n, {k: round(float(v), 3) for k, v in row.items() if k != "clip"})
    _write_eval(rows, out_dir)
    return rows


def evaluate_waveform(cfg: Config, model, utterances, out_dir: str, name: str | None = None) -> list[dict]:
    """The waveform codec's `evaluate`: compresses up to cfg.eval_clips test utterances to real .nac
    bytes at every codebook count 1..N, decodes and scores them; audio/, eval.csv, eval.md."""
    codec = WaveformCodecAPI(model, name=name or cfg.name)
    audio_dir = os.path.join(out_dir, "audio")
    rows = []
    for _, _, wav, seconds, base in _eval_clips(cfg, utterances, audio_dir):
        for n in range(1, model.num_codebooks + 1):
            data = codec.compress(wav, C.SAMPLE_RATE, num_codebooks=n)
            decoded, _ = codec.decompress(data)
            write_wav(os.path.join(audio_dir, f"{base}_decoded_{n}codebooks.wav"), decoded)
            row = {"clip": base, "codebooks": n, "seconds": seconds,
                   "nominal_kbps": model.nominal_kbps(n),
                   "file_kbps": len(data) * 8 / seconds / C.BITS_PER_KBIT}
            row.update(score(wav, decoded, name=base))
            rows.append(row)
            log.info("eval %s with %d codebooks: %s", base, n,
                     {a: round(float(b), 3) for a, b in row.items() if a != "clip"})
    _write_eval(rows, out_dir)
    return rows


def _write_eval(rows: list[dict], out_dir: str) -> None:
    """eval.csv (every row) and eval.md (the means per operating point), written atomically."""
    if not rows:
        return
    with atomic_write(os.path.join(out_dir, "eval.csv")) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    write_text(os.path.join(out_dir, "eval.md"), eval_summary_markdown(rows))


def _run_waveform(cfg: Config) -> dict:
    """`main.py --model_type waveform`: mode 1 trains (resumable) then scores; mode 0 scores."""
    if cfg.training_mode not in (0, 1):
        raise ValueError(f"--model_type waveform: mode {cfg.training_mode} is not defined (1 trains, 0 evaluates)")
    exp = cfg.experiment_dir
    model_path = os.path.join(exp, "model.keras")
    if cfg.training_mode == 0:
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"mode 0 evaluates a trained model: no {model_path} (train with mode 1 first)")
        parts = modes.load_splits(cfg)
        model = keras.saving.load_model(model_path, compile=False)
    else:
        trained = waveform_training.train_codec(cfg)
        model, parts = trained["model"], trained["parts"]
    rows = evaluate_waveform(cfg, model, parts["test"], exp)
    return {"experiment": exp, "eval_rows": len(rows)}


def _run(cfg: Config, strategy, chief: bool, exp: str, out: str) -> dict:
    if cfg.training_mode == 0:
        keras.utils.set_random_seed(cfg.seed)
        os.makedirs(out, exist_ok=True)
        trainer.clean_partial_files(out)
        cfg.save(os.path.join(out, "config.json"))
        parts, cache = modes.load_data(cfg)
        with strategy.scope():
            model = trainer.build_model(cfg, signal_std=cache.std, sample=modes.first_batch(cache))
        model, modules = _restore_for_evaluation(cfg, model, parts)
    else:
        trained = modes.train(cfg, strategy=strategy, out=out, chief=chief)
        if not chief:
            return {"experiment": out, "eval_rows": 0, "chief": False}
        model, parts = trained["model"], trained["parts"]
        modules = modes.trained_modules(cfg, trained["state"])
    if modules < len(model.codec_modules):
        log.info("modules %s are not trained yet: scoring operating points 1..%d only",
                 list(range(modules + 1, len(model.codec_modules) + 1)), modules)
    rows = evaluate(cfg, model, parts["test"], exp,
                    source=modes.noise_source(cfg, parts["train"]) if cfg.eval_snr else None, modules=modules)
    return {"experiment": exp, "eval_rows": len(rows), "chief": True}


def _restore_for_evaluation(cfg: Config, model, parts):
    """Mode 0: the checkpoint --from_where_step names (2 the latest, 1 the end of the greedy
    followers, 0 the end of the first module) of this experiment, else of --base_model_id."""
    exp = cfg.experiment_dir
    src = exp if trainer.latest_weights(exp) else (
        os.path.join(cfg.results_dir, cfg.base_model_id) if cfg.base_model_id else None)
    if not src or not trainer.latest_weights(src):
        raise ConfigError(f"mode 0 evaluates a trained model: no checkpoint in {exp}/checkpoints "
                          f"(train first, or name one with --base_model_id)")
    state, weights, _ = trainer.load_state(src)
    modules = modes.trained_modules(cfg, state)
    if cfg.from_where_step < 2:
        stage = "m1" if cfg.from_where_step == 0 else f"m{cfg.num_modules}"
        weights = trainer.stage_weights(src, stage)
        if not weights:
            raise ConfigError(f"--from_where_step {cfg.from_where_step}: {src} keeps no checkpoint of the end of "
                              f"stage {stage} (stage ends are kept from this version on)")
        modules = 1 if cfg.from_where_step == 0 else cfg.num_modules
    model.load_weights(weights)
    log.info("mode 0: evaluating %s", weights)
    saved = os.path.join(src, "model.keras")
    if cfg.from_where_step == 2 and os.path.exists(saved):  # the entropy tables live in the saved model
        model = api.load_model(saved)
    else:
        modes.fit_tables(model, parts["train"], cfg.seed)
    return model, modules


def run(cfg: Config) -> dict:
    """Runs one training mode (or evaluation) end to end; returns a summary dict.

    One run at a time holds an experiment folder (a second one stops with a message). In a
    multi-worker job only the chief writes it; the other workers train the same steps (reading
    the chief's checkpoint when resuming) into a scratch folder that is removed at the end."""
    if cfg.model_type == "waveform":   # the end-to-end waveform codec has its own driver
        return _run_waveform(cfg)
    if cfg.base_model_id and cfg.training_mode in (1, 3, 4):
        log.info("--base_model_id %s is not used by mode %d: it trains from the start (as in the original)",
                 cfg.base_model_id, cfg.training_mode)
    if cfg.from_where_step != 2 and cfg.training_mode != 0:
        log.info("--from_where_step %d is not used by mode %d: it picks the checkpoint mode 0 evaluates",
                 cfg.from_where_step, cfg.training_mode)
    strategy = modes.make_strategy(cfg)
    chief = modes.is_chief(strategy)
    exp = cfg.experiment_dir
    out = exp if chief else tempfile.mkdtemp(prefix="cq-codec-worker-")
    if not chief:
        log.info("multi-worker: this worker is not the chief; it writes to %s (removed at the end)", out)
    try:
        with ExperimentLock(out):
            return _run(cfg, strategy, chief, exp, out)
    finally:
        if not chief:
            shutil.rmtree(out, ignore_errors=True)
