// facedet-cpp: the C++ example client. `detect IMG...` sends each image with the unary
// DetectFaces; `stream DIR` sends a folder's images over one bidirectional StreamDetectFaces.
// Command line, output and exit statuses as the Python `facedet detect` / `facedet stream`.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "cli.h"
#include "client.h"
#include "output.h"

namespace fs = std::filesystem;
namespace pb = facedet::v1;
using namespace facedet_cpp;

namespace {

int unreachable(const std::string& command, const std::string& why) {
  std::fprintf(stderr,
               "facedet-cpp %s: %s; start one with `facedet serve`, or point --server / FACEDET_SERVER "
               "at a running one\n",
               command.c_str(), why.c_str());
  return kExitUnreachable;
}

Clock::time_point after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

void set_options(const Options& from, pb::DetectionOptions* to) {
  to->set_min_confidence(from.min_confidence);
  to->set_iou_threshold(from.iou_threshold);
  to->set_max_faces(from.max_faces);
  to->set_min_face_size(from.min_face_size);
  to->set_ignore_exif_orientation(from.ignore_exif_orientation);
}

// The image file's bytes; std::runtime_error naming the file as the Python client does.
std::string read_image(const std::string& path) {
  std::error_code error;
  if (!fs::exists(path, error)) throw std::runtime_error(path + ": no such file");
  if (fs::is_directory(path, error)) throw std::runtime_error(path + ": is a folder, not an image file");
  std::string data;
  try {
    data = read_file(path);
  } catch (const std::runtime_error& why) {
    throw std::runtime_error(path + ": cannot read it (" + why.what() + ")");
  }
  if (data.empty()) throw std::runtime_error(path + ": the file is empty (0 bytes)");
  return data;
}

void fail_image(const Args& args, const std::string& file, const char* code, const std::string& message) {
  std::fprintf(stderr, "facedet-cpp detect: %s: %s\n", code, message.c_str());
  if (args.json) std::printf("%s\n", json_error_line(file, code, message).c_str());
  std::fflush(stdout);
}

int run_detect(const Args& args, Client& client) {
  int status = kExitOk;
  bool connected = false;
  for (const auto& image : args.inputs) {
    pb::DetectFacesRequest request;
    try {
      request.set_encoded(read_image(image));
    } catch (const std::runtime_error& why) {
      fail_image(args, image, "INVALID_ARGUMENT", why.what());
      status = kExitFailed;
      continue;
    }
    set_options(args.options, request.mutable_options());
    auto deadline = after(*args.timeout);
    if (!connected) {  // --timeout covers connecting too
      double budget = std::min(*args.timeout, args.connect_timeout);
      std::string why = client.connect(std::min(deadline, after(budget)), budget);
      if (!why.empty()) return unreachable("detect", why);
      connected = true;
    }
    auto context = client.context(deadline);
    pb::DetectFacesResponse response;
    grpc::Status call = client.stub().DetectFaces(context.get(), request, &response);
    if (!call.ok()) {
      if (call.error_code() == grpc::StatusCode::UNAVAILABLE) {
        return unreachable("detect", "the server at " + client.target() + " is not available (" +
                                         call.error_message() + ")");
      }
      // After a deadline, check again that a server answers before the next image.
      connected = call.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED;
      fail_image(args, image, code_name(static_cast<int>(call.error_code())), naming(image, call.error_message()));
      status = kExitFailed;
      continue;
    }
    if (args.json) {
      std::printf("%s\n", json_line(image, response).c_str());
    } else {
      print_faces(image, response);
    }
    std::fflush(stdout);
  }
  return status;
}

// The folder's .jpg/.jpeg/.png files in name order (frame i is file i, as the Python CLI).
std::vector<std::string> folder_files(const std::string& folder) {
  std::error_code error;
  if (!fs::is_directory(folder, error)) {
    throw std::runtime_error(fs::exists(folder, error)
                                 ? folder + " is not a folder (facedet-cpp streams a folder of JPEG/PNG "
                                            "files; `facedet stream` also reads videos)"
                                 : "no such folder: " + folder);
  }
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(folder)) {
    std::string suffix = entry.path().extension().string();
    std::transform(suffix.begin(), suffix.end(), suffix.begin(), [](unsigned char c) { return std::tolower(c); });
    if (suffix == ".jpg" || suffix == ".jpeg" || suffix == ".png") files.push_back(entry.path().string());
  }
  if (files.empty()) throw std::runtime_error("no .jpg, .jpeg or .png files in " + folder);
  std::sort(files.begin(), files.end());
  return files;
}

