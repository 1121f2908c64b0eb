#!/usr/bin/env bash
# Set up everything harness needs on a fresh machine, idempotently:
#   - a virtual environment in .venv with torch/torchvision and the package (editable),
#   - Fashion-MNIST from Debian's package dataset-fashion-mnist where apt is available.
# Usage: bash scripts/bootstrap.sh          # for running harness
#        bash scripts/bootstrap.sh --test   # also the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
want_data=1
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]"; want_data=0 ;;
    --peers) extras="[test,peers]" ;;
    *) echo "bootstrap.sh: unknown option $arg (use --test or --peers)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, at the versions this project is developed with; a newer torch is never pinned
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/python -m pip install -q -e ".${extras}"

# The default data set. Tests never need it (they use generated and bundled data).
if [ "$want_data" = 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "bootstrap.sh: could not install dataset-fashion-mnist; harness will try to download Fashion-MNIST instead" >&2
  else
    echo "bootstrap.sh: no apt-get here; harness will download Fashion-MNIST on first use (or pass --data-dir)" >&2
  fi
fi
