// Package facedet connects to a facedet server: targets (one address, a list balanced with
// round_robin, dns:///), TLS and the bearer token, the service config (wait_for_ready, retries
// on UNAVAILABLE) and the first-answer check the command line relies on.
package facedet

// In a declaration of its own, first: retryon must be initialised before grpc (see there).
import _ "github.com/facedet/facedet/clients/go/internal/retryon"

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	facedetv1 "github.com/facedet/facedet/clients/go/gen/facedet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// MaxMessageBytes is this side's limit only: a larger image is then refused by the server,
// with a clear RESOURCE_EXHAUSTED, rather than by grpc's 4 MiB default here.
const MaxMessageBytes = 64 << 20

// ServiceConfig spreads calls over every address the target resolves to (round_robin: each
// call or stream to the next ready one), lets calls wait for a ready address instead of
// failing while a replica restarts (waitForReady), and retries a call that failed with
// UNAVAILABLE on another one (a replica that went away mid-call). The retry is only taken
// before the server sent anything back, so no frame is answered twice.
const ServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "facedet.v1.FaceDetector"}],
    "waitForReady": true,
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// Client is a connection to a facedet server and the generated stub over it.
type Client struct {
	facedetv1.FaceDetectorClient
	Conn *grpc.ClientConn
	// Target is the address as dialled (with the default port), for messages.
	Target string
}

// Dial returns a Client for target (see WithDefaultPort and Addresses for the forms it takes);
// it connects in the background: see WaitReady.
func Dial(target string, security Security) (*Client, error) {
	target = WithDefaultPort(target)
	options := []grpc.DialOption{
		grpc.WithDefaultServiceConfig(ServiceConfig),
		// Our config only: a dns: target's TXT record cannot replace it.
		grpc.WithDisableServiceConfig(),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodec(codec{}),
			grpc.MaxCallRecvMsgSize(MaxMessageBytes),
			grpc.MaxCallSendMsgSize(MaxMessageBytes),
			// grpc keeps what a call sent, for a retry, up to this; past it (256 KiB by default:
			// a photo) the call is committed to its first server and the retry policy never
			// applies. A unary call's request is in memory anyway; a stream's frames are kept
			// only until the server's first answer.
			grpc.MaxRetryRPCBufferSize(MaxMessageBytes),
		),
	}
	dialled := target
	addresses, err := Addresses(target)
	if err != nil {
		return nil, err
	}
	if addresses != nil {
		options = append(options, grpc.WithResolvers(listBuilder{addresses}))
		dialled = listScheme + ":///" + target
	}
	if security.UsesTLS() {
		serverName := ""
		if strings.HasPrefix(target, "unix:") || addresses != nil {
			// No host to take the name from: a socket, or several addresses of one service.
			serverName = "localhost"
			if addresses != nil && !strings.HasPrefix(target, "unix:") {
				serverName = hostOf(addresses[0])
			}
		}
		creds, err := security.transportCredentials(serverName)
		if err != nil {
			return nil, err
		}
		options = append(options, grpc.WithTransportCredentials(creds))
	} else {
		options = append(options, grpc.WithInsecure())
		if addresses != nil {
			options = append(options, grpc.WithAuthority("localhost"))
		}
	}
	if security.Token != "" {
		options = append(options, grpc.WithPerRPCCredentials(bearerToken(security.Token)))
	}
	conn, err := grpc.Dial(dialled, options...)
	if err != nil {
		return nil, err
	}
	return &Client{FaceDetectorClient: facedetv1.NewFaceDetectorClient(conn), Conn: conn, Target: target}, nil
}

func hostOf(address string) string {
	if i := strings.LastIndex(address, ":"); i > 0 {
		return strings.Trim(address[:i], "[]")
	}
	return address
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// ErrNoAnswer is what WaitReady returns when nothing became ready in time.
var ErrNoAnswer = errors.New("no FaceDetector answered")

// WaitReady waits until the connection is ready. With waitForReady in the service config a
// call to an address where nothing listens would wait out its whole deadline; the command line
// checks first, as the Python client does: a refused connection (every address failing) ends at
// once with gRPC's reason (UNAVAILABLE), a listener that never speaks HTTP/2 after `within`
// with an error wrapping ErrNoAnswer.
func (c *Client) WaitReady(ctx context.Context, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		state := c.Conn.GetState()
		switch state {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure:
			// A call that does not wait brings back gRPC's reason (connection refused, TLS
			// handshake failed, ...); with a server that just came up it may even succeed.
			_, err := c.GetModelInfo(ctx, &facedetv1.GetModelInfoRequest{}, grpc.WaitForReady(false))
			if err == nil || status.Code(err) != codes.Unavailable {
				return nil
			}
			return err
		}
		if !c.Conn.WaitForStateChange(ctx, state) {
			return fmt.Errorf("%w at %s within %g s", ErrNoAnswer, c.Target, within.Seconds())
		}
	}
}
