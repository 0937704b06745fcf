#!/usr/bin/env bash
# Installs Prometheus and promtool from Debian's `prometheus` package (tests: promtool
# check/test rules, the end-to-end scrape; demo: the Prometheus server).
# Idempotent: does nothing when promtool is already on PATH.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  echo "promtool already installed: $(command -v promtool)"
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || {
  echo "error: promtool is not on PATH and apt-get is not available; install Prometheus (promtool) >= 2.42 yourself" >&2
  exit 2
}
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: installing the prometheus package needs root (or sudo)" >&2; exit 2; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends: promtool and the server, not the exporters and web assets' extras.
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# Debian's package starts a system service where systemd runs; the tests start their own.
command -v promtool >/dev/null 2>&1 || { echo "error: prometheus installed but promtool is not on PATH" >&2; exit 1; }
echo "promtool installed: $(promtool --version 2>&1 | head -n 1)"
