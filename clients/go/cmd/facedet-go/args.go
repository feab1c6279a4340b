package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/facedet/facedet/clients/go/facedet"
	facedetv1 "github.com/facedet/facedet/clients/go/gen/facedet/v1"
)

// Exit statuses, as `facedet detect` and `facedet stream` (the Python client) use them.
const (
	exitOK          = 0
	exitFailed      = 1 // an image or frame failed: unreadable, not an image, rejected by the server
	exitUsage       = 2 // bad arguments
	exitUnreachable = 3 // no FaceDetector answered at --server
)

const exitStatusHelp = `exit status:
  0  every image (frame) went well
  1  an image or frame failed: unreadable, not an image, rejected by the server
  2  bad arguments
  3  no FaceDetector answered at --server: nothing listens there (refused), or nothing
     answered within --connect-timeout (default 10 s) or --timeout
`

// settings are one command's flags and positional arguments.
type settings struct {
	server         string
	json           bool
	timeout        time.Duration // 0: none
	connectTimeout time.Duration
	security       facedet.Security
	options        *facedetv1.DetectionOptions // sent with every image and frame
	every          int                         // stream: send every Nth file
	maxFrames      int                         // stream: stop after sending this many (0: all)
	positional     []string
}

// errUsage is a bad command line (exit 2); errUnreadable a file a flag names (exit 1, as the
// Python client's "cannot read PATH").
var (
	errUsage      = errors.New("bad arguments")
	errUnreadable = errors.New("cannot read")
)

// seconds is a flag holding a positive number of seconds.
type seconds struct{ d *time.Duration }

func (s seconds) String() string {
	if s.d == nil || *s.d == 0 {
		return ""
	}
	return strconv.FormatFloat(s.d.Seconds(), 'g', -1, 64)
}

func (s seconds) Set(text string) error {
	value, err := strconv.ParseFloat(text, 64)
	if err != nil || !(value > 0) {
		return fmt.Errorf("must be a number of seconds > 0, got %q", text)
	}
	*s.d = time.Duration(value * float64(time.Second))
	return nil
}

// positive is a flag holding an integer >= 1.
type positive struct{ n *int }

func (p positive) String() string {
	if p.n == nil || *p.n == 0 {
		return ""
	}
	return strconv.Itoa(*p.n)
}

func (p positive) Set(text string) error {
	value, err := strconv.Atoi(text)
	if err != nil || value < 1 {
		return fmt.Errorf("must be an integer >= 1, got %q", text)
	}
	*p.n = value
	return nil
}

// command is what one subcommand takes.
type command struct {
	name, synopsis string
	timeout        time.Duration // default --timeout (0: none)
	minArgs        int
	maxArgs        int // -1: no limit
	run            func(*settings, *facedet.Client, io.Writer, io.Writer) int
}

func (c command) flagSet(s *settings) *flag.FlagSet {
	flags := flag.NewFlagSet("facedet-go "+c.name, flag.ContinueOnError)
	flags.SetOutput(io.Discard) // errors are reported in one line of ours, help by usage()
	server := os.Getenv("FACEDET_SERVER")
	if server == "" {
		server = facedet.DefaultTarget
	}
	flags.StringVar(&s.server, "server", server, "`ADDR`: HOST:PORT (HOST alone: port 50051), unix:/path.sock, dns:///NAME:PORT, or\n"+
		"addresses to spread calls over (round_robin): ipv4:HOST:PORT,HOST:PORT or unix:/a.sock,/b.sock\n"+
		"[env FACEDET_SERVER]")
	flags.BoolVar(&s.json, "json", false, `JSON Lines: per image, the DetectFacesResponse as proto JSON plus "file"; a failed image is`+"\n"+
		`{"file", "error": {"code": "INVALID_ARGUMENT", "message"}}`)
	timeoutHelp := "`seconds` for the whole stream, connecting included (default: none)"
	if c.timeout > 0 {
		timeoutHelp = "`seconds` for each image, connecting included"
	}
	flags.Var(seconds{&s.timeout}, "timeout", timeoutHelp)
	flags.Var(seconds{&s.connectTimeout}, "connect-timeout", "`seconds` to wait for the server to answer at all")
	flags.StringVar(&s.security.CAFile, "tls-ca", "", "CA that signed the server's certificate (`PEM`): use TLS")
	flags.StringVar(&s.security.CertFile, "tls-cert", "", "this client's certificate (`PEM`), for mutual TLS")
	flags.StringVar(&s.security.KeyFile, "tls-key", "", "private key of --tls-cert (`PEM`)")
	flags.String("token-file", os.Getenv("FACEDET_TOKEN_FILE"), "`PATH` of a file holding the server's bearer token [env FACEDET_TOKEN_FILE]")
	flags.Float64("min-confidence", 0, "0 = server default (0.5)")
	flags.Float64("iou-threshold", 0, "0 = server default (0.5)")
	flags.Uint("max-faces", 0, "0 = server default")
	flags.Float64("min-face-size", 0, "pixels; 0 = keep all")
	flags.Bool("ignore-exif-orientation", false,
		"detect in a JPEG's pixels as stored, not in the upright picture its EXIF orientation describes")
	if c.name == "stream" {
		flags.Var(positive{&s.every}, "every", "send every `N`th file")
		flags.Var(positive{&s.maxFrames}, "max-frames", "stop after sending `N` frames")
	}
	return flags
}

