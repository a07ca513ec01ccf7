"""An objective naturalness estimate of speech: DNSMOS (Microsoft's DNS Challenge MOS predictor,
ITU-T P.835 and P.808 heads), as the `speechmos` package ships it (ONNX models inside the wheel,
MIT). A 1-5 score per clip; the same scale for the cascade's and the end-to-end answers.

- dnsmos_ovrl: P.835 overall quality (speech and background together)
- dnsmos_p808: P.808 MOS

DNSMOS rates 9 s windows (a shorter clip is repeated to 9 s) and averages them; it was trained on
noisy and processed human speech, so read it as a relative figure between modes, not as a MOS
that listeners would give.
"""

from __future__ import annotations

import numpy as np

from omni_cli.audio import SAMPLE_RATE, resample


def dnsmos(audio: np.ndarray, sample_rate: int) -> dict[str, float]:
    """{"dnsmos_ovrl", "dnsmos_p808"} of mono speech at any sample rate."""
    from speechmos import dnsmos as model

    speech = np.clip(resample(np.asarray(audio, dtype=np.float32), sample_rate, SAMPLE_RATE), -1.0, 1.0)
    if not speech.size:
        raise ValueError("DNSMOS needs some audio")
    scores = model.run(speech, SAMPLE_RATE)
    return {"dnsmos_ovrl": round(float(scores["ovrl_mos"]), 4), "dnsmos_p808": round(float(scores["p808_mos"]), 4)}
