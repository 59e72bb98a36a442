#!/usr/bin/env bash
# The Debian 13 ("trixie") environment of the tests: Raspberry Pi OS is based on it, and current
# Home Assistant needs its Python 3.13.  A Debian 13 root made with debootstrap and kept outside
# the checkout (default /var/cache/herald-tests/debian13, or $HERALD_DEBIAN13), holding the
# Home Assistant named in home-assistant.version in the venv /opt/homeassistant.
#
#   env.sh build        make the root, or bring it up to date (run by `install.sh --dev`)
#   env.sh run CMD...   run CMD inside it (the tests start Home Assistant this way)
#   env.sh suite        copy this checkout into it and run the README's test command, ruff and
#                       mypy there: the whole suite on Python 3.13 and mosquitto 2.0.21
#
# HERALD_DEBIAN13=/ means "this machine is the Debian 13 system": nothing is made or entered
# (the suite run sets it inside the root).  Making the root, and `suite`, take root; `run` works
# for anyone (a user namespace).  Each command has a mount namespace of its own, so nothing
# stays mounted when it ends.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$HERE/../.." && pwd -P)"
ROOT="${HERALD_DEBIAN13:-/var/cache/herald-tests/debian13}"
SUITE=trixie
HA_VERSION="$(tr -d '[:space:]' <"$HERE/home-assistant.version")"
HA_VENV=/opt/homeassistant
# What Home Assistant loads in the tests and needs installed: the MQTT integration, the frontend
# (without it Home Assistant starts in recovery mode), onboarding (how the tests get a token) and
# ESPHome (Herald's media player; it brings bluetooth, assist_pipeline, ffmpeg...). A change
# here installs the new requirements into an existing root on the next `build`.
HA_COMPONENTS=(mqtt frontend onboarding api config notify siren button number switch sensor
    esphome)
# Debian packages the root needs beyond debootstrap's: ffmpeg, which Home Assistant's ESPHome
# media player runs to convert what it plays to the format the device asks for, and g++ (two of
# assist_pipeline's requirements, pymicro-vad and pyspeex-noise, are C++ without a wheel for
# 3.13). Installed into an existing root too.
ROOT_PACKAGES=(ffmpeg g++)
CHECKOUT=/root/herald # where `suite` puts the checkout inside the root

say() { printf 'debian13: %s\n' "$*"; }
die() {
    printf 'debian13: error: %s\n' "$*" >&2
    exit 1
}

# The Debian archive this machine's apt already uses (none is named here: a Pi or a mirror
# near the user serves it), or $HERALD_DEBIAN_MIRROR.
debian_mirror() {
    if [[ -n "${HERALD_DEBIAN_MIRROR:-}" ]]; then
        echo "$HERALD_DEBIAN_MIRROR"
        return
    fi
    # shellcheck disable=SC2016 # $(SITE) and friends are apt's format fields, not shell
    apt-get indextargets --format '$(SITE) $(RELEASE) $(ORIGIN)' 2>/dev/null |
        awk '$3 == "Debian" && $2 !~ /-/ { print $1; exit }' | grep . ||
        die "no Debian archive among apt's sources; set HERALD_DEBIAN_MIRROR to one"
}

make_root() {
    [[ "$ROOT" != / ]] || return 0
    if [[ -x "$ROOT/usr/bin/python3" ]]; then
        say "Debian 13 root $ROOT exists"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap is not installed (install.sh --dev installs it)"
    ((EUID == 0)) || die "making the Debian 13 root takes root: sudo $0 build"
    local partial="$ROOT.partial" mirror
    mirror="$(debian_mirror)"
    rm -rf -- "$partial"
    mkdir -p -- "$(dirname "$ROOT")"
    say "making a Debian 13 root in $ROOT (debootstrap, about 1.5 GB with Home Assistant; once)"
    # gcc and the headers: a few of Home Assistant's requirements have no wheel for every
    # Python and machine (lru-dict for 3.13 on amd64), and pip builds them.
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,gcc,ca-certificates \
        "$SUITE" "$partial" "$mirror" >"$partial.log" 2>&1 ||
        die "debootstrap failed; its log: $partial.log"
    rm -f -- "$partial.log"
    mv -- "$partial" "$ROOT"
}

# enter CMD...: run CMD in the root, with /proc, /dev, /sys, the host's name servers and its
# certificate store (pip inside trusts what this machine trusts); $HERALD_DEBIAN13_BIND, if
# set, is mounted at /mnt (the tests hand Home Assistant its config directory that way). Not
# as root, a user namespace maps the caller to root inside: CMD runs with the caller's rights.
enter() {
    if [[ "$ROOT" == / ]]; then
        exec "$@"
    fi
    [[ -x "$ROOT/usr/bin/python3" ]] || die "no Debian 13 root in $ROOT: run ./install.sh --dev"
    local unshare=(unshare --mount)
    ((EUID == 0)) || unshare+=(--map-root-user)
    # Mounts made inside stay inside (private).  Inside a chroot, / is no mount point and cannot
    # be made private: there they are made as the enclosing namespace propagates them, so enter
    # such a chroot through a mount namespace of its own (`unshare --mount chroot DIR`).
    if "${unshare[@]}" --propagation private true 2>/dev/null; then
        unshare+=(--propagation private)
    else
        unshare+=(--propagation unchanged)
    fi
    # shellcheck disable=SC2016 # expanded by that sh
    exec "${unshare[@]}" sh -c '
        root=$1
        shift
        mount --rbind /proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
        mount --bind /etc/ssl/certs "$root/etc/ssl/certs"
        if [ -n "${HERALD_DEBIAN13_BIND:-}" ]; then mount --bind "$HERALD_DEBIAN13_BIND" "$root/mnt"; fi
        exec chroot "$root" "$@"' sh "$ROOT" env -i "${INSIDE_ENV[@]}" "$@"
}

