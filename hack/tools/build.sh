#!/usr/bin/env bash
# Build the pinned control-plane tools into a cache outside the repository, keyed by version:
#   ${KIBAN_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiban/tools}/<tool>-<version>/bin/
# A tool whose binaries are already there is skipped before Go is invoked, so a warm run is instant.
# Versions come from hack/tools/versions.env (the one place they live); see hack/tools/README.md.
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${TOOLS_DIR}/versions.env"

CACHE="${KIBAN_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiban/tools}"
SCRIPT_START=${SECONDS}

log() { printf '[tools %4ds] %s\n' "$((SECONDS - SCRIPT_START))" "$*"; }
die() { printf 'hack/tools/build.sh: %s\n' "$*" >&2; exit 1; }

all_present() { # dir binary...
  local dir=$1; shift
  local name
  for name in "$@"; do [[ -x "${dir}/bin/${name}" ]] || return 1; done
}

check_pin() { # module-dir go-module version: versions.env and go.mod must agree
  local dir=$1 module=$2 version=$3
  grep -Eq "^(require )?[[:space:]]*${module//./\\.} ${version//./\\.}([[:space:]]|$)" "${TOOLS_DIR}/${dir}/go.mod" \
    || die "versions.env says ${module} ${version} but hack/tools/${dir}/go.mod pins something else"
}

# build_go <tool> <version> <module-dir> <binary-name>=<package>...
# GO_LDFLAGS_EXTRA (optional, set for one call) is added to the linker flags, e.g. a version stamp.
build_go() {
  local tool=$1 version=$2 moddir=$3; shift 3
  local dest="${CACHE}/${tool}-${version}"
  local names=() pkgs=() spec
  for spec in "$@"; do names+=("${spec%%=*}"); pkgs+=("${spec#*=}"); done
  if all_present "${dest}" "${names[@]}"; then
    log "${tool} ${version}: cached in ${dest}"
    return 0
  fi
  command -v go >/dev/null || die "go is not on PATH; install Go (see go.mod's go line) to build ${tool}"
  local started=${SECONDS} staging i
  staging="$(mktemp -d "${CACHE}/.${tool}-build.XXXXXX")"
  log "${tool} ${version}: building ${names[*]}"
  for i in "${!pkgs[@]}"; do
    (cd "${TOOLS_DIR}/${moddir}" && GOFLAGS="-mod=mod -buildvcs=false" \
      go build -trimpath -ldflags "-s -w ${GO_LDFLAGS_EXTRA:-}" -o "${staging}/${names[$i]}" "${pkgs[$i]}")
    log "${tool} ${version}: built ${names[$i]} ($((SECONDS - started))s so far)"
  done
  mkdir -p "${dest}/bin"
  for i in "${!names[@]}"; do mv -f "${staging}/${names[$i]}" "${dest}/bin/${names[$i]}"; done
  rm -rf "${staging}"
  log "${tool} ${version}: done in $((SECONDS - started))s"
}

# kwok needs Stage objects to move nodes and pods through their lifecycle; kwokctl embeds the
# upstream "fast" stages. We take the same files from the pinned module, never a copy in the repo.
install_kwok_stages() {
  local dest="${CACHE}/kwok-${KWOK_VERSION}/stages/default.yaml"
  [[ -s "${dest}" ]] && return 0
  local moddir staging
  moddir="$(cd "${TOOLS_DIR}/kwok" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  mkdir -p "$(dirname "${dest}")"
  staging="$(mktemp "${dest}.XXXXXX")"
  local f
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f "${moddir}/kustomize/stage/${f}" ]] || die "kwok ${KWOK_VERSION} has no kustomize/stage/${f}"
    printf -- '---\n' >>"${staging}"
    cat "${moddir}/kustomize/stage/${f}" >>"${staging}"
  done
  mv -f "${staging}" "${dest}"
  log "kwok ${KWOK_VERSION}: wrote default stages to ${dest}"
}

# The Gateway API Inference Extension's InferencePool CRD: the module is downloaded through the Go
# module proxy into the module cache (checked against go.sum), and its directory recorded, so the
# tests copy the CRD YAML out of the module itself; nothing of it is committed or built.
GAIE_CRD=config/crd/bases/inference.networking.k8s.io_inferencepools.yaml
fetch_gaie() {
  local dest="${CACHE}/gaie-${GAIE_VERSION}"
  if [[ -s "${dest}/module-dir" && -f "$(cat "${dest}/module-dir")/${GAIE_CRD}" ]]; then
    log "gateway-api-inference-extension ${GAIE_VERSION}: cached in $(cat "${dest}/module-dir")"
    return 0
  fi
  command -v go >/dev/null || die "go is not on PATH; install Go (see go.mod's go line) to fetch the InferencePool CRD"
  check_pin gaie sigs.k8s.io/gateway-api-inference-extension "${GAIE_VERSION}"
  local moddir
  (cd "${TOOLS_DIR}/gaie" && GOFLAGS=-mod=mod go mod download sigs.k8s.io/gateway-api-inference-extension)
  moddir="$(cd "${TOOLS_DIR}/gaie" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api-inference-extension)"
  [[ -f "${moddir}/${GAIE_CRD}" ]] || die "gateway-api-inference-extension ${GAIE_VERSION} has no ${GAIE_CRD}"
  mkdir -p "${dest}"
  printf '%s\n' "${moddir}" >"${dest}/module-dir"
  log "gateway-api-inference-extension ${GAIE_VERSION}: module at ${moddir}"
}

