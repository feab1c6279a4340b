// Argument parsing by hand: the flags are few, and a parser library would be one more
// dependency to install from Debian for an example client.
#include "cli.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>

namespace facedet_cpp {
namespace {

const char* const kUsage =
    "usage: facedet-cpp detect IMG... [--server ADDR] [--json] [--timeout S] [flags]\n"
    "       facedet-cpp stream DIR [--server ADDR] [--json] [--timeout S] [flags]\n";

const char* const kHelp =
    "\n"
    "detect: send each image (JPEG or PNG, as it is) to a facedet server with DetectFaces and\n"
    "print the faces found: one line per face, or with --json one JSON line per image.\n"
    "stream: send a folder's .jpg/.jpeg/.png files, in name order, over one StreamDetectFaces\n"
    "stream and print one line per frame, in order, then a summary (stderr with --json).\n"
    "\n"
    "  --server ADDR         HOST:PORT (HOST alone: port 50051), unix:///path.sock, or several\n"
    "                        servers to spread calls over (round_robin): ipv4:HOST:PORT,HOST:PORT,\n"
    "                        unix:/a.sock,/b.sock, or dns:///NAME:PORT (every address of NAME)\n"
    "                        [env FACEDET_SERVER; default localhost:50051]\n"
    "  --json                JSON Lines: per image, the DetectFacesResponse as proto JSON plus\n"
    "                        \"file\"; a failed image is {\"file\", \"error\": {\"code\", \"message\"}}\n"
    "  --timeout S           detect: seconds for each image, connecting included (default 30);\n"
    "                        stream: seconds for the whole stream (default: none)\n"
    "  --connect-timeout S   seconds to wait for the server to answer at all (default 10)\n"
    "  --min-confidence X    0 = server default (0.5)\n"
    "  --iou-threshold X     0 = server default (0.5)\n"
    "  --max-faces N         0 = server default\n"
    "  --min-face-size X     pixels; 0 = keep all\n"
    "  --ignore-exif-orientation\n"
    "                        detect in a JPEG's pixels as stored, not in the upright picture\n"
    "  --every N             stream: send every Nth file\n"
    "  --max-frames N        stream: stop after sending N frames\n"
    "\n"
    "security (TLS and token, docs/security.md):\n"
    "  --tls-ca PEM          CA that signed the server's certificate: use TLS\n"
    "  --tls-cert PEM        this client's certificate, for mutual TLS\n"
    "  --tls-key PEM         private key of --tls-cert\n"
    "  --token-file PATH     file holding the server's bearer token [env FACEDET_TOKEN_FILE]\n"
    "\n"
    "exit status:\n"
    "  0  every image (frame) went well\n"
    "  1  an image or frame failed: unreadable, not an image, rejected by the server\n"
    "  2  bad arguments\n"
    "  3  no FaceDetector answered at --server: nothing listens there (refused), or nothing\n"
    "     answered within --connect-timeout (default 10 s) or --timeout\n";

[[noreturn]] void usage_error(const std::string& why) {
  std::fprintf(stderr, "%sfacedet-cpp: error: %s\n", kUsage, why.c_str());
  std::exit(kExitBadArguments);
}

double number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno != 0 || std::isnan(value)) {
    usage_error("argument " + flag + ": invalid number: '" + text + "'");
  }
  return value;
}

double positive(const std::string& flag, const std::string& text) {
  double value = number(flag, text);
  if (!(value > 0)) usage_error("argument " + flag + ": must be > 0, got " + text);
  return value;
}

unsigned count(const std::string& flag, const std::string& text, unsigned minimum) {
  double value = number(flag, text);
  if (value != std::floor(value) || value < minimum || value > 4294967295.0) {
    usage_error("argument " + flag + ": must be a whole number >= " + std::to_string(minimum) +
                ", got " + text);
  }
  return static_cast<unsigned>(value);
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

}  // namespace

