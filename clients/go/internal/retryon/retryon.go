// Package retryon turns on grpc-go's retry support before grpc reads its settings.
//
// grpc-go 1.33 (Debian bookworm's golang-google-grpc-dev) honours a service config's
// retryPolicy only when GRPC_GO_RETRY=on, and reads that variable once, while its own packages
// are initialised. Go initialises an imported package before the packages that import it, so
// package facedet imports this one (which imports nothing of grpc) in a declaration of its own
// ahead of grpc: this init runs first. A value the user set is left alone.
package retryon

import "os"

// Variable is grpc-go's switch for retries.
const Variable = "GRPC_GO_RETRY"

func init() {
	if _, set := os.LookupEnv(Variable); !set {
		os.Setenv(Variable, "on")
	}
}
