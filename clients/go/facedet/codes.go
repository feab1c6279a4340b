package facedet

import (
	"fmt"

	"google.golang.org/grpc/codes"
)

// codeNames are the canonical status names ("INVALID_ARGUMENT"), as the Python client and the
// server's metrics print them; grpc-go's codes.Code.String() says "InvalidArgument".
var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
	"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// CodeName is code's canonical name (CODE_N for a code gRPC does not define).
func CodeName(code codes.Code) string {
	if int(code) < len(codeNames) {
		return codeNames[code]
	}
	return fmt.Sprintf("CODE_%d", uint32(code))
}
