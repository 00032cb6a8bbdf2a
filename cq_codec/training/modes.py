"""`main.py --training_mode N`: data, model, the greedy schedule, evaluation and the results folder.

results/<name>/: config.json (the resolved config), checkpoints/, metrics.csv (one row per
epoch), tensorboard/, plots/training.png, model.keras (the trained codec), audio/ (clean and
decoded test clips) and eval.csv + eval.md (per-clip and mean scores).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

import constants as C
from cq_codec.config import Config, ConfigError
from cq_codec.training import trainer
from cq_codec.training.atomic import ExperimentLock, atomic_write, write_text
from cq_codec.training.callbacks import fault_point

__all__ = ["run", "load_data", "make_strategy", "evaluate", "is_chief", "trained_modules"]

log = logging.getLogger("cq_codec.modes")


def make_strategy(cfg: Config):
    """The tf.distribute strategy: default (one device), mirrored over the logical CPUs, or
    multi-worker from TF_CONFIG."""
    if cfg.distribute == "mirrored":
        cpus = tf.config.list_physical_devices("CPU")
        try:  # must run before anything lists logical devices (that initialises them)
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
        except RuntimeError as exc:
            if len(tf.config.list_logical_devices("CPU")) < 2:
                raise RuntimeError("--distribute mirrored: TensorFlow was initialised before the two logical "
                                   "CPU devices could be made; start a fresh process") from exc
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")[:2]])
    if cfg.distribute == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--distribute multiworker needs the TF_CONFIG environment variable "
                              "(cluster spec and this host's task) set on every worker; see README 'Multi-worker training'")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """True except on the non-chief workers of a multi-worker job (the chief is the 'chief' task,
    or worker 0 when the cluster has none): only the chief writes the experiment folder."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


def load_data(cfg: Config):
    """Corpus -> splits -> frame cache. Builds the demo corpus when asked for and missing."""
    from cq_codec.data import corpora, pipeline, splits
    if cfg.corpus == "demo" and not os.path.exists(os.path.join(cfg.data_dir, "manifest.json")):
        from cq_codec.data.demo import DemoCorpusError, build_demo_corpus
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
    if cfg.max_train_minutes > 0:
        parts["train"] = _cap_minutes(parts["train"], cfg.max_train_minutes, cfg.seed)
    cache_dir = os.path.join(cfg.cache_dir, _cache_name(cfg))
    cache = pipeline.prepare_cache(parts, cache_dir, speeds=cfg.speed_perturb)
    return parts, cache


def _cache_name(cfg: Config) -> str:
    tag = os.path.basename(os.path.normpath(cfg.data_dir)) or "data"
    return (f"{tag}-{cfg.corpus}" + (f"-{cfg.max_train_minutes:g}min-s{cfg.seed}" if cfg.max_train_minutes > 0 else "")
            + ("-speed" + "_".join(f"{f:g}" for f in cfg.speed_perturb) if cfg.speed_perturb else ""))


def _cap_minutes(utts, minutes: float, seed: int):
    import soundfile as sf
    order = np.random.default_rng(seed).permutation(len(utts))
    kept, total = [], 0.0
    for i in order:
        try:
            total += sf.info(utts[i].path).duration
        except RuntimeError:
            continue
        kept.append(utts[i])
        if total >= minutes * 60:
            break
    return sorted(kept)


def noise_source(cfg: Config, train_utts):
    """`--noise_dir`, else coloured noise + babble of up to 40 seeded training utterances."""
    from cq_codec.data import noise
    from cq_codec.data.audio import load_audio
    if cfg.noise_dir:
        return noise.default_noise(noise_dir=cfg.noise_dir)
    pick = np.random.default_rng([cfg.seed, 7]).permutation(len(train_utts))[:40]
    return noise.default_noise([load_audio(train_utts[i].path) for i in pick], [train_utts[i].speaker for i in pick])


