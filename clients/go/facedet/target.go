package facedet

import (
	"errors"
	"fmt"
	"strings"
)

// ErrTarget is wrapped by the error for a target that cannot be dialled as written.
var ErrTarget = errors.New("bad target")

// DefaultPort is the port of a target that names a host without one ("localhost" ->
// "localhost:50051"; gRPC itself would dial 443).
const DefaultPort = "50051"

// DefaultTarget is where the clients look for a server unless told otherwise.
const DefaultTarget = "localhost:" + DefaultPort

// WithDefaultPort returns target with DefaultPort where it names a host without a port, as the
// Python client does: "localhost" -> "localhost:50051", "[::1]" -> "[::1]:50051",
// "dns:///svc" -> "dns:///svc:50051". unix:, ipv4:, ipv6: lists and anything with a port are
// left as they are.
func WithDefaultPort(target string) string {
	if rest, ok := cutPrefix(target, "dns:"); ok {
		if strings.HasPrefix(rest, "//") { // dns://[authority]/host
			slash := strings.Index(rest[2:], "/")
			if slash < 0 {
				return target // not a dns: URI gRPC takes; the dial error says so
			}
			return "dns:" + rest[:slash+3] + hostWithPort(rest[slash+3:])
		}
		return "dns:" + hostWithPort(rest)
	}
	for _, scheme := range []string{"unix:", "unix-abstract:", "ipv4:", "ipv6:", "passthrough:"} {
		if strings.HasPrefix(target, scheme) {
			return target
		}
	}
	if strings.Contains(target, "://") {
		return target
	}
	return hostWithPort(target)
}

func hostWithPort(host string) string {
	switch {
	case host == "":
		return host
	case strings.HasPrefix(host, "["): // [IPv6] or [IPv6]:port
		if strings.HasSuffix(host, "]") {
			return host + ":" + DefaultPort
		}
		return host
	case strings.Count(host, ":") == 0:
		return host + ":" + DefaultPort
	case strings.Count(host, ":") > 1: // a bare IPv6 address: no port can be read from it
		return "[" + host + "]:" + DefaultPort
	}
	return host
}

// Addresses lists what a target names itself, for the targets grpc-go 1.33 has no resolver
// for: "ipv4:10.0.0.1:50070,10.0.0.1:50071", "ipv6:[::1]:50070,[::1]:50071" (host:port each)
// and "unix:/a.sock,/b.sock" (each returned as "unix:/a.sock", which grpc-go's dialer takes).
// It returns nil for any other target (host:port, dns:///name:port, one unix: socket), which
// grpc-go resolves itself.
func Addresses(target string) ([]string, error) {
	scheme, rest, found := strings.Cut(target, ":")
	if !found {
		return nil, nil
	}
	switch scheme {
	case "ipv4", "ipv6":
		var addresses []string
		for _, address := range strings.Split(rest, ",") {
			if hostWithPort(address) != address || address == "" {
				return nil, fmt.Errorf("%w %s: %q is not HOST:PORT", ErrTarget, target, address)
			}
			addresses = append(addresses, address)
		}
		return addresses, nil
	case "unix":
		if !strings.Contains(rest, ",") {
			return nil, nil
		}
		var addresses []string
		for _, path := range strings.Split(rest, ",") {
			path = strings.TrimPrefix(path, "//") // unix:///abs.sock
			if path == "" {
				return nil, fmt.Errorf("%w %s: an empty socket path", ErrTarget, target)
			}
			addresses = append(addresses, "unix:"+path)
		}
		return addresses, nil
	}
	return nil, nil
}

func cutPrefix(s, prefix string) (string, bool) {
	if strings.HasPrefix(s, prefix) {
		return s[len(prefix):], true
	}
	return s, false
}
