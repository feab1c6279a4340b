package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/facedet/facedet/clients/go/facedet"
	facedetv1 "github.com/facedet/facedet/clients/go/gen/facedet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// runDetect sends each image in its own DetectFaces call, in order; a failed image is reported
// and the others still go (exit 1 at the end), no server at all ends the command (exit 3).
func runDetect(s *settings, client *facedet.Client, stdout, stderr io.Writer) int {
	exit := exitOK
	ready := false
	for _, image := range s.positional {
		response, fail, err := detectOne(s, client, image, &ready)
		if err != nil {
			return unreachable(stderr, "detect", client, err)
		}
		if fail != nil {
			fmt.Fprintf(stderr, "facedet-go detect: %s: %s\n", fail.code, fail.message)
			exit = exitFailed
			if !s.json {
				continue
			}
		}
		if !s.json {
			printFaces(stdout, image, response)
			continue
		}
		line, err := jsonLine(image, response, fail)
		if err != nil {
			fmt.Fprintf(stderr, "facedet-go detect: %s: %v\n", image, err)
			return exitFailed
		}
		if _, err := stdout.Write(line); err != nil {
			return exitFailed
		}
	}
	return exit
}

// detectOne returns the image's response, or why it failed; err is set only when no server
// answered. `ready` remembers that one did, until a call fails as if it went away.
func detectOne(s *settings, client *facedet.Client, image string, ready *bool) (*facedetv1.DetectFacesResponse, *failure, error) {
	data, problem := readImage(image)
	if problem != "" {
		return nil, &failure{"INVALID_ARGUMENT", naming(image, problem)}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	if s.timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), s.timeout)
	}
	defer cancel()
	if !*ready {
		if err := connect(ctx, s, client); err != nil {
			return nil, nil, err
		}
		*ready = true
	}
	request := &facedetv1.DetectFacesRequest{Image: &facedetv1.DetectFacesRequest_Encoded{Encoded: data}, Options: s.options}
	response, err := client.DetectFaces(ctx, request)
	switch code := status.Code(err); code {
	case codes.OK:
		return response, nil, nil
	case codes.Unavailable:
		return nil, nil, err
	case codes.DeadlineExceeded:
		*ready = false
	}
	return nil, &failure{facedet.CodeName(status.Code(err)), naming(image, statusMessage(err))}, nil
}

// readImage returns the file's bytes, or what is wrong with it in the Python client's words.
// The bytes go as they are: the server takes JPEG and PNG and says so for anything else.
func readImage(path string) ([]byte, string) {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, "no such file"
	case err != nil:
		return nil, fmt.Sprintf("cannot read it (%v)", unwrapPathError(err))
	case info.IsDir():
		return nil, "is a folder, not an image file"
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Sprintf("cannot read it (%v)", unwrapPathError(err))
	}
	if len(data) == 0 {
		return nil, "the file is empty (0 bytes)"
	}
	return data, ""
}

func unwrapPathError(err error) error {
	var pathError *os.PathError
	if errors.As(err, &pathError) {
		return pathError.Err
	}
	return err
}

// statusMessage is a call error's message without grpc-go's "rpc error: code = ... desc = ".
func statusMessage(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}
