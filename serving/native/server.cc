// The native gRPC server: gRPC C++ (async API, one generic service, one completion queue)
// listens; Python threads answer. serving/native/__init__.py is the Python side and says why it
// is built this way.
//
// One thread of ours polls the completion queue (the network too) and never runs Python nor
// takes the GIL: a new call is queued (`Calls`) once its first message is in, and its events
// (read, written, initial metadata sent, finished, done) only set flags and wake the Python
// thread waiting on that call's condition variable; it also sends the ends handed to it
// (below). gRPC's callback API would add two threads handing each event to each other, and
// an executor: ~9 thread switches per call at batch 1 x 1.
// Python's pool threads take calls with `Server.next_call()` and start every gRPC operation
// from `Call.read/write/finish`, the same way on every path; they release the GIL only where
// they may wait (`Waiting`). One exception: an OK end that its thread would send holding the
// GIL while others are at work is sent by the polling thread (an alarm on its queue).
//
// A call ends when Python finishes it, except a call no Python thread holds: one waiting in
// the queue, or one Python parked (`Call.park()`: a non-blocking handler such as health's
// Watch answers from other threads): when it is cancelled (its deadline too), it is finished
// here, CANCELLED, and lets go of its request; a queued one leaves the queue (a health call
// is skipped when its turn comes) and is listed for the metrics (`Server.dead()`). So calls
// whose clients gave up cost no Python work but a count. A call whose end Python asked to
// hear of (`Call.watch_end()`, for `add_callback`) is queued again when it is cancelled.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <grpc/support/log.h>
#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

// gRPC's error lines, one per line on stderr, but those a client causes at will, one a call or
// a connection (a compressed call refused, a failed TLS handshake: told by their message, not
// their file, whose assertions must still be heard), which only GRPC_VERBOSITY=INFO shows
// (`--log-level DEBUG`), and those of a bind: the exception says it.
std::atomic<bool> binding = false;

void Log(gpr_log_func_args* args) {
  std::string_view message = args->message;
  bool clients = message.starts_with("Compression algorithm") ||
                 message.starts_with("Handshake failed");
  if (binding || (clients && !gpr_should_log(GPR_LOG_SEVERITY_INFO))) return;
  // gRPC C++ 1.51 never accepts again on a port whose accept4 failed (EMFILE: no file
  // descriptor left; newer gRPC retries): the process stops as on SIGTERM, told by SIGRTMIN
  // (a second one does nothing more), draining what it serves, then exits 1 (serving.settings'
  // ACCEPTS_NO_MORE), so that its supervisor or service manager starts another (before, it
  // served on, the connections the kernel gave it waiting for good; then it exited 0)
  bool accepts_no_more = message.starts_with("Failed accept4");
  fprintf(stderr, "grpc %s %s:%d: %s%s\n", gpr_log_severity_string(args->severity), args->file,
          args->line, args->message,
          accepts_no_more ? ": this port accepts no more connections; stopping" : "");
  if (accepts_no_more) kill(getpid(), SIGRTMIN);  // the process: any thread may take it
}

class Call;
class Calls;
using Pairs = std::vector<std::pair<std::string, std::string>>;

// A queued call: new, cancelled and watched (its callbacks are due), or a new health call,
// which never waits for a thread at work to come back (a probe would time out under load).
enum Queued { kNew, kEnded, kHealth };
// A queued call this close to its deadline is passed over (`Call::Late`). 10 ms: a larger
// margin passes over calls with much of their time left (50 ms is a quarter of a 200 ms
// deadline); the figures measured did not separate them (BENCHMARKS.md, sixteenth session).
const gpr_timespec kLate = gpr_time_from_millis(10, GPR_TIMESPAN);
const size_t kDeadListed = 10000;
// A pool thread that finds no call spins this long (yielding its core to any other thread)
// before it sleeps, if no other thread spins: the next new call is then its own, taken at
// once, where a sleeping thread's wake-up cost a lone client ~15% of its latency
// (BENCHMARKS.md, thirty-fifth session). A thread that has been idle that long sleeps.
const auto kSpin = std::chrono::microseconds(300);

// The server whose call this Python thread is at work on (took, and is not waiting in one of
// its operations), if any. A thread that ends at work (SystemExit) gives its place back.
struct AtWork { Calls* calls = nullptr; ~AtWork(); };
thread_local AtWork at_work;

