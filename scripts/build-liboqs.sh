#!/usr/bin/env bash
# Builds the liboqs shared library that the optional liboqs backend
# (node/pqmpc_node/crypto/backends.py, OqsBackend) loads, so that the test suite runs
# that backend for real (tests/crypto/test_liboqs_backend.py).
#
# Like the control plane, it is cached outside the repository (default
# ~/.cache/pqmpc/liboqs-<version>) and a second run is a no-op. Nothing here is
# shipped: the image builds its own liboqs (Dockerfile, WITH_OQS=true).
#
# Where the source comes from: CI reaches package registries only, not GitHub. The
# newest liboqs source that a registry carries is the tree vendored, unchanged, by
# the Open Quantum Safe project's own Rust crate oqs-sys (crates.io), pinned here by
# version and sha256. It is fetched with cargo itself (into a throw-away CARGO_HOME).
#
# One backport: liboqs-python (PyPI has only 0.16.x) binds OQS_SIG_supports_ctx_str
# when it is imported; liboqs added that function in 0.14. The structs and every other
# function liboqs-python calls are the same in 0.13, so the build appends that one
# function, written as upstream has it, to src/sig/sig.c.
#
# Portable C only (OQS_OPT_TARGET=generic): liboqs 0.13's AVX2 ML-DSA-65 accepts signatures
# whose z breaks the infinity-norm bound (41 Wycheproof mldsa_65_verify cases, tcId 84-139)
# and rejects one valid boundary signature (tcId 161); the portable code passes all 210.
# The image builds liboqs 0.16 (Dockerfile), not this one.
#
# Needs: cargo, cmake (>= 3.18), a C compiler; ninja if present.
set -euo pipefail

LIBOQS_VERSION="0.13.0"
CRATE="oqs-sys"
CRATE_VERSION="0.11.0+liboqs-${LIBOQS_VERSION}"
CRATE_SHA256="ac6d66ee528a895ce5cc08851698d109c5d7ee5d7a0b3b40d61550eda91e414f"
# Exactly what OqsBackend maps (ML-KEM-768/1024, ML-DSA-44/65/87); the Dockerfile builds the same set.
ALGORITHMS="KEM_ml_kem_768;KEM_ml_kem_1024;SIG_ml_dsa_44;SIG_ml_dsa_65;SIG_ml_dsa_87"
CACHE_ROOT="${PQMPC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pqmpc}"
OUT="${CACHE_ROOT}/liboqs-${LIBOQS_VERSION}"

if [ -f "${OUT}/lib/liboqs.so" ]; then
  echo "liboqs ${LIBOQS_VERSION} already built in ${OUT}"
  exit 0
fi

for tool in cargo cmake cc; do
  command -v "${tool}" >/dev/null || {
    echo "error: ${tool} is not on PATH; the liboqs build needs cargo (to fetch the source), cmake and a C compiler" >&2
    exit 2
  }
done

mkdir -p "${CACHE_ROOT}"
work="$(mktemp -d "${CACHE_ROOT}/build-liboqs.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
step() { printf '\n==> %s\n' "$*"; }
start=${SECONDS}

step "fetching ${CRATE} ${CRATE_VERSION} (liboqs ${LIBOQS_VERSION} source) with cargo"
# `cargo info` downloads the .crate to read its manifest; a private CARGO_HOME makes
# its location certain and leaves the user's cargo cache alone.
(cd "${work}" && CARGO_HOME="${work}/cargo" cargo info --quiet "${CRATE}@${CRATE_VERSION}" >/dev/null)
crate_file="$(find "${work}/cargo/registry/cache" -name "${CRATE}-${CRATE_VERSION}.crate" -print -quit)"
[ -n "${crate_file}" ] || { echo "error: cargo did not download ${CRATE}-${CRATE_VERSION}.crate" >&2; exit 1; }
echo "${CRATE_SHA256}  ${crate_file}" | sha256sum -c --quiet - \
  || { echo "error: ${crate_file} does not have the pinned sha256 ${CRATE_SHA256}" >&2; exit 1; }
tar xzf "${crate_file}" -C "${work}"
src="${work}/${CRATE}-${CRATE_VERSION}/liboqs"
grep -q "set(OQS_VERSION_MINOR $(cut -d. -f2 <<<"${LIBOQS_VERSION}"))" "${src}/CMakeLists.txt" \
  || { echo "error: ${src} is not liboqs ${LIBOQS_VERSION}" >&2; exit 1; }

step "backporting OQS_SIG_supports_ctx_str (liboqs 0.14) for liboqs-python 0.16"
grep -q "OQS_SIG_supports_ctx_str" "${src}/src/sig/sig.c" || cat >> "${src}/src/sig/sig.c" <<'EOF'

/* Backported from liboqs 0.14 by pqmpc's scripts/build-liboqs.sh: liboqs-python 0.16 binds it on import. */
OQS_API bool OQS_SIG_supports_ctx_str(const char *method_name);
OQS_API bool OQS_SIG_supports_ctx_str(const char *method_name) {
	OQS_SIG *sig = OQS_SIG_new(method_name);
	bool supported = sig != NULL && sig->sig_with_ctx_support;
	OQS_SIG_free(sig);
	return supported;
}
EOF

step "building liboqs ${LIBOQS_VERSION} (${ALGORITHMS})"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "${src}" -B "${work}/out" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="${work}/install" \
  -DCMAKE_INSTALL_LIBDIR=lib \
  -DBUILD_SHARED_LIBS=ON \
  -DOQS_BUILD_ONLY_LIB=ON \
  -DOQS_DIST_BUILD=OFF -DOQS_OPT_TARGET=generic \
  -DOQS_USE_OPENSSL=OFF \
  -DOQS_MINIMAL_BUILD="${ALGORITHMS}" >/dev/null
cmake --build "${work}/out" --parallel "$(nproc)"
cmake --install "${work}/out" >/dev/null
# grep -c, not -q: -q would stop reading early and fail nm with SIGPIPE under pipefail.
nm -D --defined-only "${work}/install/lib/liboqs.so" | grep -c " OQS_SIG_supports_ctx_str$" >/dev/null \
  || { echo "error: the built liboqs.so lacks OQS_SIG_supports_ctx_str" >&2; exit 1; }

rm -rf "${OUT}"
mv "${work}/install" "${OUT}"
step "liboqs ${LIBOQS_VERSION} ready in ${OUT} ($((SECONDS - start)) s)"
