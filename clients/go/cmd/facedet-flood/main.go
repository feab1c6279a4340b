// Command facedet-flood offers a facedet server DetectFaces calls at a fixed rate, open loop,
// and counts how each ended by its gRPC status: the load generator behind
// `python -m facedet_bench.flood` and the hostile-input test's flood of tiny requests. It is
// no example of the client contract (facedet-go is); it lives in this module because it is
// built the same offline way and a Python client on two cores cannot issue 10,000 calls a
// second.
//
//	facedet-flood --server 127.0.0.1:50051 --image tiny.jpg --rate 10000 --duration 3s
//
// Calls are spread round-robin over --connections HTTP/2 connections, each call with
// --deadline, at most --in-flight at once (a call that finds them all taken is counted as
// "NOT_SENT": the offered rate was not held). It prints one JSON object: the calls started,
// the seconds starting them took, the seconds until the last ended, and the count of each
// status by its canonical name (RESOURCE_EXHAUSTED).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/facedet/facedet/clients/go/facedet"
	facedetv1 "github.com/facedet/facedet/clients/go/gen/facedet/v1"
	"google.golang.org/grpc/status"
)

// report is what facedet-flood prints.
type report struct {
	Started      int            `json:"started"`
	StartSeconds float64        `json:"start_seconds"`
	Seconds      float64        `json:"seconds"`
	Codes        map[string]int `json:"codes"`
	// The first message of each code but OK: what the server (or the transport) said.
	Messages       map[string]string `json:"messages"`
	LatencyMsP50   float64           `json:"latency_ms_p50"`
	LatencyMsP99   float64           `json:"latency_ms_p99"`
	ConnectionsRun int               `json:"connections"`
}

type settings struct {
	server      string
	image       string
	rate        float64
	duration    time.Duration
	connections int
	inFlight    int
	deadline    time.Duration
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	s, err := parse(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "facedet-flood: %v\n", err)
		return 2
	}
	image, err := os.ReadFile(s.image)
	if err != nil {
		fmt.Fprintf(stderr, "facedet-flood: %v\n", err)
		return 1
	}
	r, err := flood(s, image)
	if err != nil {
		fmt.Fprintf(stderr, "facedet-flood: %v\n", err)
		return 1
	}
	out, _ := json.Marshal(r)
	fmt.Fprintln(stdout, string(out))
	return 0
}

func parse(args []string, stderr io.Writer) (settings, error) {
	var s settings
	flags := flag.NewFlagSet("facedet-flood", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.StringVar(&s.server, "server", "127.0.0.1:50051", "HOST:PORT or unix:PATH of the server (plaintext)")
	flags.StringVar(&s.image, "image", "", "the image every call sends (required)")
	flags.Float64Var(&s.rate, "rate", 10000, "calls a second")
	flags.DurationVar(&s.duration, "duration", 3*time.Second, "how long calls are started")
	flags.IntVar(&s.connections, "connections", 20, "HTTP/2 connections the calls are spread over")
	flags.IntVar(&s.inFlight, "in-flight", 4000, "calls in flight at most")
	flags.DurationVar(&s.deadline, "deadline", 10*time.Second, "each call's deadline")
	if err := flags.Parse(args); err != nil {
		return s, err
	}
	switch {
	case s.image == "":
		return s, fmt.Errorf("--image is required")
	case s.rate <= 0 || s.duration <= 0 || s.deadline <= 0:
		return s, fmt.Errorf("--rate, --duration and --deadline must be positive")
	case s.connections < 1 || s.inFlight < 1:
		return s, fmt.Errorf("--connections and --in-flight must be at least 1")
	}
	return s, nil
}

func flood(s settings, image []byte) (report, error) {
	clients := make([]*facedet.Client, s.connections)
	for i := range clients {
		c, err := facedet.Dial(s.server, facedet.Security{})
		if err != nil {
			return report{}, err
		}
		defer c.Close()
		if err := c.WaitReady(context.Background(), 30*time.Second); err != nil {
			return report{}, fmt.Errorf("connection %d: %v", i, err)
		}
		clients[i] = c
	}
	request := &facedetv1.DetectFacesRequest{Image: &facedetv1.DetectFacesRequest_Encoded{Encoded: image}}
	var (
		mu        sync.Mutex
		codes     = map[string]int{}
		messages  = map[string]string{}
		latencies []float64
		wg        sync.WaitGroup
	)
	slots := make(chan struct{}, s.inFlight)
	call := func(c *facedet.Client) {
		defer wg.Done()
		defer func() { <-slots }()
		ctx, cancel := context.WithTimeout(context.Background(), s.deadline)
		defer cancel()
		began := time.Now()
		_, err := c.DetectFaces(ctx, request)
		took := time.Since(began).Seconds() * 1000
		code := facedet.CodeName(status.Code(err))
		mu.Lock()
		codes[code]++
		if _, seen := messages[code]; err != nil && !seen {
			messages[code] = status.Convert(err).Message()
		}
		latencies = append(latencies, took)
		mu.Unlock()
	}
	started, total := 0, int(s.rate*s.duration.Seconds())
	begin := time.Now()
	// Pace by the clock, not by a ticker's count: a late tick issues what is due since.
	for started < total {
		due := int(time.Since(begin).Seconds() * s.rate)
		if due > total {
			due = total
		}
		for ; started < due; started++ {
			select {
			case slots <- struct{}{}:
				wg.Add(1)
				go call(clients[started%len(clients)])
			default:
				mu.Lock()
				codes["NOT_SENT"]++
				mu.Unlock()
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	startSeconds := time.Since(begin).Seconds()
	wg.Wait()
	sort.Float64s(latencies)
	return report{
		Started:        started,
		StartSeconds:   startSeconds,
		Seconds:        time.Since(begin).Seconds(),
		Codes:          codes,
		Messages:       messages,
		LatencyMsP50:   percentile(latencies, 0.50),
		LatencyMsP99:   percentile(latencies, 0.99),
		ConnectionsRun: len(clients),
	}, nil
}

// percentile of sorted values (0 for none).
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}
