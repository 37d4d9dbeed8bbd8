#!/usr/bin/env bash
# bulles developer entry point: sets everything up, then runs the demo site or the test suite.
#   ./dev.sh run  [options of `bulles demo`]   start the platform with demo data
#   ./dev.sh test [pytest arguments]           run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)

say() { printf '==> %s\n' "$*" >&2; }

apt_install() {
    # System packages, installed only when missing and only when we are root.
    if [ "$#" -eq 0 ]; then return 0; fi
    if [ "$(id -u)" -ne 0 ]; then
        say "missing system packages: $* (install them with: sudo apt-get install $*)"
        return 1
    fi
    say "installing system packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

system_packages() {
    local missing=()
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    # Bubbles run in bubblewrap sandboxes; their homes are ext4 images on loop devices.
    command -v bwrap >/dev/null || missing+=(bubblewrap)
    # Open bubbles reach the internet through user-mode networking, never the host: slirp4netns,
    # and the namespace's routes set with iproute2 and procps's sysctl, through nsenter.
    command -v slirp4netns >/dev/null || missing+=(slirp4netns)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v sysctl >/dev/null || missing+=(procps)
    command -v setpriv >/dev/null && command -v prlimit >/dev/null && command -v nsenter >/dev/null \
        || missing+=(util-linux)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    if [ "${1:-}" = test ]; then
        # The suite starts its own throw-away PostgreSQL 15 cluster (initdb/pg_ctl).
        ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql-15)
    fi
    apt_install "${missing[@]}"
}

python_env() {
    local stamp=.venv/.bulles-installed want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv"
        python3 -m venv .venv
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing Python packages"
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e ".[test]"
        echo "$want" > "$stamp"
    fi
}

bubble_env() {
    # The environment bubbles run (Jupyter, a kernel, pyarrow, pandas, `bulle`): separate from the
    # controller's, mounted read-only in every bubble.
    local stamp=.venv-bubble/.bulles-installed want
    want=$(cat bubble_images/requirements.txt bubble_images/bulle/pyproject.toml bubble_images/bulle/src/bulle/*.py | sha256sum | cut -d' ' -f1)
    if [ ! -x .venv-bubble/bin/python ]; then
        say "creating .venv-bubble (the bubbles' environment)"
        python3 -m venv .venv-bubble
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing the bubbles' Python packages"
        .venv-bubble/bin/python -m pip install -q --upgrade pip
        .venv-bubble/bin/python -m pip install -q -r bubble_images/requirements.txt
        .venv-bubble/bin/python -m pip install -q --force-reinstall --no-deps ./bubble_images/bulle
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    run)
        system_packages run
        python_env
        bubble_env
        exec .venv/bin/bulles demo --home "${BULLES_HOME:-$here/.bulles}" "$@"
        ;;
    test)
        system_packages test
        python_env
        bubble_env
        set +e
        .venv/bin/python -m pytest "$@"
        rc=$?
        set -e
        if [ "$rc" -eq 5 ]; then
            say "pytest collected no tests: that is a failure"
            exit 1
        fi
        exit "$rc"
        ;;
    *)
        echo "usage: ./dev.sh run [bulles demo options] | ./dev.sh test [pytest arguments]" >&2
        exit 2
        ;;
esac
