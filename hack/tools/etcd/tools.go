//go:build tools

// Package tools pins the etcd command that Kiban's tests run.
package tools

import _ "go.etcd.io/etcd/server/v3"
