"""The end-to-end speech LLM (the LLaMA-Omni design): Whisper encoder -> speech adaptor ->
LLM -> non-autoregressive CTC speech decoder -> discrete units -> unit vocoder.

One file per component; sizes live in config dataclasses saved with the checkpoint.
"""