// The service (every method), its completion queue, and the calls (new, or cancelled and
// watched) that wait for a Python thread. While `max_running` threads are at work, a new call
// waits for one of them to come back rather than wake another.
class Calls {
 public:
  explicit Calls(int max_running) : max_running_(max_running) {}
  // Asks gRPC for the next call (a Call waits for it), on the queue of `Poll`.
  void Request();
  // The polling thread: runs every event of the queue until it is shut down and empty.
  void Poll();
  void Push(Call* call, Queued kind);
  // Blocks (unless `wait` is false) until a call may be taken; false once closed and empty (or,
  // not waiting, if none may be taken now: none queued, or only new calls while `max_running`
  // threads are at work). A cancelled call's news (its `add_callback`s) comes first: handlers
  // may wait on it.
  bool Pop(Call** call, bool* ended, bool wait);
  // Takes a new call that was cancelled while queued (and finished here) out of the queue; a
  // call not queued (taken, parked, never queued) is not found, nor a health call, which
  // waits for its turn and is skipped then (`Call::Take`). `listed`: for `TakeDead` (not a
  // call whose request never came in: gRPC refused it, or its client sent none).
  void Remove(Call* call, bool listed);
  // The status (its deadline's or its client's doing) and method of each call `Remove` took
  // out since the last time: no Python thread saw them, and the metrics count them (Python
  // takes them ten times a second; kDeadListed at most in between).
  Pairs TakeDead() { std::lock_guard<std::mutex> lock(mutex_); return std::exchange(dead_, {}); }
  // A thread other than the caller is at work (the caller may be one).
  bool Busy() const { return running_ > (at_work.calls == this); }
  // The thread at work waits in an operation of its call (`waiting`), or is back from it.
  void Waits(bool waiting) {
    std::lock_guard<std::mutex> lock(mutex_);
    running_ += waiting ? -1 : 1;
    if (waiting && !items_.empty() && running_ < max_running_) ready_.notify_one();
  }
  // Calls gRPC holds (requested, or not yet over): its queue may shut down once none is left.
  void Holds(int change) {
    std::lock_guard<std::mutex> lock(mutex_);
    if ((held_ += change) == 0) released_.notify_all();
  }
  // Once gRPC holds no call (the pool threads finish what is left), `Pop` ends: it gives the
  // calls still queued, then false.
  void Close() {
    std::unique_lock<std::mutex> lock(mutex_);
    released_.wait(lock, [this] { return held_ == 0; });
    closed_ = true;
    ready_.notify_all();
  }
  grpc::AsyncGenericService service;
  std::unique_ptr<grpc::ServerCompletionQueue> queue;

 private:
  std::mutex mutex_;
  std::condition_variable ready_, released_;
  int held_ = 0;
  std::deque<std::pair<Call*, Queued>> items_;
  bool closed_ = false;
  const int max_running_;
  std::atomic<int> running_ = 0;  // changed under the lock; Busy() reads it without
  std::atomic<uint64_t> next_id_{1};
  std::atomic<bool> spinning_ = false;  // set under the lock; a new call clears it, unwoken
  Pairs dead_;  // under mutex_; last, so as not to move the members a call's path reads
};

// What a completion-queue event is about: one of a call's operations, its arrival or its end.
enum Event { kArrived, kRead, kWritten, kMetadataSent, kFinished, kDone, kEnd, kEvents };
using Tag = std::pair<Call*, Event>;

// One call. It lives while gRPC (`rpc_`, until its operations and its end are over), a queue
// entry or a Python object holds it; `rpc_` goes once gRPC is done with it, so that a server's
// shutdown never waits for Python to let go of a finished call.
class Call {
 public:
  Call(Calls* calls, uint64_t id) : calls_(calls), id_(id), rpc_(new Rpc) {
    calls_->Holds(1);
    for (int event = 0; event < kEvents; ++event) tags_[event] = {this, Event(event)};
    rpc_->context.AsyncNotifyWhenDone(&tags_[kDone]);
    calls_->service.RequestCall(&rpc_->context, &rpc_->stream, calls_->queue.get(),
                                calls_->queue.get(), &tags_[kArrived]);
  }
  void Ref() { refs_.fetch_add(1); }
  void Unref() { if (refs_.fetch_sub(1) == 1) delete this; }
  uint64_t id() const { return id_; }
  grpc::GenericServerContext* context() { return &rpc_->context; }

