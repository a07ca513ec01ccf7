"""omni: spoken conversation with large language models.

Two pipelines answer a spoken request with text and speech and report how fast and
how well they did: the cascade baseline (Whisper -> LLM -> TTS, in `baselines/`) and
the end-to-end LLaMA-Omni design. This package holds the shared parts (audio I/O,
model registry, ASR, LLM, TTS, events, metrics) and the `omni` command line.
"""

__version__ = "0.1.0"
