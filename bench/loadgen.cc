// Closed-loop gRPC load generator in C++, for the benchmark (bench/run.py).
//
// Why: bench/loadgen.py spends ~0.28 ms of CPU per call, and on this 2-core machine the client
// shares the cores with the server it measures, so a Python client takes CPU away from the
// server and caps what it can show. This client costs a fraction of that, so more of the
// machine is left to the server under test.
//
// It is a generic-stub client: it sends pre-serialized request messages (one file each,
// written by bench/native_loadgen.py) to any unary method and never decodes the answers, so
// the same binary drives this server, MLServer and KServe, over the Open Inference Protocol
// or the fashion_mnist API.
//
// What it does: CONCURRENCY callers each send a request, wait for the answer, and send the
// next (closed loop), rotating over the request files. Every caller's first answer must be OK
// (otherwise it is reported under `errors` as "first answer CODE") and is never measured. After
// WARMUP seconds the window opens for DURATION seconds; a call counts when it is sent and
// answered inside the window. A single caller keeps one connection, as a real lone client
// does; several callers rotate over CHANNELS connections, because a multi-process server
// behind SO_REUSEPORT gets connections, not calls, spread over its processes by the kernel.
// With --first-answer FILE it writes caller 0's first answer there, for the caller to decode
// and check. Calls have a deadline (--deadline-ms, default 10 s) and the window is at most
// 300 s, so a run always ends. Targets must be loopback (127.0.0.1, ::1 or localhost): this tool never sends load anywhere
// else.
//
// It prints one JSON line: requests, errors by status code, requests/s, p50/p90/p99/mean
// latency in ms and its own CPU (getrusage, all threads) over the window. On stderr it writes
// "loadgen: window start" and "loadgen: window end" as the window opens and closes, so that a
// caller can sample the server's CPU over the same window.
//
// Build (Debian: apt-get install g++ pkg-config libgrpc++-dev), or let
// bench/native_loadgen.py build it into .work/bin/loadgen (one command, on one line):
//   g++ -O2 -std=c++17 bench/loadgen.cc -o .work/bin/loadgen
//       $(pkg-config --cflags --libs grpc++ grpc)
// Run (one line):
//   .work/bin/loadgen --target 127.0.0.1:8001 --method /inference.GRPCInferenceService/ModelInfer
//       --concurrency 8 --warmup 1 --duration 10 --channels 16 req_0.bin req_1.bin ...
// Exit status: 0 after a run (even with errors: see the JSON), 1 if a connection could not be
// made, 2 for bad arguments or a non-loopback target.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kMaxDurationS = 300;
constexpr double kMaxWarmupS = 60;
constexpr int kMaxConcurrency = 4096;
constexpr int kMaxChannels = 256;
constexpr int kStatusCodes = 17;  // grpc::StatusCode OK (0) .. UNAUTHENTICATED (16)

struct Options {
  std::string target;
  std::string method;
  int concurrency = 1;
  double warmup_s = 1;
  double duration_s = 5;
  int channels = 1;
  int deadline_ms = 10000;
  std::string first_answer_file;  // where to write caller 0's first answer, for a decode check
  std::vector<std::string> request_files;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "loadgen: " << message << "\n"
            << "usage: loadgen --target HOST:PORT --method /package.Service/Method\n"
               "               [--concurrency N] [--warmup S] [--duration S] [--channels N]\n"
               "               [--deadline-ms MS] [--first-answer FILE] REQUEST_FILE...\n"
               "HOST must be 127.0.0.1, ::1 ([::1]) or localhost; each REQUEST_FILE holds one\n"
               "serialized request message.\n";
  std::exit(2);
}

// "127.0.0.1:8001", "localhost:8001" and "[::1]:8001" pass; anything else ends the program.
void require_loopback(const std::string& target) {
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos || colon + 1 == target.size() ||
      target.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
    usage_error("--target must be HOST:PORT, got '" + target + "'");
  }
  const std::string host = target.substr(0, colon);
  if (host != "127.0.0.1" && host != "localhost" && host != "[::1]") {
    usage_error("--target " + target + " is not loopback: load stays on this host");
  }
}