  // The polling thread's part.
  void On(Event event, bool ok) {
    switch (event) {
      case kArrived:
        if (!ok) return calls_->Holds(-1), delete this;  // shutting down: no call came
        calls_->Request();
        Ref();  // the queue's: queued once its first message is in (or none will come), so a
        Locked([this] { Started(&reading_); });  // client that never sends it holds no thread
        return rpc_->stream.Read(&in_, &tags_[kRead]);
      case kRead:
        Release(&reading_, ok);
        if (std::exchange(queued_, true)) return;
        if (!Park()) return Unref();  // cancelled already: never queued
        late_at_ = gpr_time_sub(rpc_->context.raw_deadline(), kLate);
        return calls_->Push(this, rpc_->context.method().starts_with("/grpc.health.v1.Health/")
                                      ? kHealth : kNew);
      case kWritten: return Release(&writing_, ok);
      case kMetadataSent: return Release(&sending_metadata_, ok);
      case kDone: if (rpc_->context.IsCancelled()) OnCancel(); return Release();
      case kEnd: return End();
      default: return Release();  // kFinished
    }
  }
  void OnCancel() {
    auto [finish, tell] = Locked([this] {
      cancelled_ = true;
      changed_.notify_all();
      return std::pair(parked_ && !std::exchange(finished_, true), std::exchange(watched_, false));
    });
    if (finish) Drop();
    if (tell) calls_->Push(this, kEnded);
  }

  // What follows is called by Python threads, without the GIL where it may wait.

