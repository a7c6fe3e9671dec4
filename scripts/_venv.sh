# Sourced by scripts/*: create or reuse .venv and install the project with its dev extra.
# Reinstalls only when pyproject.toml changed since the last install.
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
    echo "== installing into .venv (pip install -e '.[dev]')"
    if ! python -m pip install -q -e '.[dev]' >.venv/install.log 2>&1; then
        cat .venv/install.log
        echo "install failed" >&2
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
fi