Args parse_args(int argc, char** argv) {
  std::vector<std::string> words(argv + 1, argv + argc);
  for (const auto& word : words) {
    if (word == "-h" || word == "--help") {
      std::printf("%s%s", kUsage, kHelp);
      std::exit(kExitOk);
    }
    if (word == "--") break;
  }
  Args args;
  args.server = env_or("FACEDET_SERVER", kDefaultServer);
  args.security.token_file = env_or("FACEDET_TOKEN_FILE", "");
  bool stream = false;
  std::optional<double> timeout;

  using Setter = std::function<void(const std::string&, const std::string&)>;
  const std::map<std::string, Setter> with_value = {
      {"--server", [&](auto&, auto& v) { args.server = v; }},
      {"--timeout", [&](auto& f, auto& v) { timeout = positive(f, v); }},
      {"--connect-timeout", [&](auto& f, auto& v) { args.connect_timeout = positive(f, v); }},
      {"--tls-ca", [&](auto&, auto& v) { args.security.ca_file = v; }},
      {"--tls-cert", [&](auto&, auto& v) { args.security.cert_file = v; }},
      {"--tls-key", [&](auto&, auto& v) { args.security.key_file = v; }},
      {"--token-file", [&](auto&, auto& v) { args.security.token_file = v; }},
      {"--min-confidence", [&](auto& f, auto& v) { args.options.min_confidence = number(f, v); }},
      {"--iou-threshold", [&](auto& f, auto& v) { args.options.iou_threshold = number(f, v); }},
      {"--max-faces", [&](auto& f, auto& v) { args.options.max_faces = count(f, v, 0); }},
      {"--min-face-size", [&](auto& f, auto& v) { args.options.min_face_size = number(f, v); }},
      {"--every", [&](auto& f, auto& v) { args.every = count(f, v, 1); }},
      {"--max-frames", [&](auto& f, auto& v) { args.max_frames = count(f, v, 1); }},
  };
  const std::map<std::string, bool*> switches = {
      {"--json", &args.json},
      {"--ignore-exif-orientation", &args.options.ignore_exif_orientation},
  };
  const auto stream_only = {"--every", "--max-frames"};

  bool options_done = false;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& word = words[i];
    if (options_done || word.size() < 2 || word[0] != '-' || word == "-") {
      if (args.command.empty()) {
        if (word != "detect" && word != "stream") {
          usage_error("argument command: invalid choice: '" + word + "' (choose from 'detect', 'stream')");
        }
        args.command = word;
        stream = word == "stream";
      } else {
        args.inputs.push_back(word);
      }
      continue;
    }
    if (word == "--") {
      options_done = true;
      continue;
    }
    std::string flag = word, value;
    bool inline_value = false;
    if (auto eq = word.find('='); eq != std::string::npos && word.rfind("--", 0) == 0) {
      flag = word.substr(0, eq);
      value = word.substr(eq + 1);
      inline_value = true;
    }
    if (auto found = switches.find(flag); found != switches.end()) {
      if (inline_value) usage_error("argument " + flag + ": ignored explicit argument '" + value + "'");
      *found->second = true;
      continue;
    }
    auto found = with_value.find(flag);
    if (found == with_value.end()) usage_error("unrecognized arguments: " + word);
    if (!inline_value) {
      if (i + 1 >= words.size()) usage_error("argument " + flag + ": expected one argument");
      value = words[++i];
    }
    for (const char* only : stream_only) {
      if (flag == only && !stream) usage_error("unrecognized arguments: " + word);
    }
    found->second(flag, value);
  }

  if (args.command.empty()) usage_error("the following arguments are required: command");
  if (args.command == "detect") {
    if (args.inputs.empty()) usage_error("the following arguments are required: IMG");
    args.timeout = timeout.value_or(kDetectTimeout);
  } else {
    if (args.inputs.size() != 1) {
      usage_error(args.inputs.empty() ? "the following arguments are required: DIR"
                                      : "stream takes one folder, got " + std::to_string(args.inputs.size()));
    }
    args.timeout = timeout;
  }
  if (args.server.empty()) usage_error("argument --server: empty address");
  if (args.security.cert_file.empty() != args.security.key_file.empty()) {
    usage_error("--tls-cert and --tls-key go together (the client's certificate and its key)");
  }
  return args;
}

}  // namespace facedet_cpp
