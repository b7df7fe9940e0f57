#!/usr/bin/env bash
# End-to-end tests against kind, for machines with Docker (the project's own machines have none and
# use the local control plane instead). Needs: docker, kind v0.33.x, kubectl, the repo's .venv.
# KEEP_CLUSTER=1 leaves the cluster up afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER=kiban
PY="${ROOT}/.venv/bin/python"
KUBECONFIG_PATH="$(mktemp -t kiban-kind-kubeconfig.XXXXXX)"

for cmd in docker kind kubectl; do
  command -v "${cmd}" >/dev/null || { echo "hack/kind/e2e.sh: ${cmd} is not on PATH" >&2; exit 1; }
done

cleanup() {
  if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then kind delete cluster --name "${CLUSTER}" || true; fi
  rm -f "${KUBECONFIG_PATH}"
}
trap cleanup EXIT

kind create cluster --config "${ROOT}/hack/kind/kind-config.yaml" --kubeconfig "${KUBECONFIG_PATH}" --wait 120s
export KUBECONFIG="${KUBECONFIG_PATH}"

# Give the workers the labels, taints and nvidia.com capacities of the simulated node kinds.
mapfile -t workers < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name | sed 's|^node/||' | sort)
[[ ${#workers[@]} -eq 4 ]] || { echo "expected 4 kind workers, found ${#workers[@]}" >&2; exit 1; }
"${PY}" -m kiban_dev.devcluster.kind_nodes \
  "${workers[0]}=h100" "${workers[1]}=l4" "${workers[2]}=a100-mig" "${workers[3]}=cpu"
kubectl get nodes -L nvidia.com/gpu.product,kiban.dev/node-kind

KIBAN_KUBECONFIG="${KUBECONFIG_PATH}" "${PY}" -m pytest "${ROOT}/tests/e2e" "$@"
