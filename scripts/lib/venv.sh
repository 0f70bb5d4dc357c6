# Sourced by scripts/run and scripts/test: make sure .venv exists and holds the project.
#
# venv_ensure EXTRAS   EXTRAS is "" (the platform) or "dev" (platform + test tools).
# The project is (re)installed only when pyproject.toml changed since the last install for
# those extras: a stamp file in .venv keeps the hash it was installed from.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

python_311() {
    # PYTHON wins; then python3.11; then python3 if it is 3.11.
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 is required (python3.11, or python3 being 3.11, or PYTHON=/path/to/python3.11)" >&2
    return 1
}

venv_ensure() {
    local extras="$1" spec stamp wanted python
    if [ ! -x "$VENV/bin/python" ]; then
        python="$(python_311)"
        echo "==> creating $VENV with $python" >&2
        "$python" -m venv "$VENV"
    fi
    spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    stamp="$VENV/.installed${extras:+-$extras}"
    wanted="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        echo "==> installing $spec into $VENV (pyproject.toml changed or first run)" >&2
        (cd "$ROOT" && "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$spec")
        echo "$wanted" > "$stamp"
        if [ -n "$extras" ]; then
            # The extras include everything the platform itself needs.
            echo "$wanted" > "$VENV/.installed"
        fi
    fi
    return 0
}