// usage writes the command's synopsis, flags and exit statuses.
func (c command) usage(out io.Writer) {
	fmt.Fprintf(out, "usage: facedet-go %s\n\nflags (-flag and --flag alike):\n", c.synopsis)
	// flag.PrintDefaults would write -flag; the other clients' help (and ours) says --flag.
	c.flagSet(&settings{every: 1}).VisitAll(func(f *flag.Flag) {
		kind, text := flag.UnquoteUsage(f)
		if kind != "" {
			kind = " " + kind
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			text += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(out, "  --%s%s\n      %s\n", f.Name, kind, strings.ReplaceAll(text, "\n", "\n      "))
	})
	fmt.Fprint(out, "\n"+exitStatusHelp)
}

// parse reads the command's arguments. Flags may come before, between or after the positional
// arguments (`detect a.jpg b.jpg --server ADDR`), as argparse allows; "--" ends the flags.
// Errors wrap errUsage or errUnreadable; flag.ErrHelp is --help.
func (c command) parse(args []string) (*settings, error) {
	s := &settings{timeout: c.timeout, connectTimeout: 10 * time.Second, every: 1}
	flags := c.flagSet(s)
	for {
		if err := flags.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		rest := flags.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			s.positional = append(s.positional, rest...)
			break
		}
		s.positional = append(s.positional, rest[0])
		args = rest[1:]
	}
	if len(s.positional) < c.minArgs || c.maxArgs >= 0 && len(s.positional) > c.maxArgs {
		return nil, fmt.Errorf("%w: expected %s", errUsage, c.synopsis)
	}
	value := func(name string) flag.Getter { return flags.Lookup(name).Value.(flag.Getter) }
	s.options = &facedetv1.DetectionOptions{
		MinConfidence:         float32(value("min-confidence").Get().(float64)),
		IouThreshold:          float32(value("iou-threshold").Get().(float64)),
		MaxFaces:              uint32(value("max-faces").Get().(uint)),
		MinFaceSize:           float32(value("min-face-size").Get().(float64)),
		IgnoreExifOrientation: value("ignore-exif-orientation").Get().(bool),
	}
	if (s.security.CertFile == "") != (s.security.KeyFile == "") {
		return nil, fmt.Errorf("%w: --tls-cert and --tls-key go together (a client certificate and its key)", errUsage)
	}
	for _, path := range []string{s.security.CAFile, s.security.CertFile, s.security.KeyFile} {
		if path != "" {
			if _, err := os.ReadFile(path); err != nil {
				return nil, fmt.Errorf("%w %s: %v", errUnreadable, path, unwrapPathError(err))
			}
		}
	}
	if tokenFile := flags.Lookup("token-file").Value.String(); tokenFile != "" {
		token, err := facedet.ReadTokenFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %v", errUnreadable, tokenFile, strings.TrimPrefix(unwrapPathError(err).Error(), tokenFile+": "))
		}
		s.security.Token = token
	}
	return s, nil
}
