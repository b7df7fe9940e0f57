#!/usr/bin/env bash
# Build the operator image localhost/kiban-operator:dev from the Containerfile, with no registry:
#
#   hack/image/build.sh            base image (if its recipe changed) + operator image   (make image);
#                                  prints the image ID on stdout, everything else on stderr
#   hack/image/build.sh base       only the base image                                   (make image-base)
#   hack/image/build.sh podman ARG...   podman with this script's configuration (what the tests use)
#
# 1. apt-get installs podman, buildah, runc and mmdebstrap when one is missing (Debian 12).
# 2. mmdebstrap builds a minimal Debian bookworm root filesystem (python3.11, python3-venv,
#    ca-certificates, libstdc++6) into a tarball in the cache, keyed by a hash of its recipe;
#    `podman import` makes it localhost/kiban-base:bookworm-py311. A warm run skips both.
# 3. podman build --build-arg PYTHON_IMAGE=<that base> -f Containerfile (the Containerfile's own
#    default, the public python image pinned by tag, is what users build from).
#
# Podman's configuration lives in files this script writes under the cache (CONTAINERS_CONF,
# CONTAINERS_STORAGE_CONF); no global configuration is edited. Needs root: apt-get, mmdebstrap's
# root mode and rootful podman. See docs/image.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${KIBAN_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiban/image}"
# podman's runtime state belongs on a per-boot directory, not in the cache
RUNDIR="${KIBAN_IMAGE_RUNDIR:-/run/kiban-image}"
IMAGE="${KIBAN_IMAGE:-localhost/kiban-operator:dev}"
BASE_IMAGE="localhost/kiban-base:bookworm-py311"
BASE_KEY_LABEL="dev.kiban.base-recipe"
# The host's CA bundle, which RUN steps see in place of the base's: pip then trusts what the host
# trusts (this machine reaches PyPI through a TLS-intercepting proxy). Mounted, never in a layer.
HOST_CA_BUNDLE="${KIBAN_IMAGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
HOST_PACKAGES=(podman buildah runc mmdebstrap)
DEBIAN_MIRROR="${KIBAN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${KIBAN_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SCRIPT_START=${SECONDS}

log() { printf '[image %4ds] %s\n' "$((SECONDS - SCRIPT_START))" "$*" >&2; }
die() { printf 'hack/image/build.sh: %s\n' "$*" >&2; exit 1; }

# ---- host packages ------------------------------------------------------------------------

missing_packages() { # the HOST_PACKAGES dpkg does not list as installed, one per line
  local package
  for package in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f '${db:Status-Status}\n' "${package}" 2>/dev/null | grep -qx installed || echo "${package}"
  done
}

install_host_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "needs ${missing[*]} and there is no apt-get (Debian 12 expected)"
  log "installing ${missing[*]} from Debian's packages"
  local aptlog="${CACHE}/apt.log"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"${aptlog}" 2>&1; then
    log "apt-get install failed; refreshing the package lists and retrying"
    apt-get update >>"${aptlog}" 2>&1 || die "apt-get update failed: $(tail -3 "${aptlog}")"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"${aptlog}" 2>&1 \
      || die "apt-get install ${missing[*]} failed: $(tail -5 "${aptlog}")"
  fi
}

# ---- podman configuration, in the cache ---------------------------------------------------

write_podman_config() {
  mkdir -p "${CACHE}/storage" "${RUNDIR}"
  cat >"${CACHE}/containers.conf" <<EOF
# Written by hack/image/build.sh; podman reads it (CONTAINERS_CONF) for Kiban's image builds only.
[containers]
# podman's default ulimits (nofile=1048576) exceed this kind of machine's hard limit; keep the caller's
default_ulimits = []

[engine]
# Debian's runc: crun fails on hybrid cgroup v1 + v2 hosts like these machines
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${RUNDIR}/events.log"
tmp_dir = "${RUNDIR}/libpod"
EOF
  cat >"${CACHE}/storage.conf" <<EOF
# Written by hack/image/build.sh; podman reads it (CONTAINERS_STORAGE_CONF) for Kiban's image builds only.
[storage]
driver = "overlay"
graphroot = "${CACHE}/storage"
runroot = "${RUNDIR}/storage"
EOF
  export CONTAINERS_CONF="${CACHE}/containers.conf" CONTAINERS_STORAGE_CONF="${CACHE}/storage.conf"
}

# ---- base image ---------------------------------------------------------------------------

# mmdebstrap's arguments: the recipe of the base root filesystem, one per line (without the output
# path and mirrors, which follow). The essential variant has no apt and so no libstdc++, which
# manylinux wheels (numpy) expect of the system, as the public python image has it.
base_recipe() {
  printf '%s\n' \
    --mode=root --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3.11,python3,python3-venv,ca-certificates,libstdc++6 \
    '--dpkgopt=path-exclude=/usr/share/doc/*' '--dpkgopt=path-include=/usr/share/doc/*/copyright' \
    '--dpkgopt=path-exclude=/usr/share/man/*' '--dpkgopt=path-exclude=/usr/share/info/*' \
    '--dpkgopt=path-exclude=/usr/share/locale/*' '--dpkgopt=path-exclude=/usr/share/lintian/*' \
    bookworm
}

