# Kubernetes tooling for build-support/k8s-try (sourced by it, not by lib.sh):
# builds, once, into "$CACHE_DIR/k8s/bin" the binaries of a local control plane
# run by kwok's binary runtime, from sources the Go module proxy and Debian serve:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#               k8s.io/kubernetes $K8S_VERSION. Its go.mod points the k8s.io/*
#               libraries at ./staging/..., which the module zip does not hold (a
#               directory with its own go.mod is a separate module), so a copy of
#               the module gets those replaces rewritten to the published modules
#               (k8s.io/api etc. at $K8S_LIBS_VERSION, the same code tagged from staging).
#   kwokctl, kwok  sigs.k8s.io/kwok $KWOK_VERSION (go install; its go.mod has no replaces).
#   etcd        Debian's etcd-server package (/usr/bin/etcd), installed with apt.
# A stamp (bin/versions) records what was built; a run whose binaries and stamp
# match builds nothing.

K8S_VERSION="v1.34.4"
K8S_LIBS_VERSION="v0.34.4"
KWOK_VERSION="v0.8.0"
K8S_DIR="$CACHE_DIR/k8s"
K8S_BIN="$K8S_DIR/bin"
K8S_LOGS="$K8S_DIR/logs"
K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ETCD_BIN="/usr/bin/etcd"

# Go settings for the builds: two cores, one of them often busy with something
# else; -p bounds the packages compiled at once (and so the memory).
k8s_go_env() {
  export GOWORK=off GOFLAGS=-mod=mod GOMAXPROCS="${GOMAXPROCS:-2}" CGO_ENABLED=0
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
}

# k8s_stamp: what the binaries in $K8S_BIN must have been built from.
k8s_stamp() {
  printf 'kubernetes %s (k8s.io/* libraries %s)\nkwok %s\n' "$K8S_VERSION" "$K8S_LIBS_VERSION" "$KWOK_VERSION"
}

# k8s_fail LOG WHAT: the log's tail and a message naming it.
k8s_fail() {
  tail -30 "$1" >&2
  die "$2 (full log: $1)"
}

# k8s_install_etcd: Debian's etcd-server (etcd 3.4 on bookworm), as root with apt.
k8s_install_etcd() {
  [[ -x $ETCD_BIN ]] && return 0
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 \
    || die "etcd is not installed (Debian/Ubuntu: apt-get install etcd-server)"
  log "installing Debian's etcd-server package (apt-get; first time only)"
  apt_install "$K8S_LOGS/etcd-install.log" etcd-server && [[ -x $ETCD_BIN ]] \
    || k8s_fail "$K8S_LOGS/etcd-install.log" "installing Debian's etcd-server package failed"
  # The package enables and starts a system etcd on 2379/2380; kwokctl runs its own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl disable --now etcd >>"$K8S_LOGS/etcd-install.log" 2>&1 || true
  fi
}

