"""Speech corpora, splits, the frame cache and the tf.data pipeline (docs/DESIGN.md).

`pipeline` (TensorFlow) is imported lazily so numpy-only users do not load TensorFlow.
"""

from cq_codec.data.audio import AUDIO_EXTENSIONS, AudioError, load_audio, resample, to_mono
from cq_codec.data.cache import FrameCache, build_cache, load_cache
from cq_codec.data.corpora import CORPORA, AudioReader, Utterance, detect_corpus, discover
from cq_codec.data.preprocess import (EXAMPLE_SIZE, analyze_utterance, frame_examples,
                                      preprocess_audio)
from cq_codec.data.splits import (SPLITS, TIMIT_CORE_TEST_SPEAKERS, split_speakers,
                                  split_utterances)

_PIPELINE_NAMES = ("make_dataset", "iterate_batches", "prepare_cache", "select_frames")

__all__ = [
    "AUDIO_EXTENSIONS", "AudioError", "load_audio", "resample", "to_mono",
    "FrameCache", "build_cache", "load_cache",
    "CORPORA", "AudioReader", "Utterance", "detect_corpus", "discover",
    "EXAMPLE_SIZE", "analyze_utterance", "frame_examples", "preprocess_audio",
    "SPLITS", "TIMIT_CORE_TEST_SPEAKERS", "split_speakers", "split_utterances",
    *_PIPELINE_NAMES,
]


def __getattr__(name):
    """Loads the TensorFlow pipeline on first use (PEP 562)."""
    if name in _PIPELINE_NAMES:
        from cq_codec.data import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'cq_codec.data' has no attribute {name!r}")