int run_stream(const Args& args, Client& client) {
  std::vector<std::string> files;
  try {
    files = folder_files(args.inputs[0]);
  } catch (const std::exception& why) {
    std::fprintf(stderr, "facedet-cpp stream: %s\n", why.what());
    return kExitFailed;
  }
  FILE* summary_to = args.json ? stderr : stdout;
  auto start = std::chrono::steady_clock::now();
  std::optional<Clock::time_point> deadline;
  if (args.timeout) deadline = after(*args.timeout);
  double budget = args.timeout ? std::min(*args.timeout, args.connect_timeout) : args.connect_timeout;
  std::string why = client.connect(deadline ? std::min(*deadline, after(budget)) : after(budget), budget);
  if (!why.empty()) return unreachable("stream", why);

  auto context = client.context(deadline);
  auto stream = client.stub().StreamDetectFaces(context.get());
  // One thread writes the frames while this one reads the answers: the server keeps several
  // frames in flight, and gRPC's flow control bounds how far the writer runs ahead.
  std::string read_error;  // set by the writer before it stops; read after join()
  std::thread writer([&] {
    unsigned sent = 0;
    for (size_t index = 0; index < files.size(); ++index) {
      if (args.max_frames && sent >= *args.max_frames) break;
      if (index % args.every != 0) continue;
      pb::DetectFacesRequest request;
      try {
        request.set_encoded(read_file(files[index]));
      } catch (const std::runtime_error& error) {
        read_error = "cannot read " + files[index] + ": " + error.what();
        break;
      }
      set_options(args.options, request.mutable_options());
      request.set_frame_id(index);
      if (!stream->Write(request)) break;  // the call ended; Finish() says why
      ++sent;
    }
    stream->WritesDone();
  });

  unsigned received = 0, faces = 0, failed = 0;
  pb::DetectFacesResponse response;
  while (stream->Read(&response)) {
    ++received;
    uint64_t id = response.frame_id();
    std::string file = id < files.size() ? files[id] : args.inputs[0];
    if (response.has_error()) {
      response.mutable_error()->set_message(naming(file, response.error().message()));
      ++failed;
    } else {
      faces += response.faces_size();
    }
    if (args.json) {
      std::printf("%s\n", json_line(file, response).c_str());
    } else if (response.has_error()) {
      std::printf("frame %llu: %s: %s\n", static_cast<unsigned long long>(id), code_name(response.error().code()),
                  response.error().message().c_str());
    } else {
      int count = response.faces_size();
      std::printf("frame %llu: %d face%s\n", static_cast<unsigned long long>(id), count, count != 1 ? "s" : "");
    }
    std::fflush(stdout);
  }
  writer.join();
  grpc::Status status = stream->Finish();
  if (!status.ok()) {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && received == 0) {
      return unreachable("stream", "the server at " + client.target() + " is not available (" +
                                       status.error_message() + ")");
    }
    std::fprintf(stderr, "facedet-cpp stream: stream failed: %s: %s\n",
                 code_name(static_cast<int>(status.error_code())), status.error_message().c_str());
    return kExitFailed;
  }
  if (!read_error.empty()) {
    std::fprintf(stderr, "facedet-cpp stream: after %u frames: %s\n", received, read_error.c_str());
    return kExitFailed;
  }
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(summary_to, "%u frames, %u faces, %u failed in %.2f s: %.1f frames/s\n", received, faces, failed,
               elapsed, elapsed > 0 ? received / elapsed : 0.0);
  return failed ? kExitFailed : kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse_args(argc, argv);
  std::unique_ptr<Client> client;
  try {
    client = std::make_unique<Client>(args);
  } catch (const std::runtime_error& why) {  // an unreadable --tls-* or --token-file
    std::fprintf(stderr, "facedet-cpp: %s\n", why.what());
    return kExitFailed;
  }
  return args.command == "detect" ? run_detect(args, *client) : run_stream(args, *client);
}
