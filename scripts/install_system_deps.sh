#!/usr/bin/env bash
# Debian packages the code-verifier sandbox needs (run as root by CI before the tests).
# Idempotent: installs only what is missing. libseccomp2 backs pyseccomp (the seccomp layer).
set -euo pipefail

packages=(libseccomp2)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "system deps: all present (${packages[*]})"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "system deps: missing ${missing[*]}; run this script as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "system deps: installed ${missing[*]}"
