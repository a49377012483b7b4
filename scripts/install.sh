#!/usr/bin/env bash
# Installs what the gateway needs on a Debian machine: the servers from Debian's
# packages and a virtual environment in .venv with the gateway and its test
# tools. `scripts/install.sh demo` installs only what the demo needs.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
packages=(prosody lua5.4-unbound lua5.4-event ngircd swaks)
if [ "$what" = all ]; then
    packages+=(ejabberd postgresql libnet-ssleay-perl openssl chromium chromium-driver prometheus systemd iproute2
               inspircd atheme-services prosody-modules)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    # policy-rc.d on build machines may forbid starting services; we start our own on loopback anyway
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# An ordinary (non-editable) install, pinned to the versions the tests last ran with.
# Tests put the checkout on PYTHONPATH for the processes they start, so twistd finds
# twisted/plugins/ there; an operator's wheel install carries the plugin itself.
if [ "$what" = demo ]; then
    # the demo needs the gateway alone: its servers come from Debian, its simulator is in the package
    .venv/bin/python -m pip install -q -c constraints.txt .
else
    .venv/bin/python -m pip install -q -c constraints.txt '.[test]'
fi