base_mirrors() {
  printf '%s\n' \
    "deb ${DEBIAN_MIRROR} bookworm main" \
    "deb ${DEBIAN_MIRROR} bookworm-updates main" \
    "deb ${DEBIAN_SECURITY_MIRROR} bookworm-security main"
}

# The base's cache key: its recipe, its mirrors and mmdebstrap's version. Packages move with
# Debian's point releases and security updates; KIBAN_IMAGE_BASE_REFRESH=1 rebuilds on purpose.
base_key() {
  { base_recipe; base_mirrors; mmdebstrap --version; } | sha256sum | cut -c1-16
}

base_image_key() { # the recipe key the imported base image carries, empty when there is none
  podman image inspect --format "{{ index .Labels \"${BASE_KEY_LABEL}\" }}" "${BASE_IMAGE}" 2>/dev/null || true
}

build_base_tarball() { # key -> the tarball path on stdout
  local key=$1 dir="${CACHE}/base"
  local tarball="${dir}/bookworm-py311-${key}.tar"
  if [[ -s "${tarball}" && -z "${KIBAN_IMAGE_BASE_REFRESH:-}" ]]; then
    echo "${tarball}"
    return 0
  fi
  mkdir -p "${dir}"
  local started=${SECONDS} staging="${dir}/.staging-${key}.tar" recipe mirrors
  mapfile -t recipe < <(base_recipe)
  mapfile -t mirrors < <(base_mirrors)
  log "base: mmdebstrap ${recipe[*]} (recipe ${key}; minutes)"
  rm -f "${staging}"
  mmdebstrap --quiet "${recipe[@]}" "${staging}" "${mirrors[@]}" >"${dir}/mmdebstrap.log" 2>&1 \
    || die "mmdebstrap failed (log ${dir}/mmdebstrap.log): $(tail -5 "${dir}/mmdebstrap.log")"
  find "${dir}" -maxdepth 1 -name 'bookworm-py311-*.tar' ! -name "$(basename "${tarball}")" -delete
  mv -f "${staging}" "${tarball}"
  log "base: root filesystem $(du -h "${tarball}" | cut -f1) in $((SECONDS - started))s"
  echo "${tarball}"
}

build_base() {
  local key
  key="$(base_key)"
  if [[ "$(base_image_key)" == "${key}" && -z "${KIBAN_IMAGE_BASE_REFRESH:-}" ]]; then
    log "base: ${BASE_IMAGE} is current (recipe ${key})"
    return 0
  fi
  local tarball
  tarball="$(build_base_tarball "${key}")"
  podman import --quiet \
    --change "LABEL ${BASE_KEY_LABEL}=${key}" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "mmdebstrap bookworm: python3.11, python3-venv, ca-certificates, libstdc++6 (recipe ${key})" \
    "${tarball}" "${BASE_IMAGE}" >/dev/null \
    || die "podman import ${tarball} ${BASE_IMAGE} failed"
  log "base: imported ${BASE_IMAGE} (recipe ${key})"
}

# ---- operator image -----------------------------------------------------------------------

ca_bundle_args() { # podman build arguments that let RUN steps trust the host's CA bundle, if it has one
  [[ -s "${HOST_CA_BUNDLE}" ]] || return 0
  printf '%s\n' --volume "${HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro" \
    --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
}

# Builds IMAGE and prints its ID on stdout (podman's own output goes to stderr): a caller that
# runs the ID runs what it built, even if another checkout moves the tag meanwhile.
build_operator_image() {
  local started=${SECONDS} ca_args iidfile id
  mapfile -t ca_args < <(ca_bundle_args)
  iidfile="$(mktemp "${RUNDIR}/iid.XXXXXX")"
  log "image: podman build ${IMAGE} from ${BASE_IMAGE}"
  podman build --pull=never --network=host --layers "${ca_args[@]}" \
    --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" --iidfile "${iidfile}" \
    --file "${REPO}/Containerfile" --tag "${IMAGE}" "${REPO}" >&2 \
    || die "podman build of ${IMAGE} failed (output above)"
  id="$(cat "${iidfile}")"
  rm -f "${iidfile}"
  log "image: ${IMAGE} built in $((SECONDS - started))s, $(podman image inspect --format '{{.Size}}' "${id}") bytes"
  echo "${id}"
}

main() {
  local command=${1:-all}
  [[ ${EUID} -eq 0 ]] || die "needs root (apt-get, mmdebstrap's root mode, rootful podman); running as uid ${EUID}"
  mkdir -p "${CACHE}"
  case "${command}" in
    podman)
      shift
      write_podman_config
      exec podman "$@"
      ;;
    base)
      install_host_packages
      write_podman_config
      build_base
      ;;
    all)
      install_host_packages
      write_podman_config
      build_base
      build_operator_image
      ;;
    *) die "unknown command ${command}; expected: all, base, podman ARG..." ;;
  esac
}

main "$@"
