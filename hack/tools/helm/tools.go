//go:build tools

// Package tools pins the helm command that Kiban's tests run.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
