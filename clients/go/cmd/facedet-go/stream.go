package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/facedet/facedet/clients/go/facedet"
	facedetv1 "github.com/facedet/facedet/clients/go/gen/facedet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// imageSuffixes are the files `stream DIR` sends, as `facedet stream DIR` picks them.
var imageSuffixes = map[string]bool{".jpg": true, ".jpeg": true, ".png": true}

// folderFiles lists the folder's JPEG/PNG files in name order: frame i is file i.
func folderFiles(folder string) ([]string, error) {
	entries, err := os.ReadDir(folder)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no such folder: %s", folder)
		}
		return nil, fmt.Errorf("%s: not a folder of images (%v)", folder, unwrapPathError(err))
	}
	var files []string
	for _, entry := range entries {
		if !entry.IsDir() && imageSuffixes[strings.ToLower(filepath.Ext(entry.Name()))] {
			files = append(files, filepath.Join(folder, entry.Name()))
		}
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("no .jpg, .jpeg or .png files in %s", folder)
	}
	return files, nil
}

// runStream sends the folder's files over one StreamDetectFaces stream, frame i = file i, and
// prints one line per response as they come back (in order), then a summary.
func runStream(s *settings, client *facedet.Client, stdout, stderr io.Writer) int {
	files, err := folderFiles(s.positional[0])
	if err != nil {
		fmt.Fprintf(stderr, "facedet-go stream: %v\n", err)
		return exitFailed
	}
	frames := selectFrames(len(files), s.every, s.maxFrames)
	ctx, cancel := context.WithCancel(context.Background())
	if s.timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), s.timeout)
	}
	defer cancel()
	start := time.Now()
	if err := connect(ctx, s, client); err != nil {
		return unreachable(stderr, "stream", client, err)
	}
	stream, err := client.StreamDetectFaces(ctx)
	if err != nil {
		return streamFailed(stderr, client, err, 0)
	}
	// Sending runs beside receiving: the server answers frames while later ones are on the way
	// (gRPC's flow control holds the sender back when the server falls behind).
	sendErr := make(chan error, 1)
	go func() { sendErr <- sendFrames(stream, files, frames, s.options) }()

	received, faces, failed := 0, 0, 0
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			select {
			case readErr := <-sendErr:
				if readErr != nil { // the sender gave up first, and said why
					fmt.Fprintf(stderr, "facedet-go stream: after %d frames: %v\n", received, readErr)
					return exitFailed
				}
			default:
			}
			return streamFailed(stderr, client, err, received)
		}
		id := response.GetFrameId()
		if id >= uint64(len(files)) {
			fmt.Fprintf(stderr, "facedet-go stream: the server answered frame %d; %d were sent\n", id, len(files))
			return exitFailed
		}
		file := files[id]
		received++
		var fail *failure
		if e := response.GetError(); e != nil {
			fail = &failure{facedet.CodeName(codes.Code(e.GetCode())), naming(file, e.GetMessage())}
			failed++
		} else {
			faces += len(response.GetFaces())
		}
		if s.json {
			line, err := jsonLine(file, response, fail)
			if err != nil {
				fmt.Fprintf(stderr, "facedet-go stream: %s: %v\n", file, err)
				return exitFailed
			}
			if _, err := stdout.Write(line); err != nil {
				return exitFailed
			}
		} else if fail != nil {
			fmt.Fprintf(stdout, "frame %d: %s: %s\n", id, fail.code, fail.message)
		} else {
			fmt.Fprintf(stdout, "frame %d: %d face%s\n", id, len(response.GetFaces()), plural(len(response.GetFaces())))
		}
	}
	if err := <-sendErr; err != nil {
		fmt.Fprintf(stderr, "facedet-go stream: after %d frames: %v\n", received, err)
		return exitFailed
	}
	if received != len(frames) {
		fmt.Fprintf(stderr, "facedet-go stream: %d frames sent, %d answered\n", len(frames), received)
		return exitFailed
	}
	elapsed := time.Since(start).Seconds()
	summary := stdout
	if s.json {
		summary = stderr
	}
	fmt.Fprintf(summary, "%d frames, %d faces, %d failed in %.2f s: %.1f frames/s\n",
		received, faces, failed, elapsed, float64(received)/elapsed)
	if failed > 0 {
		return exitFailed
	}
	return exitOK
}

// selectFrames are the frame ids to send: every `every`th file, at most maxFrames (0: all) of
// them, as `facedet stream --every N --max-frames M` picks them. A frame's id is its file's
// index, so skipped files keep their place in the numbering.
func selectFrames(count, every, maxFrames int) []int {
	var ids []int
	for i := 0; i < count && (maxFrames == 0 || len(ids) < maxFrames); i += every {
		ids = append(ids, i)
	}
	return ids
}

// sendFrames sends file i as frame i for each selected i, then half-closes; the options go
// with every frame (the server reads a stream's options from the first), as the Python client
// sends them.
func sendFrames(stream facedetv1.FaceDetector_StreamDetectFacesClient, files []string, frames []int, options *facedetv1.DetectionOptions) error {
	for _, i := range frames {
		file := files[i]
		data, err := os.ReadFile(file)
		if err != nil {
			stream.CloseSend()
			return fmt.Errorf("cannot read %s: %v", file, unwrapPathError(err))
		}
		request := &facedetv1.DetectFacesRequest{
			Image:   &facedetv1.DetectFacesRequest_Encoded{Encoded: data},
			Options: options,
			FrameId: uint64(i),
		}
		if err := stream.Send(request); err != nil {
			// The stream ended (Recv reports why): stop sending.
			return nil
		}
	}
	return stream.CloseSend()
}

func streamFailed(stderr io.Writer, client *facedet.Client, err error, received int) int {
	code := status.Code(err)
	if code == codes.Unavailable && received == 0 {
		return unreachable(stderr, "stream", client, err)
	}
	hint := ""
	if code == codes.ResourceExhausted {
		hint = "; a frame is over the server's message limit, or its queue is full"
	}
	fmt.Fprintf(stderr, "facedet-go stream: stream failed: %s: %s%s\n", facedet.CodeName(code), statusMessage(err), hint)
	return exitFailed
}
