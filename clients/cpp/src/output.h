// What facedet-cpp prints: the same lines as the Python CLI, human or JSON Lines.
#pragma once

#include <string>

#include "facedet/v1/face_detector.pb.h"

namespace facedet_cpp {

// The status code's name, e.g. "INVALID_ARGUMENT" (as grpc.StatusCode names them in Python).
const char* code_name(int code);

// One JSON Lines record: {"file": file, ...the response in the proto JSON mapping...}; where the
// response carries an error, "error" is {"code": the status code's NAME, "message"}. Field names
// as the proto declares them (image_width), as the Python CLI's MessageToDict(...,
// preserving_proto_field_name=True) writes them.
std::string json_line(const std::string& file, const facedet::v1::DetectFacesResponse& response);

// The record of an image that failed: {"file": file, "error": {"code": code, "message": message}}.
std::string json_error_line(const std::string& file, const std::string& code, const std::string& message);

// `message` prefixed with "file: " unless it already names the file (as the Python CLI).
std::string naming(const std::string& file, const std::string& message);

// detect without --json: "IMG: N faces in WxH (server X ms)", then one line per face.
void print_faces(const std::string& file, const facedet::v1::DetectFacesResponse& response);

}  // namespace facedet_cpp
