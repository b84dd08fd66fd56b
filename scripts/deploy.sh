#!/usr/bin/env bash
# deploy.sh: the pipeline's delivery steps, as make targets run them.
#
#   scripts/deploy.sh render OVERLAY          build/k8s-OVERLAY.yaml: the manifests as applied
#   scripts/deploy.sh push                    tags localhost/carshare-<p>:$IMAGE_TAG as
#                                             $REGISTRY/carshare-<p>:$IMAGE_TAG and pushes it
#   scripts/deploy.sh apply OVERLAY           kubectl apply -k of OVERLAY with the images of
#                                             $REGISTRY at $IMAGE_TAG, in namespace $NAMESPACE
#   scripts/deploy.sh rollout-status OVERLAY  waits until every Deployment and StatefulSet of
#                                             OVERLAY has rolled out ($ROLLOUT_TIMEOUT, 5m)
#
# The registry and tag are not in the overlays: apply writes build/deploy-OVERLAY/ with a
# kustomization that takes the overlay as its base and sets the images, so one overlay serves
# every release. kubectl talks to its current context (KUBECONFIG in the pipeline).
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY=${REGISTRY:-localhost}
IMAGE_TAG=${IMAGE_TAG:-dev}
NAMESPACE=${NAMESPACE:-carshare}

# The processes with an image: those the base deploys (image: carshare-<process>), and
# postgres, the prod overlay's in-cluster server.
processes() {
  { kubectl kustomize deploy/k8s/base 2>/dev/null |
      sed -n 's/^ *image: carshare-\([a-z]*\).*/\1/p'; echo postgres; } | sort -u
}

# release_kustomization OVERLAY: writes build/deploy-OVERLAY/kustomization.yaml; prints its dir.
release_kustomization() {
  local overlay=$1 dir=build/deploy-$1 p
  mkdir -p "$dir"
  {
    echo "# Written by scripts/deploy.sh: overlay $overlay, images $REGISTRY/*:$IMAGE_TAG."
    echo "namespace: $NAMESPACE"
    echo "bases:"
    echo "- ../../deploy/k8s/overlays/$overlay"
    echo "images:"
    for p in $(processes); do
      for name in "carshare-$p" "localhost/carshare-$p"; do
        printf -- '- name: %s\n  newName: %s/carshare-%s\n  newTag: "%s"\n' \
          "$name" "$REGISTRY" "$p" "$IMAGE_TAG"
      done
    done
  } > "$dir/kustomization.yaml"
  echo "$dir"
}

case "${1:-}" in
  render)
    dir=$(release_kustomization "${2:?overlay}")
    kubectl kustomize "$dir" 2> >(grep -v "is deprecated" >&2) > "build/k8s-$2.yaml"
    echo "deploy: build/k8s-$2.yaml ($(grep -c '^kind:' "build/k8s-$2.yaml") objects)"
    ;;
  push)
    for p in $(processes); do
      podman tag "localhost/carshare-$p:$IMAGE_TAG" "$REGISTRY/carshare-$p:$IMAGE_TAG"
      podman push "$REGISTRY/carshare-$p:$IMAGE_TAG"
    done
    ;;
  apply)
    dir=$(release_kustomization "${2:?overlay}")
    kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
    kubectl apply -k "$dir" 2> >(grep -v "is deprecated" >&2)
    ;;
  rollout-status)
    kubectl kustomize "deploy/k8s/overlays/${2:?overlay}" 2>/dev/null |
      awk '/^kind: (Deployment|StatefulSet)$/ { kind = tolower($2) }
           /^  name: / && kind { print kind "/" $2; kind = "" }' |
      while read -r workload; do
        kubectl -n "$NAMESPACE" rollout status "$workload" --timeout="${ROLLOUT_TIMEOUT:-5m}"
      done
    ;;
  *)
    echo "usage: deploy.sh render|push|apply|rollout-status [OVERLAY]" >&2
    exit 2
    ;;
esac
