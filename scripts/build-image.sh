#!/usr/bin/env bash
# Builds the pqmpc image for real, without Docker: the Dockerfile's runtime stage (CPU
# variant, no liboqs) made from Debian packages, written as an OCI image layout.
#
#   build/image/pqmpc            OCI image layout, tag <version> (skopeo/podman read it)
#   build/image/pqmpc.digest     the manifest digest (sha256:...)
#
# Why not the Dockerfile: its base (python:3.11-slim-bookworm) lives in a container
# registry, and this project may only reach package registries (Debian, PyPI, ...). So:
#
#   1. base layer   mmdebstrap: a minimal Debian bookworm rootfs with python3.11 and
#                   python3.11-venv (the same Debian release as the Dockerfile's base).
#                   Cached as a tarball under ~/.cache/pqmpc/image/ (keyed by this
#                   recipe), so a rerun does not debootstrap again.
#   2. wheels       the project's wheel, built from exactly what the Dockerfile COPYs,
#                   and its dependencies at the pins in constraints.txt, downloaded on
#                   this host for the image's Python (cp311, glibc 2.36). Cached.
#   3. app layer    in the rootfs (bubblewrap sandbox, no network): a venv at /opt/pqmpc,
#                   `pip install --no-index -c constraints.txt pqmpc-<v>.whl`, the
#                   build stage's smoke test `pqmpc-operator --help`, the user 10001.
#   4. OCI layout   umoci (opencontainers/umoci, from Debian) writes the two gzip layers,
#                   the config (User, Cmd, Env, WorkingDir, ExposedPorts, Labels, as in
#                   the Dockerfile), the manifest and index, all by sha256 digest; skopeo
#                   then reads the layout back, as a registry push would.
#
# Inputs are hashed: when nothing changed (base, pins, the wheel's bytes, this script) the
# build is a no-op that prints the existing digest. Needs root (mmdebstrap's root mode,
# real file owners in the layers, chown to the pqmpc user); installs its Debian tools
# (mmdebstrap umoci bubblewrap skopeo, Debian's archive keyring) with apt-get when they
# are missing. Exit status 3 means "this machine cannot build it" (not root, no apt,
# unsupported architecture, no namespaces for bubblewrap); tests/image turn that into a
# skip with the message. Concurrent builds are safe: cache entries are written aside and
# moved into place, and one build at a time holds the output folder.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE=bookworm
PY_TAG=3.11          # Debian bookworm's python3 (the Dockerfile's base is python 3.11 too)
GLIBC_MINOR=36       # bookworm's glibc 2.36: manylinux wheels up to manylinux_2_36 fit
MIRROR="${PQMPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${PQMPC_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
HOST_PYTHON="${PYTHON:-python3}"   # any Python with pip: builds the wheel, downloads the pins
CACHE_ROOT="${PQMPC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pqmpc}/image"
OUT="${PQMPC_IMAGE_DIR:-${REPO}/build/image}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "${REPO}/pyproject.toml" | head -n1)"
LAYOUT="${OUT}/pqmpc"
IMAGE="${LAYOUT}:${VERSION}"
# What the Dockerfile's build stage COPYs (tests/image/test_dockerfile.py checks that
# list against the wheel's needs); the wheel is built from these and nothing else.
CONTEXT_PATHS=(pyproject.toml constraints.txt README.md crds operator node)
# The image's user and runtime settings: the Dockerfile's runtime stage, spelled out for
# umoci (tests/image/test_image_oci.py checks the written config against the Dockerfile).
UID_GID=10001
WORKDIR=/var/lib/pqmpc
ENVS=(
  "PATH=/opt/pqmpc/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  "PYTHONDONTWRITEBYTECODE=1"
  "PYTHONUNBUFFERED=1"
  "OQS_INSTALL_PATH=/opt/liboqs"
  "LD_LIBRARY_PATH=/opt/liboqs/lib"
  "LANG=C.UTF-8"
)
LABELS=(
  "org.opencontainers.image.title=pqmpc"
  "org.opencontainers.image.description=Post-quantum secure multi-party computation: operator and node"
  "org.opencontainers.image.source=https://github.com/pqmpc/pqmpc"
  "org.opencontainers.image.licenses=Apache-2.0"
  "org.opencontainers.image.version=${VERSION}"
  "io.pqmpc.variant=cpu"
  "io.pqmpc.liboqs=false"
)
PORTS=(8080/tcp 9090/tcp 8443/tcp 9443/tcp)
TOOLS=(mmdebstrap umoci bwrap skopeo)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

