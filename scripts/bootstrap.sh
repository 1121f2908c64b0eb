#!/usr/bin/env bash
# Set up everything harness needs on a fresh machine, idempotently:
#   - a virtual environment in .venv with torch/torchvision and the package (editable),
#   - Fashion-MNIST from Debian's package dataset-fashion-mnist where apt is available,
#   - for --test, a headless browser for the leaderboard's test: Debian's chromium and chromium-driver.
# Usage: bash scripts/bootstrap.sh          # for running harness
#        bash scripts/bootstrap.sh --test   # also the test dependencies (and the browser)
#        bash scripts/bootstrap.sh --peers  # also the peer libraries benchmarks/run.py compares with
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
want_data=1
want_peers=0
want_browser=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]"; want_data=0; want_browser=1 ;;
    --peers) extras="[test,peers]"; want_peers=1; want_browser=1 ;;
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
if [ "$want_peers" = 1 ]; then
  # torchattacks pins requests~=2.25.1 in its metadata (it never imports requests); installing it
  # with its dependencies would downgrade requests and idna. Its real needs come with [peers].
  .venv/bin/python -m pip install -q --no-deps "torchattacks>=3.5"
fi

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

# The leaderboard's test drives a real headless browser (Selenium, from the test extra) and does
# not skip without one. Debian's packages; Selenium's own driver download is never used.
if [ "$want_browser" = 1 ] && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
      || echo "bootstrap.sh: could not install chromium and chromium-driver; the leaderboard's browser test will fail" >&2
  else
    echo "bootstrap.sh: no apt-get here; install chromium and its chromedriver for the leaderboard's browser test" >&2
  fi
fi