double parse_number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') usage_error(flag + " needs a number, got '" + text + "'");
  return value;
}

int parse_integer(const std::string& flag, const std::string& text) {
  const double value = parse_number(flag, text);
  if (value != std::floor(value) || std::fabs(value) > 1e9) {
    usage_error(flag + " needs an integer, got " + text);
  }
  return static_cast<int>(value);
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) != 0) {
      options.request_files.push_back(flag);
      continue;
    }
    std::string value;
    if (const size_t equals = flag.find('='); equals != std::string::npos) {
      value = flag.substr(equals + 1);
      flag.resize(equals);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      usage_error(flag + " needs a value");
    }
    if (flag == "--target") {
      options.target = value;
    } else if (flag == "--method") {
      options.method = value;
    } else if (flag == "--concurrency") {
      options.concurrency = parse_integer(flag, value);
    } else if (flag == "--warmup") {
      options.warmup_s = parse_number(flag, value);
    } else if (flag == "--duration") {
      options.duration_s = parse_number(flag, value);
    } else if (flag == "--channels") {
      options.channels = parse_integer(flag, value);
    } else if (flag == "--deadline-ms") {
      options.deadline_ms = parse_integer(flag, value);
    } else if (flag == "--first-answer") {
      options.first_answer_file = value;
    } else {
      usage_error("unknown flag " + flag);
    }
  }
  if (options.target.empty() || options.method.empty()) {
    usage_error("--target and --method are required");
  }
  require_loopback(options.target);
  if (options.method.front() != '/') usage_error("--method must look like /package.Service/Method");
  if (options.request_files.empty()) usage_error("no request files");
  if (!(options.duration_s > 0 && options.duration_s <= kMaxDurationS)) {
    usage_error("--duration must be in (0, " + std::to_string(int(kMaxDurationS)) + "]");
  }
  if (!(options.warmup_s >= 0 && options.warmup_s <= kMaxWarmupS)) {
    usage_error("--warmup must be in [0, " + std::to_string(int(kMaxWarmupS)) + "]");
  }
  if (options.concurrency < 1 || options.concurrency > kMaxConcurrency) {
    usage_error("--concurrency must be in [1, " + std::to_string(kMaxConcurrency) + "]");
  }
  if (options.channels < 1 || options.channels > kMaxChannels) {
    usage_error("--channels must be in [1, " + std::to_string(kMaxChannels) + "]");
  }
  if (options.deadline_ms < 1) usage_error("--deadline-ms must be at least 1");
  return options;
}