  // 1: a message (in `slice`), 0: no more (half-close or cancellation), -1: its bytes could
  // not be read.
  int Read(grpc::Slice* slice) {
    if (!Locked([this] { return std::exchange(first_read_, false); })) {
      if (!Begin(&reading_)) return 0;
      rpc_->stream.Read(&in_, &tags_[kRead]);
    }
    if (!Wait(&reading_)) return Locked([this] { read_closed_ = true; return 0; });
    return in_.DumpToSingleSlice(slice).ok() ? 1 : -1;
  }
  bool Write(const char* data, size_t size) {
    if (!Begin(&writing_)) return false;
    grpc::Slice slice(data, size);
    out_ = grpc::ByteBuffer(&slice, 1);
    Locked([this] { metadata_sent_ = true; });  // a write sends them
    rpc_->stream.Write(out_, &tags_[kWritten]);
    return Wait(&writing_);
  }
  // False if the call is finished or they were sent (gRPC C++ would abort the process).
  bool SendInitialMetadata(const Pairs& metadata) {
    if (!Begin(&sending_metadata_)) return false;
    if (Locked([this] { return std::exchange(metadata_sent_, true); }))
      return Release(&sending_metadata_, false), false;
    for (const auto& [key, value] : metadata) rpc_->context.AddInitialMetadata(key, value);
    rpc_->stream.SendInitialMetadata(&tags_[kMetadataSent]);
    return Wait(&sending_metadata_);
  }
  // Ends the call once (later calls do nothing), with `response` if the status is OK, after
  // the write or initial metadata in flight; false, doing nothing, if one is and `may_wait` is
  // not set (the caller holds the GIL: it must release it first).
  bool Complete(int code, const std::string& details, const Pairs& trailing,
                const char* response = nullptr, size_t size = 0, bool may_wait = true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto idle = [this] { return !writing_.busy && !sending_metadata_.busy; };
      if (!may_wait && !idle()) return false;
      changed_.wait(lock, idle);
      if (finished_) return true;
      finished_ = metadata_sent_ = true;  // first: draining lets go of the lock meanwhile
      if (code != 0) DrainBriefly(lock);
    }
    for (const auto& [key, value] : trailing) rpc_->context.AddTrailingMetadata(key, value);
    status_ = grpc::Status(static_cast<grpc::StatusCode>(code), details);
    grpc::Slice slice(response ? response : "", size);
    out_ = grpc::ByteBuffer(&slice, 1);
    respond_ = code == 0 && response;
    // With the GIL held while other threads are at work, the polling thread sends the end:
    // its system calls would keep them from the GIL (BENCHMARKS.md, eleventh session). A
    // deadline in the past queues the alarm's tag at once; "now" would wait for a timer.
    if (may_wait || !calls_->Busy()) End();
    else end_.emplace().Set(calls_->queue.get(), gpr_inf_past(GPR_CLOCK_MONOTONIC), &tags_[kEnd]);
    return true;
  }
  // No Python thread holds the call (queued, or its handler answers from other threads): a
  // cancellation finishes it. False if it is cancelled already (then it is finished now).
  bool Park() {
    bool finish = Locked([this] {
      parked_ = true;
      return cancelled_ && !std::exchange(finished_, true);
    });
    if (finish) Drop();
    return !finish;
  }
  // Its deadline is less than kLate away (a queued call's): while the oldest queued call is
  // late, threads take the newest calls first (whatever their deadlines), as it would likely
  // get its answer too late. Past capacity, oldest first answers few calls in time: each
  // waits about as long as the clients' deadlines (BENCHMARKS.md, "Issue 12, sixteenth
  // session"). A queue of calls without deadlines is served oldest first.
  bool Late() const { return gpr_time_cmp(gpr_now(late_at_.clock_type), late_at_) >= 0; }
  // A thread takes the queued call; false if it was finished meanwhile (cancelled): then the
  // queue lets go of it.
  bool Take() {
    if (Locked([this] { parked_ = false; return !finished_; })) return true;
    return Unref(), false;
  }
  // Queue this call again if it is cancelled; false if it is over already.
  bool WatchEnd() {
    return Locked([this] { return !cancelled_ && !finished_ && (watched_ = true); });
  }
  // first_read: its first message is read and not yet taken (taking it will not wait);
  // active: neither cancelled nor finished.
  struct State { bool first_read, finished, active; };
  State Now() {
    return Locked([this] {
      return State{first_read_ && !reading_.busy, finished_, !cancelled_ && !finished_};
    });
  }
  // The context may be read until the call is finished.
  // Runs use(context) under the lock unless the call is finished (then false).
  template <typename Use>
  bool WithContext(Use use) {
    return Locked([&] {
      if (!finished_) use(&rpc_->context);
      return !finished_;
    });
  }

 private:
  struct Operation { bool busy = false, ok = false; };
  struct Rpc {
    grpc::GenericServerContext context;
    grpc::GenericServerAsyncReaderWriter stream{&context};
  };
  // Ends the call (once: the caller set `finished_`, whose hold on `rpc_` the finish takes).
  void Finish(const grpc::Status& status) { rpc_->stream.Finish(status, &tags_[kFinished]); }
  // Ends a cancelled call no Python thread holds (none reads its request: it goes now).
  void Drop() {
    in_.Clear();
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled"));
    calls_->Remove(this, Locked([this] { return reading_.ok; }));  // parked: its first read's
  }
  // Sends the end that Complete claimed and made.
  void End() {
    if (!respond_) return Finish(status_);
    rpc_->stream.WriteAndFinish(out_, grpc::WriteOptions(), status_, &tags_[kFinished]);
  }
  // An operation starts (under the lock): it holds `rpc_` until its event.
  void Started(Operation* operation) { operation->busy = true, ++rpc_refs_; }
  // An operation is over (`ok`: it succeeded), or the call's end: `rpc_` goes with the last.
  void Release(Operation* operation = nullptr, bool ok = false) {
    bool last = Locked([&] {
      if (operation != nullptr) operation->busy = false, operation->ok = ok;
      changed_.notify_all();
      return --rpc_refs_ == 0;
    });
    if (!last) return;
    rpc_.reset();
    calls_->Holds(-1);
    Unref();
  }
  template <typename Action>
  auto Locked(Action action) -> decltype(action()) {
    std::lock_guard<std::mutex> lock(mutex_);
    return action();
  }
  // Before an error status, reads what the client is still sending, until its half-close,
  // for 50 ms at most: a status that overtakes a client's write makes grpc.aio clients report
  // INTERNAL ("Internal error from Core") instead of the status (e.g. a refused stream).
  void DrainBriefly(std::unique_lock<std::mutex>& lock) {
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
    while (!cancelled_ && !read_closed_) {
      if (!changed_.wait_until(lock, until, [this] { return !reading_.busy; })) return;
      first_read_ = false;
      if (!reading_.ok) return;
      Started(&reading_);
      lock.unlock();
      rpc_->stream.Read(&drained_, &tags_[kRead]);  // not in_: a Read may be copying it
      lock.lock();
    }
  }
  // One operation of a kind at a time: others wait for it (writes may come from many threads).
  bool Begin(Operation* operation) {
    auto lock = Idle(operation);
    if (!finished_) Started(operation);
    return !finished_;
  }
  bool Wait(Operation* operation) { auto lock = Idle(operation); return operation->ok; }
  std::unique_lock<std::mutex> Idle(Operation* operation) {  // locked, once it is over
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [operation] { return !operation->busy; });
    return lock;
  }

  Calls* calls_;
  const uint64_t id_;
  std::atomic<int> refs_{1};  // gRPC's (`rpc_`), the queue entry's, Python's
  std::unique_ptr<Rpc> rpc_;
  int rpc_refs_ = 2;  // its end (kDone), and until it is finished; then each operation
  Tag tags_[kEvents];
  std::mutex mutex_;
  std::condition_variable changed_;
  Operation reading_, writing_, sending_metadata_;
  bool cancelled_ = false, finished_ = false, parked_ = false, watched_ = false;
  bool metadata_sent_ = false;  // by SendInitialMetadata, a write or Complete
  bool first_read_ = true;  // started on arrival, not yet taken by Read
  bool queued_ = false;  // for a thread, once its first read was over (the polling thread's)
  bool read_closed_ = false;  // a read said the client sends no more
  grpc::ByteBuffer in_, out_, drained_;
  grpc::Status status_;  // the end Complete made: with out_ if `respond_`
  bool respond_ = false;
  std::optional<grpc::Alarm> end_;  // hands it to the polling thread
  gpr_timespec late_at_;  // its deadline less kLate, once queued
};