cannot() { echo "build-image: cannot build here: $*" >&2; exit 3; }
step() { printf '==> %s\n' "$*"; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }
sha() { sha256sum | cut -c1-16; }

# ---------------------------------------------------------------------------------------
# Preconditions: root, the Debian tools, a known architecture.
[ "$(id -u)" = 0 ] || cannot "needs root (mmdebstrap root mode, file owners in the layers); running as uid $(id -u)"
missing=()
for t in "${TOOLS[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
[ -f "${KEYRING}" ] || missing+=("${KEYRING}")
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || cannot "missing ${missing[*]} and no apt-get to install them"
  step "installing mmdebstrap umoci bubblewrap skopeo debian-archive-keyring (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    mmdebstrap umoci bubblewrap skopeo debian-archive-keyring >/dev/null
fi
# The sandbox the app layer is built in (and mmdebstrap's chroot) need mount and pid
# namespaces; a container without them cannot build the image.
if ! probe="$(bwrap --bind / / --dev /dev --proc /proc --unshare-pid --unshare-net true 2>&1)"; then
  cannot "bubblewrap cannot create namespaces here: ${probe}"
fi
DEB_ARCH="$(dpkg --print-architecture 2>/dev/null || true)"
case "${DEB_ARCH}" in
  amd64) WHEEL_ARCH=x86_64 ;;
  arm64) WHEEL_ARCH=aarch64 ;;
  *) cannot "unsupported architecture '${DEB_ARCH}' (amd64 or arm64)" ;;
esac
"${HOST_PYTHON}" -m pip --version >/dev/null 2>&1 || cannot "${HOST_PYTHON} has no pip (set PYTHON=...)"

mkdir -p "${OUT}" "${CACHE_ROOT}"
exec 9>"${OUT}/.lock"
flock 9   # one build per output folder at a time (make image and the test may race)
started=$(date +%s)

# ---------------------------------------------------------------------------------------
# 1. Base rootfs (cached). path-exclude drops docs, man pages and locales like Debian's
# slim images do; copyright files stay. The host's resolv.conf/hostname are not shipped.
BASE_PACKAGES=python${PY_TAG},python${PY_TAG}-venv,ca-certificates
BASE_RECIPE="${SUITE} ${DEB_ARCH} minbase ${BASE_PACKAGES} ${MIRROR} ${SECURITY_MIRROR} v1"
BASE_TAR="${CACHE_ROOT}/base-${SUITE}-${DEB_ARCH}-$(echo "${BASE_RECIPE}" | sha).tar"
if [ ! -f "${BASE_TAR}" ] || [ -n "${PQMPC_IMAGE_REFRESH:-}" ]; then
  t=$(date +%s)
  tmp="${BASE_TAR}.tmp.$$"
  trap 'rm -f "${tmp}" "${tmp}.packages"' EXIT
  step "mmdebstrap ${SUITE} (${DEB_ARCH}, minbase + ${BASE_PACKAGES}) -> ${BASE_TAR}"
  mmdebstrap --quiet --variant=minbase --architectures="${DEB_ARCH}" \
    --include="${BASE_PACKAGES}" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
    --customize-hook="chroot \"\$1\" dpkg-query -W -f='\${Package} \${Version}\n' > '${tmp}.packages'" \
    --skip=output/dev --format=tar \
    "${SUITE}" "${tmp}" \
    "deb ${MIRROR} ${SUITE} main" \
    "deb ${MIRROR} ${SUITE}-updates main" \
    "deb ${SECURITY_MIRROR} ${SUITE}-security main" </dev/null
  mv "${tmp}.packages" "${BASE_TAR}.packages"
  mv "${tmp}" "${BASE_TAR}"
  trap - EXIT
  echo "    base built in $(elapsed "$t")"
else
  step "base rootfs cached: ${BASE_TAR}"
fi