grpc::ByteBuffer read_request(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) usage_error("cannot read request file " + path);
  const std::string bytes{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string byte_buffer_contents(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string contents;
  if (!buffer.Dump(&slices).ok()) return contents;
  for (const grpc::Slice& slice : slices) {
    contents.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return contents;
}

const char* status_code_name(int code) {
  static constexpr std::array<const char*, kStatusCodes> kNames = {
      "OK",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED"};
  return code >= 0 && code < kStatusCodes ? kNames[code] : "UNKNOWN";
}

double seconds_of(const timeval& time) { return time.tv_sec + time.tv_usec / 1e6; }

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);  // all threads of this process, gRPC's included
  return seconds_of(usage.ru_utime) + seconds_of(usage.ru_stime);
}

// What all callers share: read-only during the run except for the count of running callers.
struct LoadRun {
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;  // one per connection
  std::vector<grpc::ByteBuffer> requests;
  std::string method;
  std::chrono::milliseconds deadline{};
  Clock::time_point window_start, window_end;

  std::mutex mutex;
  std::condition_variable all_done;
  int callers_running = 0;

  void caller_finished() {
    std::lock_guard<std::mutex> lock(mutex);
    if (--callers_running == 0) all_done.notify_all();
  }
};

// One closed-loop caller. Its state is only touched by its own chain of calls (the next call
// starts from the previous one's completion), so it needs no lock; the main thread reads it
// after LoadRun::all_done.
class Caller {
 public:
  Caller(LoadRun& run, int index) : run_(run), index_(index) {}

  void send() {
    const Clock::time_point now = Clock::now();
    if (now >= run_.window_end) {
      run_.caller_finished();
      return;
    }
    // a ClientContext serves one call; replacing it from the previous call's completion is
    // what gRPC's own callback benchmark client does
    context_ = std::make_unique<grpc::ClientContext>();
    context_->set_deadline(std::chrono::system_clock::now() + run_.deadline);
    const grpc::ByteBuffer& request = run_.requests[(index_ + sent_) % run_.requests.size()];
    grpc::GenericStub& stub = *run_.stubs[(index_ + sent_) % run_.stubs.size()];
    ++sent_;
    sent_at_ = now;
    stub.UnaryCall(context_.get(), run_.method, grpc::StubOptions(), &request, &answer_,
                   [this](grpc::Status status) { on_answer(status); });
  }

  const std::vector<int64_t>& latencies_ns() const { return latencies_ns_; }
  const std::array<int64_t, kStatusCodes>& errors() const { return errors_; }
  std::optional<int> first_answer_error() const { return first_answer_error_; }
  const std::string& first_answer() const { return first_answer_; }

 private:
  void on_answer(const grpc::Status& status) {
    const Clock::time_point answered_at = Clock::now();
    if (sent_ == 1) {  // the first answer is a check, never a measurement
      if (status.ok()) {
        if (index_ == 0) first_answer_ = byte_buffer_contents(answer_);
      } else {
        first_answer_error_ = status.error_code();
      }
    } else if (sent_at_ >= run_.window_start && answered_at <= run_.window_end) {
      if (status.ok()) {
        latencies_ns_.push_back(std::chrono::nanoseconds(answered_at - sent_at_).count());
      } else {
        ++errors_[std::clamp(static_cast<int>(status.error_code()), 0, kStatusCodes - 1)];
      }
    }
    send();
  }

  LoadRun& run_;
  const int index_;
  size_t sent_ = 0;
  Clock::time_point sent_at_;
  std::unique_ptr<grpc::ClientContext> context_;
  grpc::ByteBuffer answer_;
  std::vector<int64_t> latencies_ns_;
  std::array<int64_t, kStatusCodes> errors_{};
  std::optional<int> first_answer_error_;
  std::string first_answer_;
};

// Linear interpolation between closest ranks, as numpy.percentile does by default.
double percentile_ms(const std::vector<int64_t>& sorted_ns, double percent) {
  const double rank = percent / 100 * (sorted_ns.size() - 1);
  const size_t below = static_cast<size_t>(rank);
  const size_t above = std::min(below + 1, sorted_ns.size() - 1);
  const double fraction = rank - below;
  return (sorted_ns[below] * (1 - fraction) + sorted_ns[above] * fraction) / 1e6;
}

std::string json_string(const std::string& text) {
  std::string quoted = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      quoted += '\\';
      quoted += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      quoted += escaped;
    } else {
      quoted += c;
    }
  }
  return quoted + "\"";
}