void Calls::Push(Call* call, Queued kind) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (kind == kEnded) call->Ref();  // a new call comes with its queue reference
  kind == kNew ? items_.emplace_back(call, kind) : items_.emplace_front(call, kind);
  if (kind == kNew && running_ < max_running_ && spinning_.exchange(false)) return;  // kSpin
  if (kind != kNew || running_ < max_running_) ready_.notify_one();
}

bool Calls::Pop(Call** call, bool* ended, bool wait) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (std::exchange(at_work.calls, nullptr) == this) --running_;
  auto may_take = [this] {
    return !items_.empty() &&
           (running_ < max_running_ || closed_ || items_.front().second != kNew);
  };
  do {
    if (wait && !spinning_ && !may_take() && !closed_) {  // kSpin
      spinning_ = true;
      lock.unlock();
      auto end = std::chrono::steady_clock::now() + kSpin;
      while (spinning_ && std::chrono::steady_clock::now() < end) std::this_thread::yield();
      lock.lock();
      spinning_ = false;
    }
    if (wait) ready_.wait(lock, [&] { return may_take() || closed_; });
    if (!may_take()) return false;
    bool newest = items_.front().second == kNew && items_.front().first->Late();  // all new
    auto [taken, kind] = newest ? items_.back() : items_.front();
    newest ? items_.pop_back() : items_.pop_front();
    *call = taken, *ended = kind == kEnded;
  } while (!*ended && !(*call)->Take());
  ++running_;
  at_work.calls = this;
  return true;
}

void Calls::Remove(Call* call, bool listed) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto queued = std::ranges::find(items_, std::pair(call, kNew));  // not kEnded: its news
  if (queued == items_.end()) return;  // taken meanwhile, or health: Take lets go of it
  items_.erase(queued);  // the oldest die first: found near the front
  if (listed && dead_.size() < kDeadListed)  // a path of any length and bytes: its first 200
    dead_.emplace_back(call->Late() ? "DEADLINE_EXCEEDED" : "CANCELLED",
                       call->context()->method().substr(0, 200));
  call->Unref();
}

AtWork::~AtWork() { if (calls != nullptr) calls->Waits(true); }

void Calls::Request() { new Call(this, next_id_.fetch_add(1)); }

void Calls::Poll() {
  bool ok;
  for (void* tag; queue->Next(&tag, &ok);) {
    auto [call, event] = *static_cast<Tag*>(tag);
    call->On(event, ok);
  }
}

// ---------------------------------------------------------------------------------------------
// Python types

struct CallObject {
  PyObject_HEAD
  Call* call;
};

struct ServerObject {
  PyObject_HEAD
  Calls* calls;  // and the service
  grpc::Server* server;
  std::thread* poller;
};

Call* Of(PyObject* self) { return reinterpret_cast<CallObject*>(self)->call; }

// A list of (str, value) pairs, as grpcio gives metadata: values str if `text` (but bytes for
// "-bin" keys, or text that is not UTF-8), else bytes.
template <typename Range>
PyObject* ToPairList(const Range& range, bool text) {
  PyObject* list = PyList_New(0);
  for (const auto& [key, value] : range) {
    if (list == nullptr) return nullptr;
    auto build = [&](const char* format) {
      return Py_BuildValue(format, key.data(), Py_ssize_t(key.size()), value.data(),
                           Py_ssize_t(value.size()));
    };
    PyObject* pair = text && !key.ends_with("-bin") ? build("(s#s#)") : nullptr;
    if (pair == nullptr) PyErr_Clear(), pair = build("(s#y#)");  // not (UTF-8) text: bytes
    if (pair == nullptr || PyList_Append(list, pair) < 0) Py_CLEAR(list);
    Py_XDECREF(pair);
  }
  return list;
}

// A sequence of (str, bytes) pairs.
bool ToPairs(PyObject* sequence, Pairs* pairs) {
  PyObject* items = PySequence_Fast(sequence, "metadata must be a sequence of (key, value)");
  for (Py_ssize_t i = 0; items != nullptr && i < PySequence_Fast_GET_SIZE(items); ++i) {
    const char *key, *value;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(items, i), "sy#", &key, &value, &size)) break;
    pairs->emplace_back(key, std::string(value, static_cast<size_t>(size)));
  }
  Py_XDECREF(items);
  return items != nullptr && !PyErr_Occurred();
}

