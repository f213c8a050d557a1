#!/usr/bin/env bash
# `make demo`: the seed's forest on a local control plane, end to end.
#
#   1. start kube-apiserver + etcd on loopback (image-ancestry cluster start)
#   2. apply crds/, start the operator in the background
#   3. apply examples/ (debian:10 -> mynode:latest -> myapp:v1, and mypython:latest)
#   4. wait for every status, print `kubectl get containerimages -A -o wide`
#   5. set enable_user_base_image=false in the ConfigMap and show what changed
#
# Everything stays up afterwards so you can look around; the last lines say how to stop it.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DIR=${DEMO_DIR:-.cluster}
NS=image-ancestry-system
export KUBECONFIG="$DIR/kubeconfig"

say() { printf '\n==> %s\n' "$*"; }
k() { kubectl "$@"; }

# wait_until DESCRIPTION TIMEOUT COMMAND...: run COMMAND every second until it succeeds.
wait_until() {
    local what=$1 timeout=$2 waited=0
    shift 2
    printf '    waiting for %s ' "$what"
    until "$@" >/dev/null 2>&1; do
        if ((waited >= timeout)); then
            printf ' timed out after %ss\n' "$timeout"
            return 1
        fi
        printf '.'
        sleep 1
        waited=$((waited + 1))
    done
    printf ' ok (%ss)\n' "$waited"
}

say "starting the local control plane in $DIR (kube-apiserver + etcd; the first run builds them, which takes a while)"
"$BIN/image-ancestry" cluster start --dir "$DIR" >/dev/null
k version 2>/dev/null | sed -n 's/^Server Version/    server/p'

say "applying the CRDs"
k apply -f crds/
k wait --for=condition=Established --timeout=60s crd/containerimages.imageancestry.io >/dev/null

for ns in "$NS" platform team-a; do
    k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
done
# A demo run again starts from the default: user base annotations on.
k delete configmap image-ancestry-config -n "$NS" --ignore-not-found >/dev/null

if [[ -f "$DIR/operator.pid" ]] && kill -0 "$(cat "$DIR/operator.pid")" 2>/dev/null; then
    say "stopping the operator of an earlier demo run"
    kill "$(cat "$DIR/operator.pid")"
    wait_until "it to exit" 30 bash -c "! kill -0 $(cat "$DIR/operator.pid")"
fi

say "starting the operator in the background (log: $DIR/operator.log)"
"$BIN/image-ancestry" run --namespace "$NS" >"$DIR/operator.log" 2>&1 &
echo $! >"$DIR/operator.pid"
wait_until "its first listing" 60 \
    grep -q "listing (start) done" "$DIR/operator.log"

say "applying examples/ (the seed's forest)"
k apply -f examples/

all_ready() {
    local states
    states=$(k get containerimages -A \
        -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
    [[ -n "$states" ]] && ! grep -qv '^True$' <<<"$states"
}
wait_until "every image's status" 60 all_ready

BASES='custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,BASE:.status.baseImage.name,REASON:.status.baseImage.reason'

say "kubectl get containerimages -A -o wide"
k get containerimages -A -o wide
k get containerimages -A -o "$BASES" >"$DIR/demo-before.txt"

say "myapp-v1's status in full"
k get containerimage myapp-v1 -n team-a -o jsonpath='{.status}' | python3 -m json.tool

say "setting enable_user_base_image=false in ConfigMap $NS/image-ancestry-config"
k create configmap image-ancestry-config -n "$NS" --from-literal=enable_user_base_image=false \
    --dry-run=client -o yaml | k apply -f -
reason_is() {
    [[ $(k get containerimage myapp-v1 -n team-a -o jsonpath='{.status.baseImage.reason}') == "$1" ]]
}
wait_until "the base images to be recomputed" 60 reason_is ClosestAncestor

say "kubectl get containerimages -A -o wide (annotations off)"
k get containerimages -A -o wide
k get containerimages -A -o "$BASES" >"$DIR/demo-after.txt"

say "what changed (< before, > after)"
diff "$DIR/demo-before.txt" "$DIR/demo-after.txt" | grep '^[<>]' | sed 's/^/    /' || true
cat <<'EOF'
    myapp-v1's base is still mynode-latest, but now as its parent (ClosestAncestor), no
    longer because mynode carries anchore.user/marked_base_image=true (MarkedBaseImage):
    with user base annotations off, marks do not decide. A BaseImageChanged Event is posted
    when an image's base becomes another image; here only the reason changed.
EOF

cat <<EOF

==> done. The control plane and the operator are still running:
    export KUBECONFIG=$KUBECONFIG
    kubectl get cimg -A -o wide
    tail -f $DIR/operator.log
  to stop them:
    kill \$(cat $DIR/operator.pid); $BIN/image-ancestry cluster stop --dir $DIR
EOF
