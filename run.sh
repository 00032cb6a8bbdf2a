#!/usr/bin/env bash
# cq-codec: the two entry points of the README, idempotent and safe to re-run.
#   bash run.sh demo   install everything, build the demo corpus, train + evaluate a small model
#   bash run.sh test   install everything, run the test suite
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(ffmpeg libopus0 libvo-amrwbenc-dev speex espeak-ng python3-venv python3-dev gcc)
PY=${PYTHON:-python3}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

log() { printf '[run.sh] %s\n' "$*" >&2; }

install_debian_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { log "Debian packages present"; return; }
  if ! command -v apt-get >/dev/null; then
    log "WARNING: no apt-get; install these yourself: ${missing[*]} (baselines and fixtures need them)"
    return
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python() {
  [ -x .venv/bin/python ] || { log "creating .venv"; "$PY" -m venv .venv; }
  local stamp=.venv/.cq-requirements
  local want
  want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing pinned Python requirements (first run: a few minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    .venv/bin/python -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
  else
    log "Python requirements up to date"
  fi
}

cmd=${1:-}
case "$cmd" in
  demo)
    install_debian_packages
    install_python
    shift
    .venv/bin/python scripts/demo.py "$@"
    ;;
  test)
    install_debian_packages
    install_python
    shift
    .venv/bin/python -m pytest -q -n 2 "$@"
    ;;
  *)
    echo "usage: bash run.sh demo|test [extra args]" >&2
    exit 2
    ;;
esac
