//go:build tools

// Package tools pins the Gateway API Inference Extension module, whose InferencePool CRD
// (config/crd/bases/inference.networking.k8s.io_inferencepools.yaml) the tests install from the
// module cache: build.sh downloads the module (checked against go.sum) and records where it is.
// The import keeps `go mod tidy` from dropping the requirement; nothing is built from it.
package tools

import _ "sigs.k8s.io/gateway-api-inference-extension/api/v1"