# ---------------------------------------------------------------------------------------
# 2. The project's wheel (from the Dockerfile's context only) and the pinned wheels.
context="${OUT}/context"
rm -rf "${context}" "${OUT}/dist"
mkdir -p "${context}" "${OUT}/dist"
for p in "${CONTEXT_PATHS[@]}"; do cp -r "${REPO}/${p}" "${context}/"; done
find "${context}" \( -name __pycache__ -o -name '*.pyc' -o -name .mypy_cache \) -prune -exec rm -rf {} +
"${HOST_PYTHON}" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "${OUT}/dist" "${context}"
WHEEL="$(cd "${OUT}/dist" && ls pqmpc-"${VERSION}"-*.whl)"

platforms=()
for y in $(seq "${GLIBC_MINOR}" -1 17); do platforms+=(--platform "manylinux_2_${y}_${WHEEL_ARCH}"); done
platforms+=(--platform "manylinux2014_${WHEEL_ARCH}" --platform "manylinux1_${WHEEL_ARCH}")
DEPS_KEY="$(cat "${REPO}/constraints.txt" "${REPO}/pyproject.toml" | sha)"
WHEELS="${CACHE_ROOT}/wheels-cp${PY_TAG/./}-${WHEEL_ARCH}-${DEPS_KEY}"
if [ ! -f "${WHEELS}/.complete" ]; then
  t=$(date +%s)
  step "downloading the pinned dependencies (cp${PY_TAG/./}, manylinux <= 2.${GLIBC_MINOR}, ${WHEEL_ARCH})"
  tmp="${WHEELS}.tmp.$$"
  trap 'rm -rf "${tmp}"' EXIT
  PIP_FIND_LINKS="" "${HOST_PYTHON}" -m pip download --quiet --disable-pip-version-check \
    --dest "${tmp}" --only-binary=:all: \
    --python-version "${PY_TAG}" --implementation cp --abi "cp${PY_TAG/./}" --abi abi3 --abi none \
    "${platforms[@]}" -c "${REPO}/constraints.txt" "${OUT}/dist/${WHEEL}"
  rm -f "${tmp}"/pqmpc-*.whl
  touch "${tmp}/.complete"
  rm -rf "${WHEELS}"
  mv -T "${tmp}" "${WHEELS}"
  trap - EXIT
  echo "    wheels downloaded in $(elapsed "$t")"
else
  step "pinned wheels cached: ${WHEELS}"
fi

