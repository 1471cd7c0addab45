#!/usr/bin/env bash
# The integration tests start their own nats-server and redis-server; the Python SDK's tests run on
# Debian's grpcio/protobuf and regenerate its stubs with protoc; the bench smoke test drives load
# with h2load; the image test and the benches preload jemalloc. Install what is missing from Debian's
# packages (as root), or say which command would.
set -euo pipefail
export PATH="$PATH:/usr/sbin"
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v grpc_python_plugin >/dev/null 2>&1 || missing+=(protobuf-compiler-grpc)
# The image preloads jemalloc (scripts/image-rootfs.sh) and the benches run the kernel as the image does.
/usr/sbin/ldconfig -p | grep -q '^\slibjemalloc\.so\.2 ' || missing+=(libjemalloc2)
# protoc's well-known types (google/protobuf/*.proto), which the contracts import; a recommends of
# protobuf-compiler, so not there after an install without recommends.
[ -f /usr/include/google/protobuf/timestamp.proto ] || missing+=(libprotobuf-dev)
for module in grpc:python3-grpcio google.protobuf:python3-protobuf cryptography:python3-cryptography; do
  /usr/bin/python3 -c "import ${module%%:*}" >/dev/null 2>&1 || missing+=("${module#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} from Debian's packages" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "the tests need ${missing[*]}: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
