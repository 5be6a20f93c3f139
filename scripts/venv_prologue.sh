# Sourced by scripts/setup_*_env.sh with VENV (the environment's directory) and PINS (the
# constraints, one requirement a line) set: exits the calling script when VENV's stamp is newer
# than pyproject.toml, the calling script and this one; otherwise makes VENV (once), upgrades its pip and
# sets BIN, STAMP (touch it when the environment is complete) and CONSTRAINTS (a file of PINS,
# removed when the script exits).
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed"
BIN="$VENV/bin"

if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt "$0" && "$STAMP" -nt "${BASH_SOURCE[0]}" ]]; then
    echo "$VENV is up to date"
    exit 0
fi

[[ -x "$BIN/python" ]] || "$PYTHON" -m venv "$VENV"
"$BIN/pip" install -q --upgrade pip
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf '%s\n' "$PINS" > "$CONSTRAINTS"
