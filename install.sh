#!/usr/bin/env bash
# Install Herald on Debian 12 or 13 / Raspberry Pi OS bookworm or trixie, or set up a developer
# checkout.
# Safe to run again: it installs what is missing, upgrades the package, and never
# overwrites /etc/herald/herald.toml.  Run `install.sh --help` for the options.
#
# Secrets (the Deepgram and SLNG API keys, the MQTT password) live in /etc/herald/credentials/
# (root only) and reach the service as systemd credentials through the drop-in
# /etc/systemd/system/herald.service.d/credentials.conf, which lists only the files that exist
# (systemd fails a unit whose LoadCredential= file is missing).  A secret never goes in argv or
# the environment of another process, and is never printed.
set -euo pipefail
umask 022 # the venv and config must be readable by the herald user

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

BASE_PACKAGES=(python3-venv python3-dev gcc libasound2-dev espeak-ng alsa-utils
    libebur128-1 # the loudness meter (herald/audio/meter.py)
    procps) # /bin/kill, the unit's ExecReload
BROKER_PACKAGES=(mosquitto mosquitto-clients)
DEV_PACKAGES=("${BASE_PACKAGES[@]}" "${BROKER_PACKAGES[@]}"
    pulseaudio pulseaudio-utils libasound2-plugins sox shellcheck
    openssl   # certificates for the TLS test
    systemd   # systemd-analyze, for tests/test_unit_file.py
    debootstrap # the Debian 13 root of the tests, with Home Assistant (tests/debian13/env.sh)
    mpd snapserver snapclient) # real players for the ducking tests (tests/test_ducking.py)

SERVICE_USER=herald
SYSTEM_CONFIG=/etc/herald/herald.toml
SYSTEM_CREDENTIALS=/etc/herald/credentials # as the unit's drop-in names it on the target
CREDENTIAL_NAMES=(deepgram_api_key slng_api_key mqtt_password esphome_key)

MODE=install # install | dev | uninstall
WITH_BROKER=0
PURGE=0
ROOT="" # staging root; empty means the real system
DEEPGRAM_KEY_FILE=""
SLNG_KEY_FILE=""
MQTT_PASSWORD_FILE=""
DEEPGRAM_KEY=""   # the secrets read for this run: only ever in this shell's memory
SLNG_KEY=""
MQTT_PASSWORD=""
ESPHOME_KEY=0 # --esphome-key: make the ESPHome API's encryption key
CONFIG_CREATED=0
DONE=()           # what this run did, for the summary

say() { printf 'herald-install: %s\n' "$*"; }
die() {
    printf 'herald-install: error: %s\n' "$*" >&2
    exit 1
}
usage_error() {
    printf 'herald-install: error: %s (see --help)\n' "$*" >&2
    exit 2
}
did() {
    DONE+=("$*")
    say "$*"
}

