package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	facedetv1 "github.com/facedet/facedet/clients/go/gen/facedet/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// failure is why one image or frame failed.
type failure struct {
	code    string
	message string
}

// naming prefixes message with "FILE: " unless it already starts so.
func naming(file, message string) string {
	if strings.HasPrefix(message, file+": ") {
		return message
	}
	return file + ": " + message
}

// protoNames is the proto JSON mapping with the .proto's field names (image_width, not
// imageWidth), as the Python client's MessageToDict(preserving_proto_field_name=True) writes it.
var protoNames = protojson.MarshalOptions{UseProtoNames: true}

type member struct {
	key   string
	value json.RawMessage
}

// jsonLine is one JSON Lines record: "file", then the response in the proto JSON mapping, with
// "error" (where failed is set) as {"code": NAME, "message": ...} in the place the response's
// google.rpc.Status had.
func jsonLine(file string, response *facedetv1.DetectFacesResponse, failed *failure) ([]byte, error) {
	if response == nil {
		response = &facedetv1.DetectFacesResponse{}
	}
	encoded, err := protoNames.Marshal(response)
	if err != nil {
		return nil, err
	}
	members, err := objectMembers(encoded)
	if err != nil {
		return nil, err
	}
	name, _ := json.Marshal(file)
	out := []member{{"file", name}}
	var errorValue json.RawMessage
	if failed != nil {
		errorValue, _ = json.Marshal(map[string]string{"code": failed.code, "message": failed.message})
	}
	placed := false
	for _, m := range members {
		if m.key == "error" {
			if errorValue == nil {
				continue
			}
			m.value, placed = errorValue, true
		}
		out = append(out, m)
	}
	if errorValue != nil && !placed {
		out = append(out, member{"error", errorValue})
	}
	var line bytes.Buffer
	line.WriteByte('{')
	for i, m := range out {
		if i > 0 {
			line.WriteByte(',')
		}
		key, _ := json.Marshal(m.key)
		line.Write(key)
		line.WriteByte(':')
		// protojson varies its white space on purpose (its output is not to be compared byte
		// for byte); compacted, every line of ours reads the same.
		if err := json.Compact(&line, m.value); err != nil {
			return nil, err
		}
	}
	line.WriteString("}\n")
	return line.Bytes(), nil
}

// objectMembers splits a JSON object into its members, in order.
func objectMembers(encoded []byte) ([]member, error) {
	decoder := json.NewDecoder(bytes.NewReader(encoded))
	if token, err := decoder.Token(); err != nil || token != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object: %s", encoded)
	}
	var members []member
	for decoder.More() {
		token, err := decoder.Token()
		if err != nil {
			return nil, err
		}
		var value json.RawMessage
		if err := decoder.Decode(&value); err != nil {
			return nil, err
		}
		members = append(members, member{token.(string), value})
	}
	return members, nil
}

// printFaces is the human-readable form of one image's result, as `facedet detect` prints it.
func printFaces(out io.Writer, image string, response *facedetv1.DetectFacesResponse) {
	count := len(response.GetFaces())
	fmt.Fprintf(out, "%s: %d face%s in %dx%d (server %.1f ms)\n", image, count, plural(count),
		response.GetImageWidth(), response.GetImageHeight(), float64(response.GetTiming().GetTotalUs())/1000)
	for rank, face := range response.GetFaces() {
		box := face.GetBox()
		fmt.Fprintf(out, "  %3d  confidence %.3f  box %.0f,%.0f %.0f,%.0f  (%.0fx%.0f)\n", rank+1,
			face.GetConfidence(), box.GetXMin(), box.GetYMin(), box.GetXMax(), box.GetYMax(),
			box.GetXMax()-box.GetXMin(), box.GetYMax()-box.GetYMin())
	}
}

func plural(count int) string {
	if count == 1 {
		return ""
	}
	return "s"
}
