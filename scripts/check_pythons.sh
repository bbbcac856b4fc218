#!/usr/bin/env bash
# Try the package as a new user would, on every CPython it claims: for each version, a fresh clone of this repo's
# HEAD, a fresh venv, the README's install command and its test command. Prints one line per version: the
# Python, the numpy / torch / triton that pip picked, and pytest's summary line. Versions run one after another.
#
#   scripts/check_pythons.sh                 # 3.10 3.11 3.12 3.13, those installed
#   scripts/check_pythons.sh 3.12            # just one
#
# Environment:
#   CHECK_DIR           logs, clones and venvs (default /tmp/routoo_check_pythons); logs stay in CHECK_DIR/logs
#   PIP_CACHE_DIR       pip's cache, shared by every version so reruns download nothing (pip's default otherwise)
#   ROUTOO_SHARED_DATA  the real-data folder some tests read (default: ../shared/data beside this repo, if there);
#                       without it those tests skip, as on a new user's machine
#   KEEP=1              keep each version's clone and venv (by default removed after its line is printed:
#                       a venv with PyPI's CUDA torch build takes several GB)
# Interpreters are looked up in $PYENV_ROOT/versions (default ~/.pyenv) first, then as pythonX.Y on PATH.
# Exit status: 0 when every version found passed, 1 otherwise; a version not installed is reported, not failed.
set -uo pipefail

VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(3.10 3.11 3.12 3.13)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK_DIR="${CHECK_DIR:-/tmp/routoo_check_pythons}"
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
LOGS="$CHECK_DIR/logs"
mkdir -p "$LOGS"
if [ -z "${ROUTOO_SHARED_DATA:-}" ] && [ -d "$REPO/../shared/data" ]; then
    export ROUTOO_SHARED_DATA="$(cd "$REPO/../shared/data" && pwd)"
fi

# The README's two commands (the test one is what .ci/run does); warn if the README no longer says so.
INSTALL='pip install torch==2.13.0 && pip install -e ".[all]"'
TEST='python -m pytest -q'
grep -qF "$INSTALL && $TEST" "$REPO/README.md" || echo "warning: README.md no longer shows: $INSTALL && $TEST" >&2

COMMIT="$(git -C "$REPO" rev-parse HEAD)"
if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
    echo "note: testing commit ${COMMIT:0:10}; uncommitted changes in $REPO are not included" >&2
fi
echo "commit ${COMMIT:0:10}  shared data: ${ROUTOO_SHARED_DATA:-none}  logs: $LOGS"

find_python() {  # newest installed patch release of $1, e.g. 3.12 -> ~/.pyenv/versions/3.12.1/bin/python3.12
    local v="$1" best=""
    for d in $(ls -d "$PYENV_ROOT"/versions/"$v".* 2>/dev/null | sort -V); do
        [[ "$(basename "$d")" =~ ^$v\.[0-9]+$ ]] && [ -x "$d/bin/python$v" ] && best="$d/bin/python$v"
    done
    [ -z "$best" ] && best="$(command -v "python$v" 2>/dev/null || true)"
    echo "$best"
}

status=0
for v in "${VERSIONS[@]}"; do
    py="$(find_python "$v")"
    if [ -z "$py" ]; then
        printf '%-8s not installed\n' "$v"
        continue
    fi
    work="$CHECK_DIR/py$v"
    log="$LOGS/py$v"
    rm -rf "$work" && mkdir -p "$work"
    : >"$log.install.log"
    : >"$log.test.log"
    t0=$SECONDS
    line=""
    if ! { git clone -q "$REPO" "$work/src" && git -C "$work/src" checkout -q "$COMMIT" \
           && "$py" -m venv "$work/venv"; } >>"$log.install.log" 2>&1; then
        line="SETUP FAILED (clone/venv), see $log.install.log"
    else
        # a subshell per version: the venv's activation and the cd stay inside it
        (cd "$work/src" && source "$work/venv/bin/activate" && eval "$INSTALL") >>"$log.install.log" 2>&1
        irc=$?
        if [ $irc -ne 0 ]; then
            line="INSTALL FAILED (rc $irc), see $log.install.log"
        else
            (cd "$work/src" && source "$work/venv/bin/activate" && eval "$TEST") >"$log.test.log" 2>&1
            trc=$?
            summary="$(grep -E '^=*.*[0-9]+ (passed|failed|error|errors|skipped|deselected)' "$log.test.log" | tail -1 \
                       | sed -E 's/^=+ //; s/ =+$//')"
            [ $trc -eq 0 ] && verdict=PASS || verdict="FAIL (rc $trc)"
            line="$verdict  ${summary:-no pytest summary, see $log.test.log}"
        fi
    fi
    stack="$("$work/venv/bin/python" - 2>/dev/null <<'EOF'
import importlib.metadata as md
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "-"
torch = v("torch")
if torch != "-" and "+" not in torch:  # PyPI's CUDA build has no local version tag: say which build it is
    try:
        import torch as t
        torch += f" (cuda {t.version.cuda})" if t.version.cuda else " (cpu)"
    except Exception as exc:
        torch += f" (import failed: {type(exc).__name__})"
print(f"numpy {v('numpy')}  torch {torch}  triton {v('triton')}")
EOF
)"
    full="$("$py" -c 'import platform; print(platform.python_version())')"
    [ "${line%% *}" = PASS ] || status=1
    printf 'Python %-8s %-56s %s  [%ds]\n' "$full" "${stack:-(no venv)}" "$line" $((SECONDS - t0)) | tee -a "$LOGS/summary.txt"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
done
exit $status
