package facedet

import (
	"context"
	"net"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	facedetv1 "github.com/facedet/facedet/clients/go/gen/facedet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestWithDefaultPort(t *testing.T) {
	cases := map[string]string{
		"localhost":                  "localhost:50051",
		"localhost:7000":             "localhost:7000",
		"[::1]":                      "[::1]:50051",
		"[::1]:7000":                 "[::1]:7000",
		"::1":                        "[::1]:50051",
		"dns:///svc":                 "dns:///svc:50051",
		"dns:///svc:7000":            "dns:///svc:7000",
		"dns://8.8.8.8/svc":          "dns://8.8.8.8/svc:50051",
		"dns:svc":                    "dns:svc:50051",
		"unix:/run/f.sock":           "unix:/run/f.sock",
		"unix:///run/f.sock":         "unix:///run/f.sock",
		"ipv4:10.0.0.1:1,10.0.0.2:2": "ipv4:10.0.0.1:1,10.0.0.2:2",
	}
	for in, want := range cases {
		if got := WithDefaultPort(in); got != want {
			t.Errorf("WithDefaultPort(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAddresses(t *testing.T) {
	cases := map[string][]string{
		"ipv4:10.0.0.1:1,10.0.0.2:2": {"10.0.0.1:1", "10.0.0.2:2"},
		"ipv4:10.0.0.1:1":            {"10.0.0.1:1"},
		"ipv6:[::1]:1,[::1]:2":       {"[::1]:1", "[::1]:2"},
		"unix:/a.sock,/b.sock":       {"unix:/a.sock", "unix:/b.sock"},
		"unix:///a.sock,///b.sock":   {"unix:/a.sock", "unix:/b.sock"},
		"unix:/a.sock":               nil, // grpc-go dials one socket itself
		"localhost:50051":            nil,
		"dns:///svc:50051":           nil,
	}
	for in, want := range cases {
		got, err := Addresses(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Addresses(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"ipv4:10.0.0.1", "ipv4:10.0.0.1:1,", "unix:/a.sock,"} {
		if got, err := Addresses(bad); err == nil {
			t.Errorf("Addresses(%q) = %q, want an error", bad, got)
		}
	}
}

// flaky fails its first `failures` DetectFaces calls with UNAVAILABLE, then answers.
type flaky struct {
	facedetv1.UnimplementedFaceDetectorServer
	failures int32
	calls    int32
}

func (f *flaky) DetectFaces(context.Context, *facedetv1.DetectFacesRequest) (*facedetv1.DetectFacesResponse, error) {
	if atomic.AddInt32(&f.calls, 1) <= f.failures {
		return nil, status.Error(codes.Unavailable, "going away")
	}
	return &facedetv1.DetectFacesResponse{ImageWidth: 7}, nil
}

func serve(t *testing.T, server facedetv1.FaceDetectorServer) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.sock")
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.CustomCodec(codec{}))
	facedetv1.RegisterFaceDetectorServer(s, server)
	go s.Serve(listener)
	t.Cleanup(s.Stop)
	return "unix:" + path
}

// The service config's retry policy is in force (grpc-go 1.33 needs GRPC_GO_RETRY=on, which
// package retryon sets before grpc starts): a call that fails with UNAVAILABLE is sent again,
// a photo-sized one too (over grpc's default 256 KiB retry buffer).
func TestUnavailableIsRetried(t *testing.T) {
	server := &flaky{failures: 2}
	client, err := Dial(serve(t, server), Security{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	response, err := client.DetectFaces(ctx, &facedetv1.DetectFacesRequest{
		Image: &facedetv1.DetectFacesRequest_Encoded{Encoded: make([]byte, 1<<20)},
	})
	if err != nil || response.GetImageWidth() != 7 {
		t.Fatalf("DetectFaces = %v, %v; want a response after retries", response, err)
	}
	if got := atomic.LoadInt32(&server.calls); got != 3 {
		t.Errorf("server saw %d calls, want 3 (two UNAVAILABLE, then the answer)", got)
	}
}

// Other failures are not retried: a bad image stays one call.
func TestInvalidArgumentIsNotRetried(t *testing.T) {
	bad := &badImage{}
	client, err := Dial(serve(t, bad), Security{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.DetectFaces(ctx, &facedetv1.DetectFacesRequest{})
	if status.Code(err) != codes.InvalidArgument || atomic.LoadInt32(&bad.calls) != 1 {
		t.Fatalf("got %v after %d calls, want INVALID_ARGUMENT after 1", err, bad.calls)
	}
}

type badImage struct {
	facedetv1.UnimplementedFaceDetectorServer
	calls int32
}

func (b *badImage) DetectFaces(context.Context, *facedetv1.DetectFacesRequest) (*facedetv1.DetectFacesResponse, error) {
	atomic.AddInt32(&b.calls, 1)
	return nil, status.Error(codes.InvalidArgument, "no image")
}

// WaitReady gives up at once where every address refuses, with gRPC's reason.
func TestWaitReadyRefused(t *testing.T) {
	client, err := Dial("unix:"+filepath.Join(t.TempDir(), "nothing.sock"), Security{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	started := time.Now()
	err = client.WaitReady(context.Background(), 10*time.Second)
	if status.Code(err) != codes.Unavailable || time.Since(started) > 5*time.Second {
		t.Fatalf("WaitReady = %v after %v; want UNAVAILABLE at once", err, time.Since(started))
	}
}
