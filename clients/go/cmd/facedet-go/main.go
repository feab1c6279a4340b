// Command facedet-go is the example Go client of facedet: the command-line contract every
// facedet client shares (`facedet detect`, `facedet stream`):
//
//	facedet-go detect IMG... [--server ADDR] [--json] [--timeout S]
//	facedet-go stream DIR [--server ADDR] [--json]
//
// with TLS (--tls-ca, --tls-cert, --tls-key) and a bearer token (--token-file). See
// clients/go/README.md.
package main

// First, in a declaration of its own: grpc-go's retry switch, before grpc is initialised.
import _ "github.com/facedet/facedet/clients/go/internal/retryon"

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/facedet/facedet/clients/go/facedet"
)

var commands = []command{
	{name: "detect", synopsis: "detect IMG... [--server ADDR] [--json] [--timeout S]", timeout: 30 * time.Second,
		minArgs: 1, maxArgs: -1, run: runDetect},
	{name: "stream", synopsis: "stream DIR [--server ADDR] [--json]", minArgs: 1, maxArgs: 1, run: runStream},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// help is the top-level --help: every command's usage.
func help(out io.Writer) {
	fmt.Fprint(out, "facedet-go: detect faces through a facedet server (detect: one call per image;\n"+
		"stream: a folder's JPEG/PNG files, in name order, over one stream)\n\n")
	for _, c := range commands {
		c.usage(out)
		fmt.Fprintln(out)
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, "usage: facedet-go {detect,stream} ARGS... (--help for more)\n")
		return exitUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		help(stdout)
		return exitOK
	}
	var c *command
	for i := range commands {
		if commands[i].name == args[0] {
			c = &commands[i]
		}
	}
	if c == nil {
		fmt.Fprintf(stderr, "usage: facedet-go {detect,stream} ARGS...\nfacedet-go: unknown command %q\n", args[0])
		return exitUsage
	}
	s, err := c.parse(args[1:])
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.usage(stdout)
		return exitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "usage: facedet-go %s\nfacedet-go %s: error: %v (--help lists the flags)\n", c.synopsis, c.name, err)
		return exitUsage
	case err != nil:
		fmt.Fprintf(stderr, "facedet-go %s: %v\n", c.name, err)
		return exitFailed
	}
	client, err := facedet.Dial(s.server, s.security)
	if errors.Is(err, facedet.ErrTarget) {
		fmt.Fprintf(stderr, "usage: facedet-go %s\nfacedet-go %s: error: %v\n", c.synopsis, c.name, err)
		return exitUsage
	}
	if err != nil { // a certificate or key that is not one
		fmt.Fprintf(stderr, "facedet-go %s: %v\n", c.name, err)
		return exitFailed
	}
	defer client.Close()
	return c.run(s, client, stdout, stderr)
}

// connect waits for the server to answer (see facedet.Client.WaitReady) within the connect
// timeout or the call's own --timeout (ctx's deadline, set just before), whichever is shorter.
func connect(ctx context.Context, s *settings, client *facedet.Client) error {
	within := s.connectTimeout
	if s.timeout > 0 && s.timeout < within {
		within = s.timeout
	}
	return client.WaitReady(ctx, within)
}

// unreachable reports that no FaceDetector answered (exit 3), as `facedet` words it.
func unreachable(stderr io.Writer, command string, client *facedet.Client, err error) int {
	what := err.Error()
	if !errors.Is(err, facedet.ErrNoAnswer) {
		what = fmt.Sprintf("the server at %s is not available (%s)", client.Target, statusMessage(err))
	}
	fmt.Fprintf(stderr, "facedet-go %s: %s; start one with `facedet serve`, or point --server / "+
		"FACEDET_SERVER at a running one\n", command, what)
	return exitUnreachable
}
