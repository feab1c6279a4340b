#include "target.h"

#include <algorithm>

namespace facedet_cpp {
namespace {

constexpr const char* kDefaultPort = "50051";

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

std::string host_with_port(const std::string& host) {
  if (host.empty()) return host;
  if (host[0] == '[') return host.back() == ']' ? host + ":" + kDefaultPort : host;  // [IPv6][:port]
  auto colons = std::count(host.begin(), host.end(), ':');
  if (colons == 0) return host + ":" + kDefaultPort;
  if (colons > 1) return "[" + host + "]:" + kDefaultPort;  // a bare IPv6 address
  return host;
}

}  // namespace

std::string with_default_port(const std::string& target) {
  if (starts_with(target, "dns:")) {
    std::string rest = target.substr(4);
    if (starts_with(rest, "//")) {  // dns://[authority]/host
      auto slash = rest.find('/', 2);
      if (slash == std::string::npos) return target;  // not a dns: URI gRPC takes; its error says so
      return "dns:" + rest.substr(0, slash + 1) + host_with_port(rest.substr(slash + 1));
    }
    return "dns:" + host_with_port(rest);
  }
  for (const char* scheme : {"unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:", "xds:", "google-c2p:"}) {
    if (starts_with(target, scheme)) return target;
  }
  if (target.find("://") != std::string::npos) return target;
  return host_with_port(target);
}

bool balances(const std::string& target) {
  if (starts_with(target, "dns:")) return true;
  auto colon = target.find(':');
  if (colon == std::string::npos) return false;
  std::string scheme = target.substr(0, colon);
  bool lists = scheme == "ipv4" || scheme == "ipv6" || scheme == "unix";
  return lists && target.find(',', colon) != std::string::npos;
}

std::string service_config(bool balanced) {
  // Retries: at most 4 attempts, 0.1 s backoff doubling to 1 s, only where the server said
  // UNAVAILABLE (nothing ran); gRPC retries a stream only before its first response.
  std::string config = "{";
  if (balanced) config += R"("loadBalancingConfig": [{"round_robin": {}}], )";
  config += R"("methodConfig": [{)"
            R"("name": [{"service": "facedet.v1.FaceDetector"}], )"
            R"("waitForReady": true, )"
            R"("retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s", )"
            R"("backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})";
  return config;
}

}  // namespace facedet_cpp
