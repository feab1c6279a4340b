// What --server names, and the service config the channel gets (no gRPC headers here).
#pragma once

#include <string>

namespace facedet_cpp {

// `target` with port 50051 where it names a host without one ("localhost" -> "localhost:50051",
// "dns:///svc" -> "dns:///svc:50051"; gRPC itself would dial 443). unix:, ipv4:, ipv6: and
// other schemes, and anything with a port, are left as they are. As the Python client's
// with_default_port (clients/python/facedet/client/channel.py).
std::string with_default_port(const std::string& target);

// Whether calls are spread with round_robin: a target listing several addresses (ipv4:, ipv6:
// and unix: take a comma-separated list) or a dns:/// name (which may resolve to several).
bool balances(const std::string& target);

// The channel's service config (gRPC's JSON): round_robin where `balanced`; for every
// FaceDetector method wait_for_ready (a call waits for a server rather than failing while one
// restarts) and a retry policy for UNAVAILABLE (a server starting or draining says so).
std::string service_config(bool balanced);

}  // namespace facedet_cpp
