package facedet

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// codec marshals with google.golang.org/protobuf (the API the generated code is built on).
//
// grpc-go 1.33's own codec calls github.com/golang/protobuf, and Debian pairs its grpc with
// either that module's 1.5 (a shim over google.golang.org/protobuf) or its 1.3 (a reflection
// marshaller of its own, which panics on the oneof of code generated for the new API: a
// request's image). golang-google-grpc-dev accepts both and apt picks 1.3, so the client names
// its codec instead of depending on which one is installed. Its name is
// "proto", the content-subtype every gRPC server expects.
type codec struct{}

func (codec) Marshal(v interface{}) ([]byte, error) {
	message, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("facedet codec: %T is not a protobuf message", v)
	}
	return proto.Marshal(message)
}

func (codec) Unmarshal(data []byte, v interface{}) error {
	message, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("facedet codec: %T is not a protobuf message", v)
	}
	return proto.Unmarshal(data, message)
}

func (codec) Name() string { return "proto" }

// String names the codec for grpc's older Codec interface (grpc.CustomCodec, on a server).
func (codec) String() string { return "proto" }