def _datasets(cfg: Config, cache, train_utts=()):
    from cq_codec.data.pipeline import make_dataset
    noisy = {}
    if cfg.train_snr:
        from cq_codec.data.noise import FrameNoiser
        noisy = {"noisy_examples": FrameNoiser(cache.std, tuple(cfg.train_snr), source=noise_source(cfg, train_utts))}
    train = make_dataset(cache, "train", cfg.batch_size, shuffle=True, seed=cfg.seed, repeat=True, drop_remainder=True, **noisy)
    val = make_dataset(cache, "val", cfg.batch_size, shuffle=True, seed=cfg.seed + 1, repeat=True, drop_remainder=True, **noisy)
    steps = cfg.steps_per_epoch or max(1, cache.num_frames("train") // cfg.batch_size)
    return train, val, steps


def _first_batch(cache, n: int = 512) -> dict:
    from cq_codec.data.pipeline import iterate_batches
    return next(iterate_batches(cache, "train", n, shuffle=True, seed=0))


def fit_tables(cfg: Config, model, utterances, minutes: float = 10.0) -> dict:
    """Fits the bitstream's entropy tables on up to `minutes` of training utterances."""
    from cq_codec.inference import fit_entropy_tables
    from cq_codec.data.audio import load_audio
    order = np.random.default_rng(cfg.seed).permutation(len(utterances))
    wavs, total = [], 0.0
    for i in order:
        wav = load_audio(utterances[i].path)
        if wav.size:
            wavs.append(wav)
            total += wav.size / C.SAMPLE_RATE
        if total >= minutes * 60:
            break
    tables = fit_entropy_tables(model, wavs)
    log.info("entropy tables fitted on %.1f min of training audio: bits/frame %s", total / 60,
             [round(b, 1) for b in tables["bits_per_frame"]])
    return tables


def trained_modules(cfg: Config, state: dict) -> int:
    """How many leading modules of the cascade have been trained, from a checkpoint's state: a
    mode-1 run of a 2-module config leaves module 2 at its initial weights."""
    done = state.get("done", {})
    if done.get("finetune"):
        return cfg.num_modules
    trained = [k for k in range(2, cfg.num_modules + 1) if done.get(f"m{k}")]
    if trained:
        return max(trained)
    return 1 if done.get("m1") else cfg.num_modules   # nothing recorded (a legacy folder): all


def evaluate(cfg: Config, model, utterances, out_dir: str, source=None, modules: int | None = None) -> list[dict]:
    """Compresses to real .nac bytes and decodes up to `cfg.eval_clips` test utterances at every
    operating point (modules 1..N); writes audio/, eval.csv and eval.md. `kbps` is measured from
    the coded chunks (payload with each chunk's length and CRC, as Opus packets are counted
    without a container), `file_kbps` from the whole file (its 34-42 byte header included),
    `entropy_kbps` is the zeroth-order entropy of the same codes. `modules`: score operating points
    1..modules only (default: every module of the model)."""
    import csv
    from cq_codec.api import Codec
    from cq_codec.bitstream.container import read_nac
    from cq_codec.data.audio import load_audio, write_wav
    from cq_codec.evaluation.metrics import score
    codec = Codec(model, name=cfg.name)
    audio_dir = os.path.join(out_dir, "audio")
    os.makedirs(audio_dir, exist_ok=True)
    rows = []
    for k, utt in enumerate(utterances[: cfg.eval_clips]):
        wav = load_audio(utt.path)
        seconds = len(wav) / C.SAMPLE_RATE
        base = f"{k:02d}_{os.path.splitext(os.path.basename(utt.path))[0]}"
        write_wav(os.path.join(audio_dir, f"{base}_clean.wav"), wav)
        inputs = [(None, wav, "decoded")]
        if cfg.eval_snr:  # denoising: noisy input, clean reference; modules=0 scores the noisy input
            from cq_codec.data.noise import mix_at_snr
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
    if rows:
        with atomic_write(os.path.join(out_dir, "eval.csv")) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        _write_summary(rows, os.path.join(out_dir, "eval.md"))
    return rows


def _write_summary(rows: list[dict], path: str) -> None:
    """Mean of every metric per operating point (and per input SNR for noisy evaluation)."""
    group = [k for k in ("snr_db", "modules") if k in rows[0]]
    keys = [k for k in rows[0] if k not in ("clip", "seconds", *group)]
    lines = ["| " + " | ".join(group + keys) + " |", "|---" * (len(group) + len(keys)) + "|"]
    for g in sorted({tuple(r[k] for k in group) for r in rows}):
        sel = [r for r in rows if tuple(r[k] for k in group) == g]
        means = [np.nanmean([float(r[k]) for r in sel]) for k in keys]
        lines.append("| " + " | ".join(f"{v:g}" for v in g) + " | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    write_text(path, "\n".join(lines) + "\n")


def plot_history(csv_path: str, out_path: str) -> None:
    """Training curves from metrics.csv: loss, time/mel terms and estimated kbps per epoch."""
    import csv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    x = np.arange(1, len(rows) + 1)
    get = lambda k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in ("loss", "val_loss"):
        axes[0].plot(x, get(key), label=key)
    for key in ("time", "val_time", "mel", "val_mel"):
        axes[1].plot(x, get(key), label=key)
    for key in ("kbps", "val_kbps"):
        axes[2].plot(x, get(key), label=key)
    for ax, title, unit in zip(axes, ("total loss", "reconstruction terms", "estimated bitrate"), ("loss", "RMSE", "kbps")):
        ax.set_title(title)
        ax.set_xlabel("epoch (all stages in order)")
        ax.set_ylabel(unit)
        ax.legend()
    stages = [r["stage"] for r in rows]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            for ax in axes:
                ax.axvline(i + 0.5, color="grey", ls=":")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def run(cfg: Config) -> dict:
    """Runs one training mode (or evaluation) end to end; returns a summary dict.

    One run at a time holds an experiment folder (a second one stops with a message). In a
    multi-worker job only the chief writes it; the other workers train the same steps (reading
    the chief's checkpoint when resuming) into a scratch folder that is removed at the end."""
    if cfg.model_type == "waveform":   # the end-to-end waveform codec has its own driver
        from cq_codec.training.waveform import run as run_waveform
        return run_waveform(cfg)
    if cfg.base_model_id and cfg.training_mode in (1, 3, 4):
        log.info("--base_model_id %s is not used by mode %d: it trains from the start (as in the original)",
                 cfg.base_model_id, cfg.training_mode)
    if cfg.from_where_step != 2 and cfg.training_mode != 0:
        log.info("--from_where_step %d is not used by mode %d: it picks the checkpoint mode 0 evaluates",
                 cfg.from_where_step, cfg.training_mode)
    strategy = make_strategy(cfg)
    chief = is_chief(strategy)
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


def weights_fingerprint(model) -> dict:
    """sha256 of every weight's bytes and each weight's L2 norm: multi-worker replicas compare."""
    import hashlib
    h = hashlib.sha256()
    norms = []
    for w in model.weights:
        v = np.ascontiguousarray(keras.ops.convert_to_numpy(w.value))
        h.update(v.tobytes())
        norms.append(float(np.sqrt(np.sum(v.astype(np.float64) ** 2))))
    return {"sha256": h.hexdigest(), "norms": norms}


def _run(cfg: Config, strategy, chief: bool, exp: str, out: str) -> dict:
    import json
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    trainer.clean_partial_files(out)
    cfg.save(os.path.join(out, "config.json"))
    parts, cache = load_data(cfg)
    model_path = os.path.join(exp, "model.keras")
    with strategy.scope():
        model = trainer.build_model(cfg, signal_std=cache.std, sample=_first_batch(cache))
    if cfg.training_mode == 0:
        model, modules = _restore_for_evaluation(cfg, model, parts)
    else:
        train_ds, val_ds, steps = _datasets(cfg, cache, parts["train"])
        base = os.path.join(cfg.results_dir, cfg.base_model_id) if cfg.training_mode in (2, 5) else None
        with strategy.scope():
            state = trainer.train(cfg, model, train_ds, val_ds, steps, base_dir=base, out_dir=out)
        fp = weights_fingerprint(model)
        optimizer = getattr(model, "optimizer", None)   # none when every stage had finished already
        log.info("weights after %d optimizer steps: sha256 %s norms %s",
                 int(optimizer.iterations.numpy()) if optimizer is not None else 0,
                 fp["sha256"], json.dumps([round(n, 6) for n in fp["norms"]]))
        if not chief:
            return {"experiment": out, "eval_rows": 0, "chief": False}
        fit_tables(cfg, model, parts["train"])
        model.optimizer = None  # the codec file holds no optimizer slots (checkpoints/ keep them)
        with atomic_write(model_path, suffix=".keras") as tmp:
            model.save(tmp)
            fault_point("model_write")
        plot_history(os.path.join(exp, "metrics.csv"), os.path.join(exp, "plots", "training.png"))
        modules = trained_modules(cfg, state)
    if modules < len(model.codec_modules):
        log.info("modules %s are not trained yet: scoring operating points 1..%d only",
                 list(range(modules + 1, len(model.codec_modules) + 1)), modules)
    rows = evaluate(cfg, model, parts["test"], exp, source=noise_source(cfg, parts["train"]) if cfg.eval_snr else None,
                    modules=modules)
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
    modules = trained_modules(cfg, state)
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
        model = keras.models.load_model(saved)
    else:
        fit_tables(cfg, model, parts["train"])
    return model, modules
