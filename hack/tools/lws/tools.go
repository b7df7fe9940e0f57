//go:build tools

// Package tools pins the LeaderWorkerSet controller manager that Kiban's tests run.
package tools

import _ "sigs.k8s.io/lws/cmd"