// Call methods ---------------------------------------------------------------------------------

// (method, metadata, peer, seconds left or None)
PyObject* CallInfo(PyObject* self, PyObject*) {
  auto* context = Of(self)->context();
  gpr_timespec deadline = context->raw_deadline();  // deadline() overflows past 292 years
  PyObject* remaining = gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0
      ? Py_NewRef(Py_None) : PyFloat_FromDouble(gpr_timespec_to_micros(gpr_time_sub(
          deadline, gpr_now(deadline.clock_type))) / 1e6);
  const std::string& method = context->method();
  std::string peer = context->peer();
  return Py_BuildValue("(s#Ns#N)", method.data(), static_cast<Py_ssize_t>(method.size()),
                       ToPairList(context->client_metadata(), true), peer.data(),
                       static_cast<Py_ssize_t>(peer.size()), remaining);
}

// While a call's operation may wait, the GIL is released. Operations that cannot wait keep
// it: released under contention, it costs a thread switch to take back (the polling thread
// never takes it: holding it cannot deadlock).
struct Waiting {
  Calls* calls = at_work.calls;  // not at work: nothing to count
  PyThreadState* state = PyEval_SaveThread();
  Waiting() { if (calls) calls->Waits(true); }
  ~Waiting() {
    if (calls) calls->Waits(false);
    PyEval_RestoreThread(state);
  }
};

PyObject* CallRead(PyObject* self, PyObject*) {
  grpc::Slice slice;
  std::optional<Waiting> waiting;
  if (!Of(self)->Now().first_read) waiting.emplace();
  int got = Of(self)->Read(&slice);
  waiting.reset();
  if (got == 0) Py_RETURN_NONE;
  // never parsed as an empty message
  if (got < 0) return PyErr_Format(PyExc_ValueError, "the request's bytes could not be read");
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(slice.begin()),
                                   static_cast<Py_ssize_t>(slice.size()));
}

PyObject* CallWrite(PyObject* self, PyObject* args) {
  const char* data;  // a bytes object's own buffer, which the call's arguments hold
  Py_ssize_t size;
  if (!PyArg_ParseTuple(args, "y#", &data, &size)) return nullptr;
  bool ok = [&] { Waiting waiting; return Of(self)->Write(data, static_cast<size_t>(size)); }();
  return PyBool_FromLong(ok);
}

PyObject* CallSendInitialMetadata(PyObject* self, PyObject* args) {
  PyObject* metadata;
  Pairs pairs;
  if (!PyArg_ParseTuple(args, "O", &metadata) || !ToPairs(metadata, &pairs)) return nullptr;
  return PyBool_FromLong([&] { Waiting waiting; return Of(self)->SendInitialMetadata(pairs); }());
}

PyObject* CallFinish(PyObject* self, PyObject* args) {
  int code;
  char *details, *response = nullptr;
  Py_ssize_t details_size, size = 0;
  PyObject *trailing, *bytes = Py_None;
  Pairs pairs;
  bool parsed = PyArg_ParseTuple(args, "is#O|O", &code, &details, &details_size, &trailing, &bytes);
  if (!parsed || !ToPairs(trailing, &pairs)) return nullptr;
  if (code < 0 || code > 16) return PyErr_Format(PyExc_ValueError, "code must be 0-16");
  // bytes only, as grpcio's serializers give; copied once, into the answer's slice
  if (bytes != Py_None && PyBytes_AsStringAndSize(bytes, &response, &size) < 0) return nullptr;
  std::string text(details, static_cast<size_t>(details_size));
  if (code != 0 || !Of(self)->Complete(code, text, pairs, response, size, false)) {
    Waiting waiting;  // an error status drains the client's messages first; a write may end
    Of(self)->Complete(code, text, pairs, response, size);
  }
  Py_RETURN_NONE;
}

PyObject* CallPark(PyObject* self, PyObject*) { return PyBool_FromLong(Of(self)->Park()); }

PyObject* CallWatchEnd(PyObject* self, PyObject*) { return PyBool_FromLong(Of(self)->WatchEnd()); }
PyObject* CallActive(PyObject* self, PyObject*) { return PyBool_FromLong(Of(self)->Now().active); }

PyObject* CallCancel(PyObject* self, PyObject*) {
  Of(self)->WithContext([](grpc::GenericServerContext* context) { context->TryCancel(); });
  Py_RETURN_NONE;
}