usage() {
    cat <<'EOF'
Usage: install.sh [OPTIONS]

Install Herald (spoken MQTT announcements through ALSA) on Debian 12 or 13,
Raspberry Pi OS bookworm or trixie.  Safe to run again to upgrade.

With no options: install the apt packages Herald needs, create the system user
`herald`, create the venv /opt/herald with Herald in it, link
/usr/local/bin/herald, copy the example config to /etc/herald/herald.toml
(only if that file does not exist yet), install and start the systemd unit.

Options:
  --with-broker  also install a local MQTT broker (mosquitto, listening on
                 localhost only) and start it
  --dev          set up this checkout for development instead: apt packages
                 for the tests, ./.venv with Herald installed editable plus its
                 dev tools, and the tests' Debian 13 root with Home Assistant
                 (/var/cache/herald-tests/debian13, or $HERALD_DEBIAN13);
                 touches neither /etc nor /opt
  --uninstall    stop and remove the service, /opt/herald and the
                 /usr/local/bin/herald link; keeps /etc/herald and the user
  --purge        with --uninstall: also remove /etc/herald, /var/lib/herald
                 and the herald user
  --root DIR     install into (or uninstall from) the staging root DIR instead
                 of /: no apt, no user, no systemctl (prints what it would do)
  --deepgram-key-file FILE
                 store the Deepgram API key in FILE as the service's credential
                 /etc/herald/credentials/deepgram_api_key (root only, 0600) and
                 restart the service; run again with a new FILE to rotate the key.
                 A config this run creates then uses Deepgram, espeak-ng second.
  --slng-key-file FILE
                 the same for the SLNG API key (credential slng_api_key); a
                 config this run creates then uses SLNG, espeak-ng second (with
                 a Deepgram key stored as well: Deepgram, SLNG, espeak-ng)
  --mqtt-password-file FILE
                 the same for the broker password (credential mqtt_password)
  --esphome-key  make a random encryption key for the ESPHome API (Home
                 Assistant's media player, docs/esphome.md) and store it as the
                 credential esphome_key, unless one is stored already; a config
                 this run creates then has [esphome] enabled = true.  The key is
                 never printed: Home Assistant asks for it once, and
                 sudo cat /etc/herald/credentials/esphome_key shows it
  -h, --help     show this help and exit

Without a --*-file option, and with no Deepgram or SLNG key stored yet, an
install run from a terminal asks once for a Deepgram API key (not echoed;
empty: espeak-ng only).

Privileged steps use sudo unless you run this as root.  The service's venv is
built with /usr/bin/python3 (--dev and --root: python3 from PATH); set
HERALD_PYTHON to use another interpreter.
EOF
}

set_secret_file() {
    case "$1" in
    --deepgram-key-file) DEEPGRAM_KEY_FILE="$2" ;;
    --slng-key-file) SLNG_KEY_FILE="$2" ;;
    --mqtt-password-file) MQTT_PASSWORD_FILE="$2" ;;
    esac
}

parse_args() {
    while (($# > 0)); do
        case "$1" in
        --with-broker) WITH_BROKER=1 ;;
        --esphome-key) ESPHOME_KEY=1 ;;
        --dev) MODE=dev ;;
        --uninstall) MODE=uninstall ;;
        --purge) PURGE=1 ;;
        --root)
            if (($# < 2)) || [[ -z "$2" ]]; then
                usage_error "--root needs a directory"
            fi
            ROOT="$2"
            shift
            ;;
        --root=*)
            ROOT="${1#--root=}"
            [[ -n "$ROOT" ]] || usage_error "--root needs a directory"
            ;;
        --deepgram-key-file | --slng-key-file | --mqtt-password-file)
            if (($# < 2)) || [[ -z "$2" ]]; then
                usage_error "$1 needs a file"
            fi
            set_secret_file "$1" "$2"
            shift
            ;;
        --deepgram-key-file=* | --slng-key-file=* | --mqtt-password-file=*)
            [[ -n "${1#*=}" ]] || usage_error "${1%%=*} needs a file"
            set_secret_file "${1%%=*}" "${1#*=}"
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    if ((PURGE)) && [[ "$MODE" != uninstall ]]; then
        usage_error "--purge only goes with --uninstall"
    fi
    if [[ "$MODE" == dev && -n "$ROOT" ]]; then
        usage_error "--dev sets up the checkout; it does not take --root"
    fi
    if [[ "$MODE" == uninstall ]] && ((WITH_BROKER)); then
        usage_error "--uninstall never removes mosquitto; drop --with-broker"
    fi
    if [[ "$MODE" != install && -n "$DEEPGRAM_KEY_FILE$SLNG_KEY_FILE$MQTT_PASSWORD_FILE" ]]; then
        usage_error "--deepgram-key-file, --slng-key-file and --mqtt-password-file go with an install only"
    fi
    if [[ "$MODE" != install ]] && ((ESPHOME_KEY)); then
        usage_error "--esphome-key goes with an install only"
    fi
    if [[ -n "$ROOT" ]]; then
        ROOT="$(realpath -m -- "$ROOT")"
        [[ "$ROOT" != / ]] || ROOT=""
    fi
}

