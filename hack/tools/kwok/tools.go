//go:build tools

// Package tools pins the kwok command that Kiban's tests run.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