// (identity property name or None, ((property name, value bytes), ...)), or None once finished.
PyObject* CallAuth(PyObject* self, PyObject*) {
  std::shared_ptr<const grpc::AuthContext> auth;
  if (!Of(self)->WithContext([&auth](auto* context) { auth = context->auth_context(); }))
    Py_RETURN_NONE;
  PyObject* properties = ToPairList(*auth, false);
  if (properties == nullptr) return nullptr;
  std::string key = auth->IsPeerAuthenticated() ? auth->GetPeerIdentityPropertyName() : "";
  if (key.empty()) return Py_BuildValue("(ON)", Py_None, properties);
  return Py_BuildValue("(s#N)", key.data(), static_cast<Py_ssize_t>(key.size()), properties);
}

PyObject* CallId(PyObject* self, PyObject*) { return PyLong_FromUnsignedLongLong(Of(self)->id()); }

// A call no Python thread can answer any more ends CANCELLED (if it has not ended).
void CallDealloc(PyObject* self) {
  if (!Of(self)->Now().finished) {
    Waiting waiting;
    Of(self)->Complete(1, "call cancelled", {});
  }
  Of(self)->Unref();
  Py_TYPE(self)->tp_free(self);
}

PyMethodDef call_methods[] = {
    {"info", CallInfo, METH_NOARGS, "(method, metadata, peer, seconds left or None)"},
    {"read", CallRead, METH_NOARGS, "the next request's bytes, None after the last"},
    {"write", CallWrite, METH_VARARGS, "write(bytes) -> False if the call is over"},
    {"send_initial_metadata", CallSendInitialMetadata, METH_VARARGS, "(pairs) -> bool"},
    {"finish", CallFinish, METH_VARARGS, "finish(code, details, trailing, response=None)"},
    {"park", CallPark, METH_NOARGS, "answered from other threads; False if cancelled already"},
    {"watch_end", CallWatchEnd, METH_NOARGS, "next_call() gives it again if it is cancelled"},
    {"active", CallActive, METH_NOARGS, "neither cancelled nor finished"},
    {"cancel", CallCancel, METH_NOARGS, "cancels the call"},
    {"auth", CallAuth, METH_NOARGS, "(identity key or None, ((name, bytes), ...)) or None"},
    {"id", CallId, METH_NOARGS, "a number unique in the server"},
    {nullptr, nullptr, 0, nullptr},
};

// (PyVarObject_HEAD_INIT ends with a comma: the next field's designator follows it.)
PyTypeObject CallType = {
    .ob_base = PyVarObject_HEAD_INIT(nullptr, 0) .tp_name = "serving.native._server.Call",
    .tp_basicsize = sizeof(CallObject), .tp_dealloc = CallDealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT, .tp_methods = call_methods};

// Server methods -------------------------------------------------------------------------------

PyObject* ServerNew(PyTypeObject* type, PyObject* args, PyObject*) {
  int max_running;
  if (!PyArg_ParseTuple(args, "i", &max_running)) return nullptr;
  auto* self = reinterpret_cast<ServerObject*>(type->tp_alloc(type, 0));
  if (self != nullptr) self->calls = new Calls(max_running);
  return reinterpret_cast<PyObject*>(self);
}

// listen(address, max_message_bytes, reuse_port, max_connection_age_ms, tls=None | (cert, key,
// client_ca or b""), PEM bytes) -> port: binds and starts gRPC; calls wait in the queue until
// Python takes them.
PyObject* ServerListen(PyObject* object, PyObject* args) {
  auto* self = reinterpret_cast<ServerObject*>(object);
  const char *address, *cert, *key, *client_ca;
  int max_message_bytes, reuse_port, age_ms;
  PyObject* tls = Py_None;
  if (!PyArg_ParseTuple(args, "sipi|O", &address, &max_message_bytes, &reuse_port, &age_ms, &tls))
    return nullptr;
  if (self->calls->queue != nullptr)  // it tried once
    return PyErr_Format(PyExc_RuntimeError, "the native server listens on one address, once");
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls != Py_None) {
    if (!PyArg_ParseTuple(tls, "yyy", &cert, &key, &client_ca)) return nullptr;
    grpc::SslServerCredentialsOptions options;
    options.pem_key_cert_pairs.push_back({key, cert});
    if (*client_ca != '\0') {
      options.pem_root_certs = client_ca;
      options.client_certificate_request =
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    credentials = grpc::SslServerCredentials(options);
  }
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, credentials, &port);
  builder.RegisterAsyncGenericService(&self->calls->service);
  self->calls->queue = builder.AddCompletionQueue();
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, reuse_port);
  // gRPC 1.51 inflates a compressed request whole before its size check: identity only
  builder.AddChannelArgument(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET, 1);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 * 1024);  // grpcio's hard limit
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, age_ms);  // GOAWAY, then anew
  binding = true;  // with the GIL: one bind at a time
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  binding = false;
  if (server == nullptr || port == 0)  // (none made: it has served no call, requested none)
    return PyErr_Format(PyExc_RuntimeError, "gRPC C++ cannot bind %s: in use, or not an "
                        "address of this host", address);
  self->server = server.release();
  for (int slot = 0; slot < 16; ++slot) self->calls->Request();  // the rest wait in gRPC
  self->poller = new std::thread(&Calls::Poll, self->calls);
  return PyLong_FromLong(port);
}

