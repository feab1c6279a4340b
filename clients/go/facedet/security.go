package facedet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"
)

// Security says how a client checks the server and proves itself, as the Python client's
// ChannelSecurity does. Any of the PEM files turns TLS on: CAFile the CA that signed the
// server's certificate (empty: the system's CAs), CertFile + KeyFile this client's certificate
// for mutual TLS. Token is sent on every call as "authorization: Bearer <token>", over
// plaintext too (keep that to unix sockets and loopback), which is what the server's
// --auth-token-file checks.
type Security struct {
	CAFile   string
	CertFile string
	KeyFile  string
	Token    string
}

// UsesTLS says whether the connection is TLS.
func (s Security) UsesTLS() bool {
	return s.CAFile != "" || s.CertFile != "" || s.KeyFile != ""
}

// ReadTokenFile returns the one token a token file holds, without surrounding white space.
func ReadTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("%s: the token file is empty", path)
	}
	return token, nil
}

// transportCredentials builds the TLS settings; serverName is the name the server's
// certificate must carry ("" = the target's host, as gRPC derives it).
func (s Security) transportCredentials(serverName string) (credentials.TransportCredentials, error) {
	config := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate in it", s.CAFile)
		}
		config.RootCAs = pool
	}
	if (s.CertFile == "") != (s.KeyFile == "") {
		return nil, fmt.Errorf("a client certificate needs both --tls-cert and --tls-key")
	}
	if s.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(config), nil
}

// bearerToken puts the token on every call.
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity is false: a sidecar over a plaintext unix socket sends it too.
func (t bearerToken) RequireTransportSecurity() bool { return false }
