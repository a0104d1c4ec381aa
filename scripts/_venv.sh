# Sourced by scripts/*: makes .venv with Python 3.11 if missing and installs the project into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: toystore needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}
if [ ! -x .venv/bin/python ]; then
  PY="$(find_python)"
  echo "Creating .venv with $PY ..." >&2
  "$PY" -m venv .venv
fi
# Quiet unless it fails; a non-editable install is what a user gets (twistd plugins included).
if ! .venv/bin/pip install --disable-pip-version-check -q ".${TOYSTORE_EXTRAS:-}" >.venv/install.log 2>&1; then
  cat .venv/install.log >&2
  exit 1
fi
