#!/usr/bin/env bash
# Builds the local control plane used by pqmpc's integration tests and demo:
# etcd, kube-apiserver, kube-controller-manager and helm, from the Go module proxy.
#
# Like controller-runtime's envtest, the binaries are cached outside the repository
# (default ~/.cache/pqmpc/control-plane/<k8s version>) and a second run is a no-op.
# Nothing here is ever shipped: a real cluster brings its own control plane.
#
# How: a throw-away Go module requires k8s.io/kubernetes and replaces every
# k8s.io/* staging module (which k8s.io/kubernetes requires at v0.0.0) with its
# published v0.Y.Z; the component-base version ldflags make the server report its
# real version (kubectl version, discovery) instead of v0.0.0-master.
set -euo pipefail

K8S_VERSION="${PQMPC_K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${PQMPC_ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${PQMPC_HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${PQMPC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pqmpc}"
OUT="${CACHE_ROOT}/control-plane/${K8S_VERSION}-etcd-${ETCD_VERSION}"

want=(etcd kube-apiserver kube-controller-manager helm)
missing=()
for b in "${want[@]}"; do [ -x "${OUT}/${b}" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "control plane ${K8S_VERSION} (etcd ${ETCD_VERSION}) already built in ${OUT}"
  exit 0
fi

command -v go >/dev/null || { echo "error: go is not on PATH; install Go >= 1.24 to build the local control plane" >&2; exit 2; }
mkdir -p "${OUT}"
work="$(mktemp -d "${CACHE_ROOT}/build.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
export GOFLAGS="-mod=mod -trimpath -buildvcs=false"
export CGO_ENABLED=0

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
staging_version="v0.${K8S_VERSION#v1.}"

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "${OUT}/kube-apiserver" ] || [ ! -x "${OUT}/kube-controller-manager" ]; then
  step "resolving k8s.io/kubernetes ${K8S_VERSION} (staging modules at ${staging_version})"
  mkdir -p "${work}/k8s"
  cd "${work}/k8s"
  go mod init pqmpc.local/controlplane >/dev/null 2>&1
  gomod="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  [ -f "${gomod}" ] || { echo "error: could not download k8s.io/kubernetes@${K8S_VERSION} from the module proxy" >&2; exit 1; }
  {
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    # every `k8s.io/x => ./staging/src/k8s.io/x` becomes `k8s.io/x => k8s.io/x vX`
    sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#replace \1 => \1 '"${staging_version}"'#p' "${gomod}"
  } >> go.mod
  printf 'package tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n\t_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"\n)\n' > tools.go
  go mod tidy >/dev/null
  commit="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/^[[:space:]]*"Hash": "\(.*\)",*$/\1/p' | head -c 40 || true)"
  ld="-s -w"
  ld+=" -X k8s.io/component-base/version.gitVersion=${K8S_VERSION}"
  ld+=" -X k8s.io/component-base/version.gitMajor=1"
  ld+=" -X k8s.io/component-base/version.gitMinor=${minor}"
  ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ld+=" -X k8s.io/component-base/version.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for b in kube-apiserver kube-controller-manager; do
    [ -x "${OUT}/${b}" ] && continue
    step "building ${b} ${K8S_VERSION} (a few minutes on 2 cores)"
    go build -ldflags "${ld}" -o "${work}/${b}" "k8s.io/kubernetes/cmd/${b}"
    mv "${work}/${b}" "${OUT}/${b}"
  done
fi

if [ ! -x "${OUT}/etcd" ]; then
  step "building etcd ${ETCD_VERSION}"
  mkdir -p "${work}/etcd-src"
  cd "${work}/etcd-src"
  go mod init pqmpc.local/etcd >/dev/null 2>&1
  echo "require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}" >> go.mod
  printf 'package tools\n\nimport _ "go.etcd.io/etcd/server/v3/etcdmain"\n' > tools.go
  go mod tidy >/dev/null
  go build -ldflags "-s -w" -o "${work}/etcd" go.etcd.io/etcd/server/v3
  mv "${work}/etcd" "${OUT}/etcd"
fi

if [ ! -x "${OUT}/helm" ]; then
  step "building helm ${HELM_VERSION}"
  GOBIN="${work}/bin" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  mv "${work}/bin/helm" "${OUT}/helm"
fi

step "control plane ready in ${OUT}"
"${OUT}/kube-apiserver" --version
"${OUT}/etcd" --version | sed -n 1p  # not head: it would SIGPIPE etcd under pipefail
"${OUT}/helm" version --short