# copy_module_files <module-dir> <go-module> <dest-dir> <path-in-module>...: files out of a pinned
# module (the LeaderWorkerSet CRDs), never a copy in the repository; skipped when dest has files.
copy_module_files() {
  local moddir=$1 module=$2 dest=$3; shift 3
  [[ -n "$(ls -A "${dest}" 2>/dev/null)" ]] && return 0
  local src staging f
  src="$(cd "${TOOLS_DIR}/${moddir}" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "${module}")"
  staging="$(mktemp -d "${CACHE}/.${moddir}-files.XXXXXX")"
  chmod 0755 "${staging}"
  for f in "$@"; do
    [[ -f "${src}/${f}" ]] || die "${module} has no ${f}"
    install -m 0644 "${src}/${f}" "${staging}/$(basename "${f}")"
  done
  mkdir -p "$(dirname "${dest}")"
  rm -rf "${dest}"
  mv "${staging}" "${dest}"
  log "${module}: copied $# files to ${dest}"
}

# LeaderWorkerSet: the controller manager (with its webhooks), the two CRDs it needs (v0.9.0
# starts a DisaggregatedSet controller too and exits when that CRD is missing) and the webhook
# configurations controller-gen wrote for them (kiban_dev.devcluster.leaderworkerset points them
# at 127.0.0.1).
build_lws() {
  GO_LDFLAGS_EXTRA="-X sigs.k8s.io/lws/pkg/version.GitVersion=${LWS_VERSION}" \
    build_go lws "${LWS_VERSION}" lws lws-controller=sigs.k8s.io/lws/cmd
  copy_module_files lws sigs.k8s.io/lws "${CACHE}/lws-${LWS_VERSION}/crds" \
    config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml \
    config/crd/bases/disaggregatedset.x-k8s.io_disaggregatedsets.yaml
  copy_module_files lws sigs.k8s.io/lws "${CACHE}/lws-${LWS_VERSION}/webhook" config/webhook/manifests.yaml
}

# Prometheus from Debian: a distribution-maintained, signed build of a pinned version.
install_prometheus() {
  local version=${PROMETHEUS_DEB_VERSION}
  local dest="${CACHE}/prometheus-${version}"
  if all_present "${dest}" prometheus promtool; then
    log "prometheus ${version}: cached in ${dest}"
    return 0
  fi
  local started=${SECONDS} tmp
  tmp="$(mktemp -d)"
  log "prometheus ${version}: downloading the Debian package"
  if ! (cd "${tmp}" && apt-get download "prometheus=${version}" >"${tmp}/apt.log" 2>&1); then
    log "prometheus ${version}: download failed; refreshing apt lists and retrying"
    apt-get update >"${tmp}/apt-update.log" 2>&1 || die "apt-get update failed: $(tail -3 "${tmp}/apt-update.log")"
    (cd "${tmp}" && apt-get download "prometheus=${version}") \
      || die "apt-get download prometheus=${version} failed (is this a Debian bookworm machine?)"
  fi
  dpkg -x "${tmp}"/prometheus_*.deb "${tmp}/root"
  mkdir -p "${dest}/bin"
  install -m 0755 "${tmp}/root/usr/bin/prometheus" "${tmp}/root/usr/bin/promtool" "${dest}/bin/"
  rm -rf "${tmp}"
  "${dest}/bin/prometheus" --version 2>&1 | head -1 | sed 's/^/    /'
  log "prometheus ${version}: done in $((SECONDS - started))s"
}

main() {
  mkdir -p "${CACHE}"
  log "cache: ${CACHE}"
  if ! all_present "${CACHE}/kubernetes-${KUBERNETES_VERSION}" kube-apiserver kube-controller-manager kube-scheduler kubectl \
    || ! all_present "${CACHE}/kwok-${KWOK_VERSION}" kwok || [[ ! -s "${CACHE}/kwok-${KWOK_VERSION}/stages/default.yaml" ]] \
    || ! all_present "${CACHE}/helm-${HELM_VERSION}" helm || ! all_present "${CACHE}/etcd-${ETCD_VERSION}" etcd \
    || ! all_present "${CACHE}/lws-${LWS_VERSION}" lws-controller || [[ ! -s "${CACHE}/lws-${LWS_VERSION}/webhook/manifests.yaml" ]] \
    || [[ -z "$(ls -A "${CACHE}/lws-${LWS_VERSION}/crds" 2>/dev/null)" ]]; then
    check_pin kubernetes k8s.io/kubernetes "${KUBERNETES_VERSION}"
    check_pin kwok sigs.k8s.io/kwok "${KWOK_VERSION}"
    check_pin helm helm.sh/helm/v3 "${HELM_VERSION}"
    check_pin etcd go.etcd.io/etcd/server/v3 "${ETCD_VERSION}"
    check_pin lws sigs.k8s.io/lws "${LWS_VERSION}"
  fi
  build_go etcd "${ETCD_VERSION}" etcd etcd=go.etcd.io/etcd/server/v3
  build_go kubernetes "${KUBERNETES_VERSION}" kubernetes \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kubectl=k8s.io/kubernetes/cmd/kubectl
  build_go kwok "${KWOK_VERSION}" kwok kwok=sigs.k8s.io/kwok/cmd/kwok
  install_kwok_stages
  build_go helm "${HELM_VERSION}" helm helm=helm.sh/helm/v3/cmd/helm
  build_lws
  install_prometheus
  fetch_gaie
  log "all tools ready"
}

main "$@"
