# Sourced by scripts/*: make sure .venv exists and holds this checkout's dependencies.
# Installs every extra plus the test tools, pinned by constraints.txt (the Dockerfile uses the
# same file), so a build today and one next month resolve the same versions.
# Re-installs only when pyproject.toml or this script changed, so repeated runs start at once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${CONVEYOR_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "$PYTHON_BIN" -m venv "$VENV"
fi
stamp="$VENV/.conveyor-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing Conveyor and its test dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$ROOT[all,test]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
