// A channel to the FaceDetector service: TLS and the token as --tls-* / --token-file say, the
// service config of target.h, and the wait for a first answer (--connect-timeout).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "cli.h"
#include "facedet/v1/face_detector.grpc.pb.h"

namespace facedet_cpp {

using Clock = std::chrono::system_clock;

// Why no call could start: exit status 3, with this message.
struct Unreachable {
  std::string message;
};

class Client {
 public:
  // Reads the PEM and token files; a file that cannot be read throws std::runtime_error.
  explicit Client(const Args& args);

  const std::string& target() const { return target_; }

  // Waits until the channel is connected, until `deadline`. An empty message: connected (or
  // already was). Otherwise why not: refused (gRPC's reason) or no answer within the wait.
  std::string connect(Clock::time_point deadline, double budget_seconds);

  // A context for one call: the token's metadata and the deadline, if any.
  std::unique_ptr<grpc::ClientContext> context(const std::optional<Clock::time_point>& deadline) const;

  facedet::v1::FaceDetector::Stub& stub() { return *stub_; }

 private:
  std::string target_;
  std::string token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<facedet::v1::FaceDetector::Stub> stub_;
};

// A file's bytes; std::runtime_error saying why it cannot be read.
std::string read_file(const std::string& path);

}  // namespace facedet_cpp
