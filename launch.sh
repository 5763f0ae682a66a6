#!/usr/bin/env bash
# Easel launcher.
#   ./launch.sh [flags]   install into .venv (first run only) and start the web UI
#   ./launch.sh test [pytest args]   also install the test tools (and Ray) and run the whole suite
#   ./launch.sh --workers ray [--ray-workers N | --ray-address ADDR]   also install Ray (requirements-ray.txt)
#                         and generate on Ray workers, one per GPU, behind this one page (README, "Many GPUs")
#   ./launch.sh --help    every flag
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${EASEL_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

die() { echo "launch.sh: $*" >&2; exit 1; }

"$PYTHON" - <<'PY' || die "Python >= 3.10 is required (set PYTHON=/path/to/python3.x)"
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

if [ ! -x "$VENV/bin/python" ]; then
  echo "launch.sh: creating $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"

# Install a requirements file once; a stamp holding its hash makes the next run a no-op.
install_reqs() {
  local req="$1" stamp="$VENV/.easel-$(basename "$1").sha256"
  local want; want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  echo "launch.sh: installing $req"
  # torch first, alone, so no other package can resolve a different build of it.
  local torch_pin; torch_pin=$(grep -E '^torch==' requirements.txt | head -n1)
  "$PY" -m pip install -q --disable-pip-version-check "$torch_pin"
  "$PY" -m pip install -q --disable-pip-version-check "$torch_pin" -r "$req"
  # torchvision (for spandrel's upscalers) only where a build for this torch exists: a CUDA-only wheel
  # beside a CPU torch fails at import, and would break whatever else imports it
  if ! "$PY" -c "import torchvision" >/dev/null 2>&1 && "$PY" -m pip show -q torchvision >/dev/null 2>&1; then
    echo "launch.sh: this torchvision cannot be imported with this torch build; removing it (model upscalers" \
         "will say why they are unavailable, the built-in ones work)"
    "$PY" -m pip uninstall -y -q torchvision
  fi
  echo "$want" > "$stamp"
}

install_reqs requirements.txt

if [ "${1:-}" = "test" ]; then
  shift
  install_reqs requirements-test.txt
  install_reqs requirements-ray.txt
  if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "launch.sh: installing Debian chromium for the browser tests"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "launch.sh: could not install chromium; browser tests will be skipped" >&2
    else
      echo "launch.sh: chromium not found and apt-get unavailable; browser tests will be skipped" >&2
    fi
  fi
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
  exec "$PY" -m pytest tests "$@"
fi

prev=""
for arg in "$@"; do  # Ray is optional: installed when it is asked for
  if [ "$arg" = "--workers=ray" ] || { [ "$prev" = "--workers" ] && [ "$arg" = "ray" ]; }; then
    install_reqs requirements-ray.txt
  fi
  prev="$arg"
done

exec "$PY" app.py "$@"
