// The command line of facedet-cpp: the same commands, flags and exit statuses as the Python
// `facedet detect` / `facedet stream` (clients/python/facedet/client/commands.py).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace facedet_cpp {

// Exit statuses, as the Python CLI's --help lists them.
constexpr int kExitOk = 0;           // every image (frame) went well
constexpr int kExitFailed = 1;       // an image or frame failed, or a file could not be read
constexpr int kExitBadArguments = 2; // the command line was wrong
constexpr int kExitUnreachable = 3;  // no FaceDetector answered at --server

constexpr const char* kDefaultServer = "localhost:50051";
constexpr double kDetectTimeout = 30.0;   // seconds per image, connecting included
constexpr double kConnectTimeout = 10.0;  // seconds for the server to answer at all

struct Security {
  std::string ca_file;    // --tls-ca: the CA that signed the server's certificate
  std::string cert_file;  // --tls-cert: this client's certificate (mutual TLS)
  std::string key_file;   // --tls-key: its private key
  std::string token_file; // --token-file: the server's bearer token
  bool uses_tls() const { return !ca_file.empty() || !cert_file.empty() || !key_file.empty(); }
};

struct Options {  // DetectionOptions; zero = the server's default
  float min_confidence = 0;
  float iou_threshold = 0;
  unsigned max_faces = 0;
  float min_face_size = 0;
  bool ignore_exif_orientation = false;
};

struct Args {
  std::string command;              // "detect" or "stream"
  std::vector<std::string> inputs;  // detect: the images; stream: the one folder
  std::string server;
  std::optional<double> timeout;    // detect: per image (default 30); stream: whole stream (none)
  double connect_timeout = kConnectTimeout;
  bool json = false;
  unsigned every = 1;               // stream: send every Nth file
  std::optional<unsigned> max_frames;
  Security security;
  Options options;
};

// Parses argv. On -h/--help it prints the usage and exits 0; on a bad command line it prints
// the usage and the reason to stderr and exits kExitBadArguments (as argparse does).
Args parse_args(int argc, char** argv);

}  // namespace facedet_cpp
