#include "client.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "target.h"

namespace facedet_cpp {
namespace {

// Client-side limits only: a larger image is then refused by the server with a clear
// RESOURCE_EXHAUSTED rather than by this side's 4 MiB gRPC default (as the Python client).
constexpr int kMaxMessageBytes = 64 * 1024 * 1024;

std::string trimmed(const std::string& text) {
  const char* space = " \t\r\n";
  auto first = text.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(space) - first + 1);
}

std::string read_named(const std::string& path) {
  if (path.empty()) return "";
  try {
    return read_file(path);
  } catch (const std::runtime_error& error) {
    throw std::runtime_error("cannot read " + path + ": " + error.what());
  }
}

std::shared_ptr<grpc::ChannelCredentials> credentials(const Security& security) {
  if (!security.uses_tls()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = read_named(security.ca_file);  // empty: the system's CAs
  options.pem_cert_chain = read_named(security.cert_file);
  options.pem_private_key = read_named(security.key_file);
  return grpc::SslCredentials(options);
}

std::string seconds_text(double seconds) {
  std::ostringstream out;
  out << seconds;  // like Python's {:g}: 10 -> "10", 2.5 -> "2.5"
  return out.str();
}

}  // namespace

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::strerror(errno));
  std::ostringstream data;
  data << in.rdbuf();
  if (in.bad()) throw std::runtime_error(std::strerror(errno));
  return data.str();
}

Client::Client(const Args& args) : target_(with_default_port(args.server)) {
  token_ = trimmed(read_named(args.security.token_file));  // the one token, without its newline
  auto creds = credentials(args.security);
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  channel_args.SetMaxSendMessageSize(kMaxMessageBytes);
  // gRPC keeps a call's messages for a retry only up to this (256 KiB by default) and commits a
  // larger call at once: a photo is often bigger, and its call would then not be retried when a
  // server dies under it. The request is held until the call ends anyway.
  channel_args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, kMaxMessageBytes);
  channel_args.SetServiceConfigJSON(service_config(balances(target_)));
  channel_ = grpc::CreateCustomChannel(target_, creds, channel_args);
  stub_ = facedet::v1::FaceDetector::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Client::context(const std::optional<Clock::time_point>& deadline) const {
  auto context = std::make_unique<grpc::ClientContext>();
  // As the Python client: on every call, over plaintext too (keep that to unix sockets and
  // loopback); the server's interceptor compares it in constant time.
  if (!token_.empty()) context->AddMetadata("authorization", "Bearer " + token_);
  if (deadline) context->set_deadline(*deadline);
  return context;
}

std::string Client::connect(Clock::time_point deadline, double budget_seconds) {
  // gRPC alone would let a call with wait_for_ready wait its whole deadline on a refused port,
  // and a listener that never speaks HTTP/2 hang it: so the channel must first be READY.
  grpc_connectivity_state state = channel_->GetState(true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      // Every address failed (refused, TLS handshake failed, ...). A call that does not wait
      // for ready fails at once with gRPC's reason, which the message passes on.
      auto probe = context(std::min(deadline, Clock::now() + std::chrono::seconds(2)));
      probe->set_wait_for_ready(false);
      facedet::v1::ModelInfo info;
      grpc::Status status = stub_->GetModelInfo(probe.get(), facedet::v1::GetModelInfoRequest(), &info);
      if (status.ok() || status.error_code() != grpc::StatusCode::UNAVAILABLE) return "";
      return "the server at " + target_ + " is not available (" + status.error_message() + ")";
    }
    if (!channel_->WaitForStateChange(state, deadline)) {
      return "no FaceDetector answered at " + target_ + " within " + seconds_text(budget_seconds) + " s";
    }
    state = channel_->GetState(true);
  }
  return "";
}

}  // namespace facedet_cpp