PyObject* ServerNextCall(PyObject* object, PyObject*) {
  auto* self = reinterpret_cast<ServerObject*>(object);
  Call* call = nullptr;
  bool ended = false, got = self->calls->Pop(&call, &ended, false);
  if (!got) {
    Py_BEGIN_ALLOW_THREADS;
    got = self->calls->Pop(&call, &ended, true);
    Py_END_ALLOW_THREADS;
  }
  if (!got) Py_RETURN_NONE;
  if (ended) {  // Python only needs its number
    uint64_t id = call->id();
    call->Unref();
    return Py_BuildValue("(KO)", static_cast<unsigned long long>(id), Py_False);
  }
  auto* wrapper = PyObject_New(CallObject, &CallType);
  if (wrapper == nullptr) {
    call->Complete(13, "out of memory", {});
    call->Unref();
    return nullptr;
  }
  wrapper->call = call;  // takes the queue's reference
  return Py_BuildValue("(NO)", reinterpret_cast<PyObject*>(wrapper), Py_True);
}

// shutdown(grace_s): stops listening, cancels what is left after grace_s seconds and waits
// until every call has ended (the pool threads must keep taking calls meanwhile); then
// next_call() returns None once the queue is empty.
PyObject* ServerShutdown(PyObject* object, PyObject* args) {
  auto* self = reinterpret_cast<ServerObject*>(object);
  double grace_s = 0;
  if (!PyArg_ParseTuple(args, "|d", &grace_s)) return nullptr;
  grpc::Server* server = std::exchange(self->server, nullptr);
  Py_BEGIN_ALLOW_THREADS;
  if (server != nullptr) {
    server->Shutdown(std::chrono::system_clock::now() +
                     std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6)));
    server->Wait();
    self->calls->Close();
    self->calls->queue->Shutdown();  // drained before the server goes: its requests use it
    self->poller->join();
    delete server;
  }
  self->calls->Close();  // at once, and again harmlessly if it listened
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* ServerDead(PyObject* object, PyObject*) {
  return ToPairList(reinterpret_cast<ServerObject*>(object)->calls->TakeDead(), false);
}

void ServerDealloc(PyObject* object) {
  auto* self = reinterpret_cast<ServerObject*>(object);
  // Only a server that never listened is freed: once it did, a pool thread that ended at
  // work (SystemExit) may give its place back after Python joined it, and gRPC may still use
  // a server never shut down. Leaked with it: its joined polling thread's std::thread.
  if (self->poller == nullptr) delete self->calls;
  Py_TYPE(object)->tp_free(object);
}

PyMethodDef server_methods[] = {
    {"listen", ServerListen, METH_VARARGS,
     "listen(address, max_message_bytes, reuse_port, max_connection_age_ms, tls=None) -> port"},
    {"next_call", ServerNextCall, METH_NOARGS,
     "(Call, True) for a new call, (id, False) for a watched call that was cancelled, None "
     "once shut down"},
    {"shutdown", ServerShutdown, METH_VARARGS, "shutdown(grace_s=0)"},
    {"dead", ServerDead, METH_NOARGS, "[(status name, method bytes)] of calls that died queued"},
    {nullptr, nullptr, 0, nullptr},
};

PyTypeObject ServerType = {
    .ob_base = PyVarObject_HEAD_INIT(nullptr, 0) .tp_name = "serving.native._server.Server",
    .tp_basicsize = sizeof(ServerObject), .tp_dealloc = ServerDealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT, .tp_doc = "Server(max_running)", .tp_methods = server_methods,
    .tp_new = ServerNew};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_server",
                      "gRPC C++ server whose calls Python threads answer.", -1, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__server() {
  gpr_set_log_function(Log);
  if (PyType_Ready(&CallType) < 0) return nullptr;
  PyObject* m = PyModule_Create(&module);
  if (m && PyModule_AddType(m, &ServerType) < 0) Py_CLEAR(m);  // named by its tp_name's tail
  return m;
}
