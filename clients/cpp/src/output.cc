#include "output.h"

#include <cstdio>

#include <google/protobuf/util/json_util.h>

namespace facedet_cpp {
namespace {

// A JSON string literal. Bytes >= 0x80 pass through: file names and messages are UTF-8 (as
// Python's json.dumps escapes them instead, a reader sees the same string either way).
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string error_object(const std::string& code, const std::string& message) {
  return "{\"code\": " + quoted(code) + ", \"message\": " + quoted(message) + "}";
}

}  // namespace

const char* code_name(int code) {
  static const char* const names[] = {
      "OK",       "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",  "OUT_OF_RANGE",       "UNIMPLEMENTED",     "INTERNAL",         "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  return code >= 0 && code < static_cast<int>(sizeof(names) / sizeof(names[0])) ? names[code] : "UNKNOWN";
}

std::string json_line(const std::string& file, const facedet::v1::DetectFacesResponse& response) {
  facedet::v1::DetectFacesResponse body = response;
  body.clear_error();  // written below, with the code's name rather than its number
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string fields;
  if (!google::protobuf::util::MessageToJsonString(body, &fields, options).ok() || fields.size() < 2) {
    fields = "{}";  // cannot happen for this message; an empty record rather than broken JSON
  }
  std::string line = "{\"file\": " + quoted(file);
  std::string inner = fields.substr(1, fields.size() - 2);  // without the braces
  if (!inner.empty()) line += ", " + inner;
  if (response.has_error()) {
    line += ", \"error\": " + error_object(code_name(response.error().code()), response.error().message());
  }
  return line + "}";
}

std::string json_error_line(const std::string& file, const std::string& code, const std::string& message) {
  return "{\"file\": " + quoted(file) + ", \"error\": " + error_object(code, message) + "}";
}

std::string naming(const std::string& file, const std::string& message) {
  return message.rfind(file + ": ", 0) == 0 ? message : file + ": " + message;
}

void print_faces(const std::string& file, const facedet::v1::DetectFacesResponse& response) {
  int count = response.faces_size();
  std::printf("%s: %d face%s in %ux%u (server %.1f ms)\n", file.c_str(), count, count != 1 ? "s" : "",
              response.image_width(), response.image_height(), response.timing().total_us() / 1000.0);
  int rank = 0;
  for (const auto& face : response.faces()) {
    const auto& box = face.box();
    std::printf("  %3d  confidence %.3f  box %.0f,%.0f %.0f,%.0f  (%.0fx%.0f)\n", ++rank, face.confidence(),
                box.x_min(), box.y_min(), box.x_max(), box.y_max(), box.x_max() - box.x_min(),
                box.y_max() - box.y_min());
  }
}

}  // namespace facedet_cpp