# k8s_build_kwok: kwokctl and kwok with go install.
k8s_build_kwok() {
  local log_file="$K8S_LOGS/kwok-build.log"
  log "building kwokctl and kwok $KWOK_VERSION (sigs.k8s.io/kwok, Go module proxy; first time only)"
  (
    k8s_go_env
    export GOBIN="$K8S_BIN"
    cd "$K8S_DIR"
    go install -p 2 -trimpath -ldflags='-s -w' \
      "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  ) >"$log_file" 2>&1 || k8s_fail "$log_file" "building kwok $KWOK_VERSION failed"
}

# k8s_prepare_source: a writable copy of k8s.io/kubernetes $K8S_VERSION whose
# staging replaces point at the published modules; prints its directory.
k8s_prepare_source() {
  local log_file=$1 source copy="$K8S_DIR/src/kubernetes-$K8S_VERSION" module args=()
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >>"$log_file" 2>&1 \
    || k8s_fail "$log_file" "downloading k8s.io/kubernetes $K8S_VERSION from the Go module proxy failed"
  source="$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION"
  [[ -d $source/cmd/kube-apiserver ]] || die "go mod download did not leave k8s.io/kubernetes in $source"
  rm -rf "$copy"
  mkdir -p "$(dirname "$copy")"
  cp -r "$source" "$copy"
  chmod -R u+w "$copy"
  # go.work lists ./staging/...; vendor/ and staging/ are empty husks in the zip.
  rm -rf "$copy/go.work" "$copy/go.work.sum" "$copy/vendor" "$copy/staging"
  # Each "k8s.io/x => ./staging/src/k8s.io/x" becomes "k8s.io/x => k8s.io/x $K8S_LIBS_VERSION".
  # A replace without a version on its left covers whatever version the graph selects.
  while read -r module; do
    args+=("-dropreplace=$module" "-replace=$module=$module@$K8S_LIBS_VERSION")
  done < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$copy/go.mod")
  ((${#args[@]} > 0)) || die "no ./staging replaces found in k8s.io/kubernetes $K8S_VERSION's go.mod"
  (cd "$copy" && go mod edit "${args[@]}") >>"$log_file" 2>&1 \
    || k8s_fail "$log_file" "rewriting the staging replaces failed"
  ! grep -q '=> \./staging/' "$copy/go.mod" || die "$copy/go.mod still has ./staging replaces"
  echo "$copy"
}

# k8s_build_kubernetes: kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl from one prepared copy of k8s.io/kubernetes, in one go build.
k8s_build_kubernetes() {
  local log_file="$K8S_LOGS/kubernetes-build.log" copy ldflags pkg started=$SECONDS
  : >"$log_file"
  log "building kube-apiserver, kube-controller-manager, kube-scheduler and kubectl $K8S_VERSION"
  log "  (k8s.io/kubernetes from the Go module proxy; first time only, about 25 minutes on 2 cores; log: $log_file)"
  (
    k8s_go_env
    copy=$(k8s_prepare_source "$log_file")
    cd "$copy" || exit 1
    # Fills go.sum for the published modules (GOFLAGS=-mod=mod lets it).
    go list -deps ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl \
      >/dev/null 2>>"$log_file" || k8s_fail "$log_file" "resolving the dependencies of k8s.io/kubernetes $K8S_VERSION failed"
    # The version the binaries report (what hack/lib/version.sh stamps in a release build).
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1"
      ldflags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean"
      ldflags+=" -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    done
    rm -rf "$K8S_DIR/bin.partial"
    mkdir -p "$K8S_DIR/bin.partial"
    echo "go build -p 2 -trimpath -ldflags '$ldflags' ./cmd/..." >>"$log_file"
    go build -p 2 -trimpath -ldflags "$ldflags" -o "$K8S_DIR/bin.partial/" \
      ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl \
      >>"$log_file" 2>&1 || k8s_fail "$log_file" "building Kubernetes $K8S_VERSION failed"
    for pkg in "${K8S_COMPONENTS[@]}"; do mv "$K8S_DIR/bin.partial/$pkg" "$K8S_BIN/$pkg"; done
    rm -rf "$K8S_DIR/bin.partial" "$copy"
  )
  log "built Kubernetes $K8S_VERSION in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"
}

# ensure_k8s_binaries: everything the cluster needs, built or installed once.
ensure_k8s_binaries() {
  local name missing=()
  command -v go >/dev/null 2>&1 || die "k8s-try builds Kubernetes and kwok with the Go toolchain (1.26 or newer, https://go.dev/dl), which is not installed"
  mkdir -p "$K8S_BIN" "$K8S_LOGS"
  k8s_install_etcd
  if [[ $(cat "$K8S_BIN/versions" 2>/dev/null) != "$(k8s_stamp)" ]]; then
    [[ -f $K8S_BIN/versions ]] && log "the binaries in $K8S_BIN were built from other versions; building them again"
    rm -f "$K8S_BIN/versions" "$K8S_BIN"/{kwokctl,kwok} "${K8S_COMPONENTS[@]/#/$K8S_BIN/}"
  fi
  [[ -x $K8S_BIN/kwokctl && -x $K8S_BIN/kwok ]] || k8s_build_kwok
  for name in "${K8S_COMPONENTS[@]}"; do [[ -x $K8S_BIN/$name ]] || missing+=("$name"); done
  ((${#missing[@]} == 0)) || k8s_build_kubernetes
  for name in kwokctl kwok "${K8S_COMPONENTS[@]}"; do
    [[ -x $K8S_BIN/$name ]] || die "$K8S_BIN/$name is missing after the build"
  done
  k8s_stamp >"$K8S_BIN/versions"
}