# Contents only (the key must not depend on how the script was called): the base's package
# versions (a refreshed base with new security updates is a new input), the pins' cache,
# the project's wheel (hatchling builds it reproducibly) and this script.
INPUTS="$( { echo "${WHEELS##*/}"; cat "${BASE_TAR}.packages" "${OUT}/dist/${WHEEL}" "${BASH_SOURCE[0]}"; } | sha)"
if [ -f "${OUT}/.inputs" ] && [ "$(cat "${OUT}/.inputs")" = "${INPUTS}" ] && [ -f "${OUT}/pqmpc.digest" ] \
   && skopeo inspect --raw "oci:${IMAGE}" >/dev/null 2>&1; then
  step "image up to date (inputs ${INPUTS})"
  echo "image  oci:${IMAGE}"
  echo "digest $(cat "${OUT}/pqmpc.digest")"
  exit 0
fi
rm -f "${OUT}/.inputs" "${OUT}/pqmpc.digest"

# ---------------------------------------------------------------------------------------
# 3. Layers. umoci unpack gives an empty bundle; repack records what changed as a layer.
t=$(date +%s)
bundle="${OUT}/bundle"
rm -rf "${LAYOUT}" "${bundle}"
umoci init --layout "${LAYOUT}"
umoci new --image "${IMAGE}"
umoci unpack --image "${IMAGE}" "${bundle}" >/dev/null
rootfs="${bundle}/rootfs"
step "base layer (Debian ${SUITE} from ${BASE_TAR##*/})"
tar -xpf "${BASE_TAR}" -C "${rootfs}" --numeric-owner
mkdir -p -m 0755 "${rootfs}/dev"
umoci repack --refresh-bundle --image "${IMAGE}" \
  --history.created_by "mmdebstrap --variant=minbase --include=${BASE_PACKAGES} ${SUITE}" \
  --history.comment "Debian ${SUITE} base with Python ${PY_TAG}" "${bundle}"

step "app layer (venv /opt/pqmpc from ${WHEEL}, user ${UID_GID})"
# The Dockerfile's build stage and runtime user, run in the rootfs with no network: pip
# sees only the wheels downloaded above. SOURCE_DATE_EPOCH makes pip's .pyc files
# hash-checked instead of timestamped.
install_script='set -eu
python3 -m venv /opt/pqmpc
/opt/pqmpc/bin/pip install --quiet --no-index --find-links /tmp/wheels -c /tmp/context/constraints.txt "/tmp/dist/$1"
/opt/pqmpc/bin/pqmpc-operator --help >/dev/null
mkdir -p /opt/liboqs/lib
groupadd --system --gid "$2" pqmpc
useradd --system --uid "$2" --gid "$2" --home-dir "$3" --create-home --shell /usr/sbin/nologin pqmpc'
bwrap --bind "${rootfs}" / --dev /dev --proc /proc --tmpfs /tmp \
  --ro-bind "${context}" /tmp/context --ro-bind "${OUT}/dist" /tmp/dist --ro-bind "${WHEELS}" /tmp/wheels \
  --unshare-pid --unshare-ipc --unshare-net --unshare-uts --die-with-parent \
  --clearenv --setenv PATH /usr/sbin:/usr/bin:/sbin:/bin --setenv HOME /root --setenv LANG C.UTF-8 \
  --setenv PIP_NO_CACHE_DIR 1 --setenv PIP_DISABLE_PIP_VERSION_CHECK 1 --setenv SOURCE_DATE_EPOCH "$(date +%s)" \
  /bin/sh -c "${install_script}" install "${WHEEL}" "${UID_GID}" "${WORKDIR}"
rm -rf "${rootfs}/root/.cache"
umoci repack --image "${IMAGE}" \
  --history.created_by "pip install --no-index -c constraints.txt ${WHEEL}; useradd --uid ${UID_GID} pqmpc" \
  --history.comment "pqmpc ${VERSION} in /opt/pqmpc" "${bundle}"

config_args=(--config.user "${UID_GID}:${UID_GID}" --config.workingdir "${WORKDIR}" --config.cmd pqmpc-operator)
for e in "${ENVS[@]}"; do config_args+=(--config.env "$e"); done
for l in "${LABELS[@]}"; do config_args+=(--config.label "$l"); done
for p in "${PORTS[@]}"; do config_args+=(--config.exposedports "$p"); done
umoci config --image "${IMAGE}" "${config_args[@]}" \
  --history.created_by "USER ${UID_GID}:${UID_GID}; WORKDIR ${WORKDIR}; CMD [\"pqmpc-operator\"]"
umoci gc --layout "${LAYOUT}"
rm -rf "${bundle}"
chmod -R a+rX "${LAYOUT}"   # umoci writes blobs 0600; let a non-root skopeo/podman read them
echo "    layers and layout written in $(elapsed "$t")"

# ---------------------------------------------------------------------------------------
# 4. Read it back with skopeo (what a push does) and report.
digest="$(skopeo inspect --format '{{.Digest}}' "oci:${IMAGE}")"
echo "${digest}" > "${OUT}/pqmpc.digest"
echo "${INPUTS}" > "${OUT}/.inputs"
"${HOST_PYTHON}" - "${LAYOUT}" "${digest}" <<'EOF'
import json, sys
from pathlib import Path
layout, digest = Path(sys.argv[1]), sys.argv[2]
blob = lambda d: layout / "blobs" / d.replace(":", "/")
manifest = json.loads(blob(digest).read_text())
sizes = [manifest["config"]["size"]] + [layer["size"] for layer in manifest["layers"]]
layers = ", ".join(f"{layer['size'] / 2**20:.1f}" for layer in manifest["layers"])
print(f"size   {sum(sizes) / 2**20:.1f} MiB compressed (layers {layers} MiB)")
EOF
echo "image  oci:${IMAGE}"
echo "digest ${digest}"
echo "built in $(elapsed "${started}")"