set_paths() {
    VENV="$ROOT/opt/herald"
    BIN_LINK="$ROOT/usr/local/bin/herald"
    CONFIG_DIR="$ROOT/etc/herald"
    CONFIG="$ROOT$SYSTEM_CONFIG"
    UNIT="$ROOT/etc/systemd/system/herald.service"
    DROPIN="$ROOT/etc/systemd/system/herald.service.d/credentials.conf"
    CREDENTIALS_DIR="$ROOT$SYSTEM_CREDENTIALS"
    STATE_DIR="$ROOT/var/lib/herald"
}

staging() { [[ -n "$ROOT" ]]; }

systemd_running() { ! staging && [[ -d /run/systemd/system ]]; }

# Run a command as root: directly when we are root, else through sudo.  A staging
# root belongs to the caller, so there everything runs as the caller.
as_root() {
    if staging || ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "this step needs root and sudo is not installed: $*"
    fi
}

# --- apt --------------------------------------------------------------------------------------

package_installed() {
    local status
    # shellcheck disable=SC2016 # ${Status} is a dpkg-query field, not a shell expansion
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" || return 1
    [[ "$status" == "install ok installed" ]]
}

install_apt_packages() {
    local missing=() pkg
    if staging; then
        say "staging root: would apt-get install $*"
        return
    fi
    for pkg in "$@"; do
        package_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        say "apt packages already installed: $*"
        return
    fi
    say "installing apt packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
    did "installed apt packages: ${missing[*]}"
}

# --- the system install -----------------------------------------------------------------------

create_user() {
    if staging; then
        say "staging root: would create system user $SERVICE_USER (home /var/lib/herald, group audio)"
        return
    fi
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "user $SERVICE_USER exists"
    else
        as_root useradd --system --user-group --groups audio \
            --home-dir /var/lib/herald --no-create-home \
            --shell /usr/sbin/nologin "$SERVICE_USER"
        did "created system user $SERVICE_USER"
    fi
    if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx audio; then
        as_root usermod --append --groups audio "$SERVICE_USER"
        did "added $SERVICE_USER to group audio"
    fi
    as_root install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
}

# The interpreter for the venv.  The service's venv is built on Debian's python3 (the one
# python3-venv serves, and one the herald user can reach) unless HERALD_PYTHON says otherwise.
venv_python() {
    if [[ -n "${HERALD_PYTHON:-}" ]]; then
        echo "$HERALD_PYTHON"
    elif [[ "$MODE" == install ]] && ! staging && [[ -x /usr/bin/python3 ]]; then
        echo /usr/bin/python3
    else
        echo python3
    fi
}

# A copy of the checkout without build leftovers and venvs.  Building in it keeps root-owned
# build/ and *.egg-info out of the (often user-owned) checkout, and stale files out of the wheel.
STAGE=""
remove_stage() { if [[ -n "$STAGE" ]]; then rm -rf -- "$STAGE"; fi; }
stage_source() {
    STAGE="$(mktemp -d)"
    trap remove_stage EXIT
    tar -C "$SRC" -cf - \
        --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
        --exclude=.ruff_cache --exclude=.hypothesis . | tar -C "$STAGE" -xf -
}

