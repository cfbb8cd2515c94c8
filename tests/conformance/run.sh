#!/usr/bin/env bash
# Runs the conformance suite: the official Google clients against a real clustercred server.
# Creates (or reuses, while requirements.txt is unchanged) a virtualenv in tests/conformance/.venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${CONFORMANCE_VENV:-$here/.venv}"
bin="${CLUSTERCRED_BIN:-$here/../../target/debug/clustercred}"
if [ ! -x "$bin" ]; then
    echo "clustercred binary not found at $bin (build it with: cargo build -p clustercred)" >&2
    exit 1
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi
export CLUSTERCRED_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