# The environment inside: a clean one (this machine's PATH, venvs and pip settings mean
# nothing there), with what reaches the network, the host's certificate store and CI.
INSIDE_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    LANG=C.UTF-8 TERM="${TERM:-dumb}")
for name in CI http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY \
    SSL_CERT_FILE PIP_CERT REQUESTS_CA_BUNDLE PIP_INDEX_URL PIP_DEFAULT_TIMEOUT; do
    if [[ -n "${!name:-}" ]]; then
        INSIDE_ENV+=("$name=${!name}")
    fi
done

# The packages Home Assistant installs at run time for the components the tests load, read
# from their manifests (dependencies followed), so that it can start with --skip-pip.
read -r -d '' REQUIREMENTS_OF <<'PY' || true
import json, sys
from pathlib import Path
import homeassistant.components as components
base = Path(components.__path__[0])
wanted, seen, requirements = list(sys.argv[1:]), set(), set()
while wanted:
    name = wanted.pop()
    if name in seen or not (base / name / "manifest.json").exists():
        continue
    seen.add(name)
    manifest = json.loads((base / name / "manifest.json").read_text())
    requirements.update(manifest.get("requirements", []))
    wanted.extend(manifest.get("dependencies", []))
print(" ".join(sorted(requirements)))
PY

# What is installed in the venv, as its stamp says it: Home Assistant's version, then the
# components whose requirements are there.
ha_stamp() {
    printf 'homeassistant==%s\ncomponents: %s\n' "$HA_VERSION" "${HA_COMPONENTS[*]}"
}

make_home_assistant() {
    local stamp="$ROOT$HA_VENV/herald-installed" want have=""
    want="$(ha_stamp)"
    [[ ! -f "$stamp" ]] || have="$(cat -- "$stamp")"
    if [[ "$have" == "$want" ]]; then
        say "Home Assistant $HA_VERSION is installed in $ROOT$HA_VENV"
        return
    fi
    if [[ "$(head -n 1 <<<"$have")" == "homeassistant==$HA_VERSION" ]]; then
        say "installing the requirements of Home Assistant's components: ${HA_COMPONENTS[*]}"
    else
        say "installing Home Assistant $HA_VERSION into $ROOT$HA_VENV (a few minutes; once)"
        (enter python3 -m venv --clear "$HA_VENV")
        (enter "$HA_VENV/bin/pip" install --quiet "homeassistant==$HA_VERSION") ||
            die "pip could not install homeassistant==$HA_VERSION"
    fi
    local requirements constraints
    requirements="$(enter "$HA_VENV/bin/python" -c "$REQUIREMENTS_OF" "${HA_COMPONENTS[@]}")"
    # Home Assistant's own pins (what it installs requirements with): nothing it was released
    # with moves, and a requirement's unpinned dependency gets the version it was tested with.
    constraints="$(enter "$HA_VENV/bin/python" -c \
        'import homeassistant as ha; print(ha.__path__[0] + "/package_constraints.txt")')"
    # shellcheck disable=SC2086 # one requirement per word
    (enter "$HA_VENV/bin/pip" install --quiet --constraint "$constraints" $requirements) ||
        die "pip could not install Home Assistant's requirements: $requirements"
    printf '%s\n' "$want" >"$stamp"
}

# ROOT_PACKAGES, installed with the root's apt if one is missing (a root made before it was
# listed gets it on its next build).
make_packages() {
    local missing=() package status
    for package in "${ROOT_PACKAGES[@]}"; do
        # shellcheck disable=SC2016 # ${Status} is dpkg-query's field, not shell
        status="$(enter dpkg-query -W -f '${Status}' "$package" 2>/dev/null)" || status=""
        [[ "$status" == *" installed" ]] || missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        return
    fi
    ((EUID == 0)) || die "installing ${missing[*]} into the Debian 13 root takes root: sudo $0 build"
    say "installing ${missing[*]} into $ROOT (apt)"
    (enter env DEBIAN_FRONTEND=noninteractive sh -c \
        'apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null' \
        sh "${missing[@]}") || die "apt-get could not install ${missing[*]} into $ROOT"
}

build() {
    make_root
    make_packages
    make_home_assistant
    say "ready: Home Assistant $HA_VERSION on $(enter python3 --version 2>&1 | tr -d '\n')"
}

# Copy the checkout in (without its venv and caches; the copy keeps its own .venv between
# runs) and run there what CI runs here.
suite() {
    [[ "$ROOT" != / ]] || die "suite runs the tests inside the root; here, run them directly"
    ((EUID == 0)) || die "suite installs packages inside the root: run it as root"
    build
    mkdir -p -- "$ROOT$CHECKOUT"
    find "$ROOT$CHECKOUT" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf -- {} +
    tar -C "$REPO" -cf - --exclude=./.venv --exclude=./.git --exclude=__pycache__ \
        --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.hypothesis \
        . | tar -C "$ROOT$CHECKOUT" -xf -
    # shellcheck disable=SC2016 # expanded inside the root
    enter env HERALD_DEBIAN13=/ bash -c '
        set -e
        cd "$1"
        ./install.sh --dev
        .venv/bin/pytest "${@:2}"
        .venv/bin/ruff check .
        .venv/bin/ruff format --check .
        .venv/bin/mypy' bash "$CHECKOUT" "$@"
}

case "${1:-}" in
build) build ;;
run)
    shift
    enter "$@"
    ;;
suite)
    shift
    suite "$@"
    ;;
*)
    echo "usage: $0 build | run CMD... | suite [PYTEST ARGS...]" >&2
    exit 2
    ;;
esac