install_venv() {
    local python version
    python="$(venv_python)"
    if "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        say "venv $VENV exists"
    else
        as_root "$python" -m venv --clear "$VENV"
        did "created venv $VENV ($("$VENV/bin/python" --version))"
    fi
    stage_source
    say "installing Herald from $SRC into $VENV (this can take a few minutes)"
    as_root "$VENV/bin/pip" install --quiet --upgrade "$STAGE" || die "pip install into $VENV failed"
    as_root install -D -m 0644 "$SRC/README.md" "$VENV/share/doc/herald/README.md"
    as_root install -D -m 0644 -t "$VENV/share/doc/herald/docs" "$SRC"/docs/*.md
    version="$("$VENV/bin/herald" --version)" || die "$VENV/bin/herald does not run"
    did "installed $version into $VENV"
    link_command
}

link_command() {
    if [[ "$(readlink -- "$BIN_LINK" || true)" == "$VENV/bin/herald" ]]; then
        say "link $BIN_LINK is in place"
        return
    fi
    as_root mkdir -p "$(dirname "$BIN_LINK")"
    as_root ln -sfn "$VENV/bin/herald" "$BIN_LINK"
    did "linked $BIN_LINK -> $VENV/bin/herald"
}

# The shipped config speaks with espeak-ng only.  With a cloud key stored, a config this run
# creates gets its one `engines = ["espeak"]` line changed to put that voice first; an existing
# config is never edited.  With both keys stored Deepgram comes first (the default cloud voice,
# the one an interactive install asks for), then SLNG, then espeak-ng, which needs no network:
# the first voice that can speak does.
ESPEAK_ONLY_LINE='^engines = \["espeak"\]( +#.*)?$'
ESPEAK_ENGINES='engines = ["espeak"]'

# The engines line for the keys stored.
wanted_engines() {
    local list='"espeak"'
    if secret_stored slng_api_key; then
        list="\"slng\", $list"
    fi
    if secret_stored deepgram_api_key; then
        list="\"deepgram\", $list"
    fi
    printf 'engines = [%s]' "$list"
}

# uses_engine NAME FILE: FILE's engines list names NAME.
uses_engine() { grep -Eq "^[[:space:]]*engines[[:space:]]*=.*\"$1\"" "$2"; }

# stored_but_unused FILE: the voices whose key is stored but which FILE does not use.
stored_but_unused() {
    local engine
    for engine in deepgram slng; do
        if secret_stored "${engine}_api_key" && ! uses_engine "$engine" "$1"; then
            printf '%s\n' "$engine"
        fi
    done
}

# Where announcements may name WAV chimes (audio.chimes_dir): readable by the service, written
# only by root, so a publisher can choose among these sounds and no other file.
install_chimes_dir() {
    local chimes="$CONFIG_DIR/chimes"
    [[ -d "$chimes" ]] && return
    as_root install -d -m 0755 "$chimes"
    did "created $chimes (WAV files an announcement may name as its chime)"
}

voice_label() {
    case "$1" in
    deepgram) echo Deepgram ;;
    slng) echo SLNG ;;
    esac
}

install_config() {
    local shipped="$SRC/config/herald.toml" engines engine
    [[ -f "$shipped" ]] || die "missing $shipped"
    engines="$(wanted_engines)"
    if [[ -e "$CONFIG" ]]; then
        say "kept existing $CONFIG (never overwritten; the shipped example is $shipped)"
        for engine in $(stored_but_unused "$CONFIG"); do
            say "$CONFIG does not use the stored $(voice_label "$engine") key: set $engines under [voice]"
        done
        return
    fi
    [[ -d "$CONFIG_DIR" ]] || as_root install -d -m 0755 "$CONFIG_DIR"
    if [[ "$engines" == "$ESPEAK_ENGINES" ]]; then
        as_root install -m 0644 "$shipped" "$CONFIG"
        did "installed config $CONFIG (voice: espeak-ng)"
        CONFIG_CREATED=1
    elif [[ "$(grep -Ec "$ESPEAK_ONLY_LINE" "$shipped")" != 1 ]]; then
        as_root install -m 0644 "$shipped" "$CONFIG"
        did "installed config $CONFIG (voice: espeak-ng)"
        CONFIG_CREATED=1
        say "warning: $shipped has no single line '$ESPEAK_ENGINES' to switch; to use the stored key set $engines in $CONFIG"
    else
        sed -E -e "s/^engines = \[\"espeak\"\] +#/$engines  #/" \
            -e "s/^engines = \[\"espeak\"\]\$/$engines/" "$shipped" |
            as_root install -m 0644 /dev/stdin "$CONFIG"
        did "installed config $CONFIG with $engines (the first voice that can speak does)"
        CONFIG_CREATED=1
    fi
}

# --- secrets ----------------------------------------------------------------------------------
#
# /etc/herald/credentials/ (root, 0700) holds one file per secret (root, 0600).  A secret only
# passes through this shell's variables and bash builtins (never argv, never the environment)
# and through a pipe into the process that writes it; it is never printed.

secret_stored() { as_root test -s "$CREDENTIALS_DIR/$1"; }

# Leading and trailing white space off $1, on stdout (printf is a builtin: no argv).
trim() {
    local s="$1"
    s="${s#"${s%%[![:space:]]*}"}"
    s="${s%"${s##*[![:space:]]}"}"
    printf '%s' "$s"
}

# The contents of FILE on stdout: read as the caller when it can (so `--deepgram-key-file
# <(pass show deepgram)` works), else as root.
read_secret_file() {
    if [[ -r "$1" ]]; then
        cat -- "$1"
    else
        as_root cat -- "$1"
    fi
}

# load_secret_file WHAT FILE: the secret in FILE, trimmed, on stdout; dies on an unusable FILE
# with one line saying why (cat's own complaint is dropped: the error line says it).
load_secret_file() {
    local value
    [[ -e "$2" ]] || as_root test -e "$2" || die "$1 file $2 does not exist"
    [[ ! -d "$2" ]] || die "$1 file $2 is a directory"
    value="$(read_secret_file "$2" 2>/dev/null)" || die "cannot read $1 file $2"
    value="$(trim "$value")"
    [[ -n "$value" ]] || die "$1 file $2 is empty"
    [[ "$value" != *$'\n'* ]] || die "$1 file $2 has more than one line; it should hold the secret alone"
    printf '%s' "$value"
}

# Ask for a Deepgram key only in an install run from a terminal that names no secret file, and
# only with no cloud key stored yet (an SLNG key stored is a cloud voice already).
can_prompt() {
    [[ -t 0 && -z "$DEEPGRAM_KEY_FILE$SLNG_KEY_FILE$MQTT_PASSWORD_FILE" ]] &&
        ! secret_stored deepgram_api_key && ! secret_stored slng_api_key
}

# Read the secrets this run stores: from the files given, else (a terminal, no cloud key stored
# yet) ask once for a Deepgram key.  Done first, so nobody has to wait for pip to be asked.
collect_secrets() {
    local key=""
    if [[ -n "$DEEPGRAM_KEY_FILE" ]]; then
        DEEPGRAM_KEY="$(load_secret_file "Deepgram key" "$DEEPGRAM_KEY_FILE")"
    elif can_prompt; then
        read -rs -p "Deepgram API key (leave empty for the local espeak-ng voice only): " key || key=""
        printf '\n' >&2
        DEEPGRAM_KEY="$(trim "$key")"
        key=""
        [[ "$DEEPGRAM_KEY" != *$'\n'* ]] || die "the Deepgram key has more than one line"
        if [[ -z "$DEEPGRAM_KEY" ]]; then
            say "no Deepgram key: Herald speaks with the local espeak-ng voice"
        fi
    fi
    if [[ -n "$SLNG_KEY_FILE" ]]; then
        SLNG_KEY="$(load_secret_file "SLNG key" "$SLNG_KEY_FILE")"
    fi
    if [[ -n "$MQTT_PASSWORD_FILE" ]]; then
        MQTT_PASSWORD="$(load_secret_file "MQTT password" "$MQTT_PASSWORD_FILE")"
    fi
}

# store_secret NAME VALUE: write VALUE to the credential NAME (root, 0600) unless it is there.
store_secret() {
    local name="$1" value="$2" dest current=""
    dest="$CREDENTIALS_DIR/$name"
    if as_root test -f "$dest"; then
        current="$(as_root cat -- "$dest")"
        if [[ "$current" == "$value" ]]; then
            current=""
            say "credential $name in $dest is up to date"
            return
        fi
        current=""
    fi
    # shellcheck disable=SC2016 # $1 is expanded by that sh, which gets the path as its argument
    printf '%s' "$value" | as_root sh -c \
        'umask 077 && rm -f -- "$1.new" && cat >"$1.new" && mv -f -- "$1.new" "$1"' sh "$dest"
    did "stored credential $name in $dest (root only, mode 0600)"
}

install_credentials() {
    [[ -d "$CONFIG_DIR" ]] || as_root install -d -m 0755 "$CONFIG_DIR"
    if staging; then
        as_root install -d -m 0700 "$CREDENTIALS_DIR"
    else
        as_root install -d -m 0700 -o root -g root "$CREDENTIALS_DIR"
    fi
    if [[ -n "$DEEPGRAM_KEY" ]]; then
        store_secret deepgram_api_key "$DEEPGRAM_KEY"
    fi
    if [[ -n "$SLNG_KEY" ]]; then
        store_secret slng_api_key "$SLNG_KEY"
    fi
    if [[ -n "$MQTT_PASSWORD" ]]; then
        store_secret mqtt_password "$MQTT_PASSWORD"
    fi
    if ((ESPHOME_KEY)); then
        make_esphome_key
    fi
    DEEPGRAM_KEY=""
    SLNG_KEY=""
    MQTT_PASSWORD=""
}

# 32 random bytes in base64, as ESPHome's `api: encryption: key`: made in a pipe, never printed.
make_esphome_key() {
    local dest="$SYSTEM_CREDENTIALS/esphome_key"
    if secret_stored esphome_key; then
        say "kept the ESPHome encryption key stored in $dest"
        return
    fi
    # shellcheck disable=SC2016 # $1 is expanded by that sh, which gets the path as its argument
    head -c 32 /dev/urandom | base64 | as_root sh -c \
        'umask 077 && rm -f -- "$1.new" && cat >"$1.new" && mv -f -- "$1.new" "$1"' sh \
        "$CREDENTIALS_DIR/esphome_key"
    did "made an ESPHome encryption key in $dest (root only, mode 0600)"
    say "Home Assistant asks for it when it adds Herald: sudo cat $dest"
}

# With --esphome-key, the API on: in a config this run created; else say how.
enable_esphome() {
    local line='^enabled = false( +# true: serve ESPHome.s native API)$'
    ((ESPHOME_KEY)) || return 0
    if ((CONFIG_CREATED)) && grep -Eq "$line" "$CONFIG"; then
        as_root sed -i -E "s/$line/enabled = true \1/" "$CONFIG"
        did "turned on the ESPHome API in $CONFIG ([esphome] enabled = true)"
    else
        say "to use the key, set [esphome] enabled = true in $CONFIG and restart the service"
    fi
}

remove_empty_dir() {
    if [[ -d "$1" ]] && [[ -z "$(ls -A -- "$1")" ]]; then
        as_root rmdir -- "$1"
    fi
}

# The drop-in hands the service the credentials that exist, and only those: LoadCredential= with
# a missing file fails the unit (243/CREDENTIALS).  No credentials, no drop-in.
install_credentials_dropin() {
    local name content names=() lines=()
    for name in "${CREDENTIAL_NAMES[@]}"; do
        if secret_stored "$name"; then
            names+=("$name")
            lines+=("LoadCredential=$name:$SYSTEM_CREDENTIALS/$name")
        fi
    done
    if ((${#lines[@]} == 0)); then
        remove_path "$DROPIN"
        remove_empty_dir "$(dirname "$DROPIN")"
        say "no credentials stored, so no drop-in $DROPIN"
        return
    fi
    content="$(printf '%s\n' \
        "# Written by install.sh: the credentials stored in $SYSTEM_CREDENTIALS/, and only those" \
        "# (a LoadCredential= file that is missing fails the service).  Run install.sh again after" \
        "# adding or removing one there, or edit this and run: systemctl daemon-reload" \
        "[Service]" "${lines[@]}")"
    if [[ -f "$DROPIN" ]] && [[ "$(cat -- "$DROPIN")" == "$content" ]]; then
        say "drop-in $DROPIN is up to date"
        return
    fi
    printf '%s\n' "$content" | as_root install -D -m 0644 /dev/stdin "$DROPIN"
    did "installed drop-in $DROPIN (credentials: ${names[*]})"
}

install_unit() {
    if [[ -f "$UNIT" ]] && cmp -s "$SRC/systemd/herald.service" "$UNIT"; then
        say "unit $UNIT is up to date"
        return
    fi
    as_root install -D -m 0644 "$SRC/systemd/herald.service" "$UNIT"
    did "installed unit $UNIT"
}

# systemctl, or with no systemd to talk to, a note of what it would have done.
run_systemctl() {
    if systemd_running; then
        as_root systemctl "$@"
    else
        say "would run: systemctl $*"
    fi
}

start_broker() {
    say "mosquitto 2 as Debian configures it listens on localhost only, which is what a broker for this machine alone wants"
    if systemd_running; then
        as_root systemctl enable --now mosquitto
        did "enabled and started mosquitto"
    else
        run_systemctl enable --now mosquitto
    fi
}

start_service() {
    if ! systemd_running; then
        staging || say "systemd is not running here"
        run_systemctl daemon-reload
        run_systemctl enable --now herald
        say "to run Herald by hand: herald run --config $SYSTEM_CONFIG"
        return
    fi
    as_root systemctl daemon-reload
    as_root systemctl enable herald
    # --no-block: Herald is "started" once its broker and speaker answer, and waits for them
    # as long as it takes (a speaker not plugged in yet); the installer does not wait with it.
    if systemctl is-active --quiet herald; then
        as_root systemctl restart --no-block herald
        did "restarting herald.service with the new version"
    else
        as_root systemctl start --no-block herald
        did "enabled and starting herald.service"
    fi
    report_start
}

# Wait a little for the service to be up; if it is not yet, say what it is waiting for.
report_start() {
    local waited
    for waited in $(seq 1 20); do
        if systemctl is-active --quiet herald; then
            say "herald is running: $(systemctl show -p StatusText --value herald)"
            return
        fi
        sleep 1
    done
    say "herald is not running yet after ${waited} s ($(systemctl show -p ActiveState --value herald)): $(systemctl show -p StatusText --value herald)"
    say "if it waits for the broker or the speaker it goes on waiting; see: journalctl -u herald -f"
}

summary() {
    say "done."
    if ((${#DONE[@]} == 0)); then
        say "nothing needed changing."
    else
        say "this run:"
        local line
        for line in "${DONE[@]}"; do
            say "  - $line"
        done
    fi
}

install_system() {
    local packages=("${BASE_PACKAGES[@]}")
    if ((WITH_BROKER)); then
        packages+=("${BROKER_PACKAGES[@]}")
    fi
    collect_secrets
    install_apt_packages "${packages[@]}"
    create_user
    install_venv
    install_credentials
    install_config
    enable_esphome
    install_chimes_dir
    install_unit
    install_credentials_dropin
    if ((WITH_BROKER)); then
        start_broker
    fi
    start_service
    summary
    say "check it with:"
    say "  systemctl status herald"
    say "  journalctl -u herald -f"
    say "  herald check"
    say "  herald say \"Hello\""
    say "settings: $SYSTEM_CONFIG (restart the service after editing it)"
    summarize_secrets
}

summarize_secrets() {
    local engine name
    say "secrets: $SYSTEM_CREDENTIALS/ (root only), handed to the service as systemd credentials"
    say "  by /etc/systemd/system/herald.service.d/credentials.conf"
    for engine in deepgram slng; do
        name="$(voice_label "$engine")"
        if secret_stored "${engine}_api_key"; then
            say "$name key: $SYSTEM_CREDENTIALS/${engine}_api_key"
            say "  rotate it: sudo ./install.sh --$engine-key-file NEWFILE (stores it, restarts Herald)"
            if uses_engine "$engine" "$CONFIG"; then
                say "  $SYSTEM_CONFIG uses it: \"$engine\" is in [voice] engines"
            else
                say "  $SYSTEM_CONFIG does not use it yet: set $(wanted_engines) under [voice]"
            fi
        fi
    done
    if ! secret_stored deepgram_api_key && ! secret_stored slng_api_key; then
        say "no Deepgram or SLNG key: the local espeak-ng voice speaks"
        say "  add one: sudo ./install.sh --deepgram-key-file FILE (or --slng-key-file FILE)"
    fi
    if secret_stored mqtt_password; then
        say "MQTT password: $SYSTEM_CREDENTIALS/mqtt_password (set [mqtt] username in $SYSTEM_CONFIG)"
        say "  change it: sudo ./install.sh --mqtt-password-file NEWFILE"
    fi
    say "only root and the service can read them: \`sudo herald check\` tests them as the service will"
}

# --- uninstall --------------------------------------------------------------------------------

stop_service() {
    if systemd_running; then
        if [[ -f "$UNIT" ]]; then
            as_root systemctl disable --now herald || say "could not stop herald.service; continuing"
            did "stopped and disabled herald.service"
        fi
    else
        run_systemctl disable --now herald
    fi
}

remove_path() {
    if [[ -e "$1" || -L "$1" ]]; then
        as_root rm -rf -- "$1"
        did "removed $1"
    fi
}

remove_user() {
    if staging; then
        say "staging root: would delete user $SERVICE_USER"
    elif id -u "$SERVICE_USER" >/dev/null 2>&1; then
        as_root userdel "$SERVICE_USER"
        did "deleted user $SERVICE_USER"
    fi
}

remove_discovery() {
    # Home Assistant forgets the device: empty retained discovery messages, best effort.
    if staging || [[ ! -x "$VENV/bin/herald" || ! -f "$CONFIG" ]]; then
        return 0
    fi
    if as_root timeout 20 "$VENV/bin/herald" run --remove-discovery --config "$CONFIG"; then
        did "removed the device from Home Assistant's discovery"
    else
        say "could not reach the broker to remove the device from Home Assistant; continuing"
    fi
}

uninstall_system() {
    remove_discovery
    stop_service
    remove_path "$UNIT"
    remove_path "$DROPIN"
    remove_empty_dir "$(dirname "$DROPIN")"
    run_systemctl daemon-reload
    remove_path "$VENV"
    if [[ -L "$BIN_LINK" ]]; then
        remove_path "$BIN_LINK"
    elif [[ -e "$BIN_LINK" ]]; then
        say "left $BIN_LINK alone: it is not the link this script made"
    fi
    if ((PURGE)); then
        remove_path "$CONFIG_DIR" # with the credentials in it
        remove_path "$STATE_DIR"
        remove_user
    elif [[ -e "$CONFIG_DIR" ]]; then
        say "kept $CONFIG_DIR and the credentials in it (add --purge to remove them and the herald user)"
    fi
    summary
    say "mosquitto, if installed, is left as it is."
}

# --- the developer checkout -------------------------------------------------------------------

install_dev() {
    local version
    install_apt_packages "${DEV_PACKAGES[@]}"
    cd "$SRC"
    if [[ -x .venv/bin/python ]]; then
        say "venv $SRC/.venv exists"
    else
        python3 -m venv .venv
        did "created venv $SRC/.venv"
    fi
    say "installing Herald (editable) with its dev tools into .venv"
    .venv/bin/pip install --quiet -e ".[dev]"
    version="$(.venv/bin/herald --version)" || die "$SRC/.venv/bin/herald does not run"
    did "installed $version editable into $SRC/.venv"
    install_test_root
    summary
    say "run the tests with: .venv/bin/pytest"
}

# The tests run Home Assistant (it needs Python 3.13) from a Debian 13 root kept outside the
# checkout; env.sh makes it once and brings it up to date when the pinned version changes.
install_test_root() {
    local script="$SRC/tests/debian13/env.sh"
    say "the tests' Debian 13 root with Home Assistant: $script build"
    as_root env ${HERALD_DEBIAN13:+"HERALD_DEBIAN13=$HERALD_DEBIAN13"} \
        ${HERALD_DEBIAN_MIRROR:+"HERALD_DEBIAN_MIRROR=$HERALD_DEBIAN_MIRROR"} "$script" build ||
        die "could not make the tests' Debian 13 root (see above)"
}

main() {
    parse_args "$@"
    set_paths
    case "$MODE" in
    install) install_system ;;
    uninstall) uninstall_system ;;
    dev) install_dev ;;
    esac
}

main "$@"
