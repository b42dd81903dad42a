//go:build tools

// Package tools pins the Kubernetes control-plane commands that the sandbox
// builds (see ../build-binaries.sh). Their app packages are imported so that
// `go mod tidy` keeps every dependency the main packages need.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
)