std::string json_number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.10g", value);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse_options(argc, argv);
  // a lone caller keeps to one connection, as a real single client does
  const int channels = options.concurrency == 1 ? 1 : options.channels;

  LoadRun run;
  run.method = options.method;
  run.deadline = std::chrono::milliseconds(options.deadline_ms);
  for (const std::string& path : options.request_files) run.requests.push_back(read_request(path));
  for (int i = 0; i < channels; ++i) {
    grpc::ChannelArguments arguments;
    // a channel of its own subchannel pool is a TCP connection of its own
    arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    arguments.SetMaxReceiveMessageSize(-1);
    arguments.SetMaxSendMessageSize(-1);
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel(options.target, grpc::InsecureChannelCredentials(), arguments);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + run.deadline)) {
      std::cerr << "loadgen: cannot connect to " << options.target << " within "
                << options.deadline_ms << " ms\n";
      return 1;
    }
    run.stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  }

  const Clock::time_point started = Clock::now();
  run.window_start = started + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(options.warmup_s));
  run.window_end = run.window_start + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(options.duration_s));
  std::vector<std::unique_ptr<Caller>> callers;
  for (int i = 0; i < options.concurrency; ++i) callers.push_back(std::make_unique<Caller>(run, i));
  run.callers_running = options.concurrency;
  for (auto& caller : callers) caller->send();

  std::this_thread::sleep_until(run.window_start);
  const double cpu_at_start = cpu_seconds();
  std::cerr << "loadgen: window start" << std::endl;
  std::this_thread::sleep_until(run.window_end);
  const double client_cpu_s = cpu_seconds() - cpu_at_start;
  std::cerr << "loadgen: window end" << std::endl;
  {
    // bounded: a call still in flight ends by its deadline
    std::unique_lock<std::mutex> lock(run.mutex);
    run.all_done.wait(lock, [&run] { return run.callers_running == 0; });
  }

  std::vector<int64_t> latencies_ns;
  std::array<int64_t, kStatusCodes> errors{};
  std::array<int64_t, kStatusCodes> first_answer_errors{};
  for (const auto& caller : callers) {
    latencies_ns.insert(latencies_ns.end(), caller->latencies_ns().begin(),
                        caller->latencies_ns().end());
    for (int code = 0; code < kStatusCodes; ++code) errors[code] += caller->errors()[code];
    if (const std::optional<int> code = caller->first_answer_error()) {
      ++first_answer_errors[std::clamp(*code, 0, kStatusCodes - 1)];
    }
  }
  if (!options.first_answer_file.empty()) {
    std::ofstream(options.first_answer_file, std::ios::binary) << callers[0]->first_answer();
  }
  std::sort(latencies_ns.begin(), latencies_ns.end());
  const size_t requests = latencies_ns.size();
  double total_ns = 0;
  for (const int64_t ns : latencies_ns) total_ns += ns;

  std::string error_counts;
  auto add_errors = [&error_counts](const std::string& prefix,
                                    const std::array<int64_t, kStatusCodes>& counts) {
    for (int code = 0; code < kStatusCodes; ++code) {
      if (counts[code] == 0) continue;
      if (!error_counts.empty()) error_counts += ", ";
      error_counts += json_string(prefix + status_code_name(code)) + ": " +
                      std::to_string(counts[code]);
    }
  };
  add_errors("first answer ", first_answer_errors);
  add_errors("", errors);
  // null, not a number, when nothing was measured
  auto latency_ms = [&](double percent) -> std::string {
    return requests ? json_number(percentile_ms(latencies_ns, percent)) : "null";
  };

  std::ostringstream json;
  json << "{\"target\": " << json_string(options.target)
       << ", \"method\": " << json_string(options.method)
       << ", \"concurrency\": " << options.concurrency << ", \"channels\": " << channels
       << ", \"warmup_s\": " << options.warmup_s << ", \"duration_s\": " << options.duration_s
       << ", \"requests\": " << requests << ", \"errors\": {" << error_counts << "}"
       << ", \"requests_per_s\": " << json_number(requests / options.duration_s)
       << ", \"p50_ms\": " << latency_ms(50) << ", \"p90_ms\": " << latency_ms(90)
       << ", \"p99_ms\": " << latency_ms(99)
       << ", \"mean_ms\": " << (requests ? json_number(total_ns / requests / 1e6) : "null")
       << ", \"client_cpu_s\": " << json_number(client_cpu_s)
       << ", \"client_cpu_ms_per_request\": "
       << (requests ? json_number(1e3 * client_cpu_s / requests) : "null") << "}";
  std::cout << json.str() << std::endl;
  return 0;
}
