// The native gRPC front door: gRPC C++ (callback API) listens on the public address so that a
// unary call costs no Python-side gRPC machinery.
//
// - Calls of the "direct" methods (the unary methods of the served APIs) hand their request
//   bytes, metadata, peer and deadline to a Python handler and are answered when Python calls
//   the `Completion` it was given: `completion(code, message, response_bytes_or_None)`.
// - Every other method (streams, health, reflection) is relayed byte for byte, metadata,
//   deadline and cancellation included, to the grpc.aio server on a private unix socket.
// - It listens on an address, or (address None) serves the connections it is given with
//   `adopt(fd)`: a supervisor that accepts them and deals them out to its workers in turn.
//
// Nothing here knows a message type: Python parses, validates, answers and maps errors.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_posix.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

namespace {

// gRPC's threads call into Python for every call. A Python thread state made and destroyed
// each time costs an mmap and a munmap (its frame stack) and the TLB shootdown on the other
// cores that follows, so each thread keeps the first one it gets: that outer PyGILState_Ensure
// is never released (the interpreter frees the thread states when it finalizes).
class Gil {
 public:
  Gil() {
    thread_local bool kept = false;
    if (!kept) {
      PyGILState_Ensure();
      PyEval_SaveThread();
      kept = true;
    }
    state_ = PyGILState_Ensure();
  }
  ~Gil() { PyGILState_Release(state_); }

 private:
  PyGILState_STATE state_;
};

std::string ToString(grpc::string_ref text) { return std::string(text.data(), text.size()); }

// The request's bytes, as one Python bytes object (a message may arrive in several slices).
PyObject* ToBytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return PyBytes_FromStringAndSize(nullptr, 0);
  PyObject* bytes = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(buffer.Length()));
  if (bytes == nullptr) return nullptr;
  char* out = PyBytes_AS_STRING(bytes);
  for (const grpc::Slice& slice : slices) {
    std::memcpy(out, slice.begin(), slice.size());
    out += slice.size();
  }
  return bytes;
}

// Metadata as grpc.aio gives it: (key, value) pairs, values bytes for "-bin" keys, else str.
PyObject* ToMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  PyObject* pairs = PyTuple_New(static_cast<Py_ssize_t>(metadata.size()));
  if (pairs == nullptr) return nullptr;
  Py_ssize_t index = 0;
  for (const auto& [key, value] : metadata) {
    bool binary = key.ends_with("-bin");
    PyObject* pair = Py_BuildValue(binary ? "(s#y#)" : "(s#s#)", key.data(),
                                   static_cast<Py_ssize_t>(key.size()), value.data(),
                                   static_cast<Py_ssize_t>(value.size()));
    if (pair == nullptr) {
      PyErr_Clear();  // a text value that is not UTF-8: passed on as bytes
      pair = Py_BuildValue("(s#y#)", key.data(), static_cast<Py_ssize_t>(key.size()),
                           value.data(), static_cast<Py_ssize_t>(value.size()));
    }
    if (pair == nullptr) {
      Py_DECREF(pairs);
      return nullptr;
    }
    PyTuple_SET_ITEM(pairs, index++, pair);
  }
  return pairs;
}

// ---------------------------------------------------------------------------------------------
// Direct unary calls

class DirectCall;

struct Completion {
  PyObject_HEAD
  DirectCall* call;  // null once answered
};

class DirectCall : public grpc::ServerGenericBidiReactor {
 public:
  DirectCall(grpc::GenericCallbackServerContext* context, PyObject* handler)
      : context_(context), handler_(handler) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override;
  void OnCancel() override;
  void OnWriteDone(bool) override {}
  void OnDone() override {
    {
      Gil gil;
      Py_CLEAR(on_cancel_);
    }
    delete this;
  }

  // Called by the Completion, exactly once (without the GIL when it answers from Python).
  void Answer(int code, const char* message, Py_ssize_t message_size, const char* response,
              Py_ssize_t response_size, bool has_response) {
    if (code == 0 && has_response) {
      grpc::Slice slice(response, static_cast<size_t>(response_size));
      response_ = grpc::ByteBuffer(&slice, 1);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      Finish(grpc::Status(static_cast<grpc::StatusCode>(code),
                          std::string(message, static_cast<size_t>(message_size))));
    }
  }

 private:
  grpc::GenericCallbackServerContext* context_;
  PyObject* handler_;  // borrowed: the server holds it for longer than any call
  PyObject* on_cancel_ = nullptr;
  bool cancelled_ = false;  // guarded by the GIL
  grpc::ByteBuffer request_, response_;
};

PyObject* CompletionCall(PyObject* self, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"code", "message", "response", nullptr};
  int code;
  const char* message;
  Py_ssize_t message_size;
  Py_buffer response = {};
  PyObject* response_object = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "is#|O", const_cast<char**>(keywords), &code,
                                   &message, &message_size, &response_object)) {
    return nullptr;
  }
  auto* completion = reinterpret_cast<Completion*>(self);
  if (completion->call == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "this call was already answered");
    return nullptr;
  }
  if (code < 0 || code > 16) {
    PyErr_SetString(PyExc_ValueError, "code must be a gRPC status code (0-16)");
    return nullptr;
  }
  bool has_response = response_object != Py_None;
  if (has_response && PyObject_GetBuffer(response_object, &response, PyBUF_SIMPLE) < 0) {
    return nullptr;
  }
  DirectCall* call = completion->call;
  completion->call = nullptr;
  // Sending may do the write right here: let Python run meanwhile (the buffers stay alive,
  // held by the arguments).
  Py_BEGIN_ALLOW_THREADS;
  call->Answer(code, message, message_size, static_cast<const char*>(response.buf), response.len,
               has_response);
  Py_END_ALLOW_THREADS;
  if (has_response) PyBuffer_Release(&response);
  Py_RETURN_NONE;
}

void CompletionDealloc(PyObject* self) {
  auto* completion = reinterpret_cast<Completion*>(self);
  if (completion->call != nullptr) {  // never answered: a bug on the Python side
    static const char message[] = "the server dropped the call without answering";
    completion->call->Answer(13, message, sizeof(message) - 1, nullptr, 0, false);
  }
  Py_TYPE(self)->tp_free(self);
}

PyTypeObject CompletionType = {
    PyVarObject_HEAD_INIT(nullptr, 0) "serving.native._frontdoor.Completion",
};

void DirectCall::OnReadDone(bool ok) {
  if (!ok) {  // the client cancelled or half-closed before sending its one request
    Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request"));
    return;
  }
  Gil gil;
  auto* completion = PyObject_New(Completion, &CompletionType);
  if (completion == nullptr) {
    PyErr_WriteUnraisable(handler_);
    Finish(grpc::Status(grpc::StatusCode::INTERNAL, "out of memory"));
    return;
  }
  completion->call = this;
  auto deadline = context_->deadline();
  PyObject* deadline_object;
  if (deadline == std::chrono::system_clock::time_point::max()) {
    deadline_object = Py_NewRef(Py_None);
  } else {
    double seconds = std::chrono::duration<double>(deadline.time_since_epoch()).count();
    deadline_object = PyFloat_FromDouble(seconds);
  }
  PyObject* request = ToBytes(request_);
  PyObject* metadata = ToMetadata(context_->client_metadata());
  PyObject* result = nullptr;
  if (request != nullptr && metadata != nullptr && deadline_object != nullptr) {
    std::string method = context_->method(), peer = context_->peer();
    result = PyObject_CallFunction(handler_, "s#OOs#OO", method.data(),
                                   static_cast<Py_ssize_t>(method.size()), request, metadata,
                                   peer.data(), static_cast<Py_ssize_t>(peer.size()),
                                   deadline_object, reinterpret_cast<PyObject*>(completion));
  }
  Py_XDECREF(request);
  Py_XDECREF(metadata);
  Py_XDECREF(deadline_object);
  if (result == nullptr) {  // the handler raised: answer INTERNAL unless it answered already
    PyErr_WriteUnraisable(handler_);
    if (completion->call != nullptr) {
      completion->call = nullptr;
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "internal error while answering"));
    }
  } else if (result != Py_None && completion->call != nullptr) {
    on_cancel_ = result;  // the handler's way to stop its work if the call is cancelled
    result = nullptr;
    if (cancelled_) OnCancel();
  }
  Py_XDECREF(result);
  Py_DECREF(completion);
}

void DirectCall::OnCancel() {
  Gil gil;
  cancelled_ = true;
  if (on_cancel_ == nullptr) return;
  PyObject* on_cancel = on_cancel_;
  on_cancel_ = nullptr;
  PyObject* result = PyObject_CallNoArgs(on_cancel);
  if (result == nullptr) PyErr_WriteUnraisable(on_cancel);
  Py_XDECREF(result);
  Py_DECREF(on_cancel);
}

// ---------------------------------------------------------------------------------------------
// Relayed calls: a bidirectional byte stream to the backend, whatever the method's kind.
//
// Two flows run outside the backend call's own reactions, so each holds it open (gRPC's
// AddHold) until it is over: client -> backend writes, ended by the client's half-close, a
// failed write or the backend's end of stream; backend -> client reads, ended by the backend's
// end of stream or a failed write to the client. Only then does the backend call end with its
// status, which the client gets as is.

class RelayedCall : public grpc::ServerGenericBidiReactor {
 public:
  RelayedCall(grpc::GenericCallbackServerContext* context, grpc::GenericStub* backend)
      : backend_call_(this),
        upstream_context_(grpc::ClientContext::FromCallbackServerContext(*context)) {
    for (const auto& [key, value] : context->client_metadata()) {
      std::string name = ToString(key);
      if (name.rfind("grpc-", 0) == 0 || name == "user-agent" || name.empty() || name[0] == ':')
        continue;  // transport headers, set again by the backend channel
      upstream_context_->AddMetadata(name, ToString(value));
    }
    backend->PrepareBidiStreamingCall(upstream_context_.get(), context->method(),
                                      grpc::StubOptions(), &backend_call_);
    backend_call_.AddMultipleHolds(2);  // the write flow and the read flow
    backend_call_.StartRead(&from_backend_);
    backend_call_.StartCall();
    StartRead(&from_client_);
  }

  // A message from the client, or its half-close (or cancellation).
  void OnReadDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (writes_closed_) return;
      if (ok) {
        backend_writing_ = true;
      } else {
        writes_closed_ = true;
      }
    }
    if (ok) {
      backend_call_.StartWrite(&from_client_);
    } else {
      backend_call_.StartWritesDone();
      backend_call_.RemoveHold();
    }
  }
  // A message from the backend reached the client (or the client is gone).
  void OnWriteDone(bool ok) override {
    if (ok) {
      backend_call_.StartRead(&from_backend_);
    } else {
      upstream_context_->TryCancel();
      backend_call_.RemoveHold();
    }
  }
  void OnCancel() override { upstream_context_->TryCancel(); }
  void OnDone() override { Release(); }

 private:
  class BackendCall : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit BackendCall(RelayedCall* call) : call_(call) {}
    void OnReadDone(bool ok) override {
      if (ok) {
        call_->StartWrite(&call_->from_backend_);
        return;
      }
      // The backend sent its last message: no more reads, and nothing more worth writing.
      bool close_writes;
      {
        std::lock_guard<std::mutex> lock(call_->mutex_);
        call_->reads_ended_ = true;
        close_writes = !call_->writes_closed_ && !call_->backend_writing_;
        if (close_writes) call_->writes_closed_ = true;
      }
      if (close_writes) RemoveHold();
      RemoveHold();
    }
    void OnWriteDone(bool ok) override {
      bool close_writes;
      {
        std::lock_guard<std::mutex> lock(call_->mutex_);
        call_->backend_writing_ = false;
        close_writes = !ok || call_->reads_ended_;
        if (close_writes) call_->writes_closed_ = true;
      }
      if (close_writes) {
        RemoveHold();
      } else {
        call_->StartRead(&call_->from_client_);
      }
    }
    void OnDone(const grpc::Status& status) override {
      call_->Finish(status);
      call_->Release();
    }

   private:
    RelayedCall* call_;
  };

  void Release() {
    bool last;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      last = --sides_ == 0;
    }
    if (last) delete this;
  }

  BackendCall backend_call_;
  std::unique_ptr<grpc::ClientContext> upstream_context_;
  grpc::ByteBuffer from_client_, from_backend_;
  std::mutex mutex_;
  bool backend_writing_ = false;  // a client message is on its way to the backend
  bool writes_closed_ = false;    // the write flow's hold is released: no more writes
  bool reads_ended_ = false;      // the backend sent its last message
  int sides_ = 2;  // both the server side and the backend side must be done before delete
};

// ---------------------------------------------------------------------------------------------
// The server

class Dispatcher : public grpc::CallbackGenericService {
 public:
  Dispatcher(PyObject* handler, std::unordered_set<std::string> direct_methods,
             const std::string& backend_address)
      : handler_(handler), direct_methods_(std::move(direct_methods)) {
    grpc::ChannelArguments arguments;
    arguments.SetMaxReceiveMessageSize(-1);  // the front door enforces the limits
    arguments.SetMaxSendMessageSize(-1);
    backend_ = std::make_unique<grpc::GenericStub>(grpc::CreateCustomChannel(
        backend_address, grpc::InsecureChannelCredentials(), arguments));
  }

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    if (direct_methods_.count(context->method())) return new DirectCall(context, handler_);
    return new RelayedCall(context, backend_.get());
  }

 private:
  PyObject* handler_;
  std::unordered_set<std::string> direct_methods_;
  std::unique_ptr<grpc::GenericStub> backend_;
};

struct Server {
  PyObject_HEAD
  PyObject* handler;
  Dispatcher* dispatcher;
  grpc::Server* server;
  int port;
};

std::optional<std::string> BytesArgument(PyObject* object) {
  if (object == Py_None) return std::nullopt;
  char* data;
  Py_ssize_t size;
  if (PyBytes_AsStringAndSize(object, &data, &size) < 0) return std::nullopt;
  return std::string(data, static_cast<size_t>(size));
}

std::shared_ptr<grpc::ServerCredentials> Credentials(PyObject* tls) {
  if (tls == Py_None) return grpc::InsecureServerCredentials();
  PyObject *key, *cert, *client_ca;
  if (!PyArg_ParseTuple(tls, "SSO", &key, &cert, &client_ca)) return nullptr;
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({*BytesArgument(key), *BytesArgument(cert)});
  if (client_ca != Py_None) {
    std::optional<std::string> roots = BytesArgument(client_ca);
    if (!roots) return nullptr;
    options.pem_root_certs = *roots;
    options.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

void ShutdownServer(Server* self, double grace_s) {
  if (self->server == nullptr) return;
  grpc::Server* server = self->server;
  Dispatcher* dispatcher = self->dispatcher;
  self->server = nullptr;
  self->dispatcher = nullptr;
  Py_BEGIN_ALLOW_THREADS;  // calls in flight need Python to answer them
  auto deadline = std::chrono::system_clock::now() +
                  std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6));
  server->Shutdown(deadline);
  server->Wait();
  delete server;
  delete dispatcher;
  Py_END_ALLOW_THREADS;
}

PyObject* ServerNew(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"address", "handler", "direct_methods", "backend",
                                   "max_message_bytes", "tls", nullptr};
  const char *address, *backend;  // address nullptr: no port, connections come by adopt()
  PyObject *handler, *methods, *tls = Py_None;
  int max_message_bytes;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "zOOsi|O", const_cast<char**>(keywords),
                                   &address, &handler, &methods, &backend, &max_message_bytes,
                                   &tls)) {
    return nullptr;
  }
  if (!PyCallable_Check(handler)) {
    PyErr_SetString(PyExc_TypeError, "handler must be callable");
    return nullptr;
  }
  std::unordered_set<std::string> direct_methods;
  PyObject* iterator = PyObject_GetIter(methods);
  if (iterator == nullptr) return nullptr;
  while (PyObject* item = PyIter_Next(iterator)) {
    const char* name = PyUnicode_AsUTF8(item);
    if (name != nullptr) direct_methods.insert(name);
    Py_DECREF(item);
    if (name == nullptr) break;
  }
  Py_DECREF(iterator);
  if (PyErr_Occurred()) return nullptr;
  std::shared_ptr<grpc::ServerCredentials> credentials = Credentials(tls);
  if (credentials == nullptr) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "tls: (key, cert, client_ca|None)");
    return nullptr;
  }

  auto* self = reinterpret_cast<Server*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->handler = Py_NewRef(handler);
  self->dispatcher = new Dispatcher(handler, std::move(direct_methods), backend);
  grpc::ServerBuilder builder;
  if (address != nullptr) builder.AddListeningPort(address, credentials, &self->port);
  builder.RegisterCallbackGenericService(self->dispatcher);
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  std::unique_ptr<grpc::Server> server;
  Py_BEGIN_ALLOW_THREADS;
  server = builder.BuildAndStart();
  Py_END_ALLOW_THREADS;
  if (server == nullptr || (address != nullptr && self->port == 0)) {
    if (server != nullptr) {
      server->Shutdown();
      server.reset();
    }
    delete self->dispatcher;
    self->dispatcher = nullptr;
    Py_DECREF(self);
    PyErr_SetString(PyExc_RuntimeError, "gRPC could not bind it (in use, or not an address here?)");
    return nullptr;
  }
  self->server = server.release();
  return reinterpret_cast<PyObject*>(self);
}

PyObject* ServerShutdown(PyObject* self, PyObject* args) {
  double grace_s = 0;
  if (!PyArg_ParseTuple(args, "|d", &grace_s)) return nullptr;
  ShutdownServer(reinterpret_cast<Server*>(self), grace_s);
  Py_RETURN_NONE;
}

// Keeps the GIL throughout: ShutdownServer takes the server away under the GIL, so it cannot
// be deleted while a connection is being added to it.
PyObject* ServerAdopt(PyObject* self, PyObject* args) {
  int fd;
  if (!PyArg_ParseTuple(args, "i", &fd)) return nullptr;
  grpc::Server* server = reinterpret_cast<Server*>(self)->server;
  if (server == nullptr) {
    close(fd);
    PyErr_SetString(PyExc_RuntimeError, "the server is shut down");
    return nullptr;
  }
  grpc::AddInsecureChannelFromFd(server, fd);
  Py_RETURN_NONE;
}

PyObject* ServerPort(PyObject* self, void*) {
  return PyLong_FromLong(reinterpret_cast<Server*>(self)->port);
}

bool Finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

void ServerDealloc(PyObject* self) {
  auto* server = reinterpret_cast<Server*>(self);
  // Never shut down: once Python is exiting, calls in flight can no longer be answered from
  // Python, so waiting for them would never end; the process exit ends them instead.
  if (!Finalizing()) ShutdownServer(server, 0);
  Py_CLEAR(server->handler);
  Py_TYPE(self)->tp_free(self);
}

PyMethodDef server_methods[] = {
    {"shutdown", ServerShutdown, METH_VARARGS,
     "shutdown(grace_s=0): stop listening, give calls in flight grace_s seconds, cancel the "
     "rest, and wait until every call has ended."},
    {"adopt", ServerAdopt, METH_VARARGS,
     "adopt(fd): serve this connected, non-blocking socket (plaintext), which it then owns."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef server_properties[] = {
    {"port", ServerPort, nullptr, "the port listened on (0: none)", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyTypeObject ServerType = {
    PyVarObject_HEAD_INIT(nullptr, 0) "serving.native._frontdoor.Server",
};

PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_frontdoor",
    "gRPC C++ front door: direct unary calls to a Python handler, the rest relayed.", -1,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__frontdoor() {
  CompletionType.tp_basicsize = sizeof(Completion);
  CompletionType.tp_flags = Py_TPFLAGS_DEFAULT;
  CompletionType.tp_call = CompletionCall;
  CompletionType.tp_dealloc = CompletionDealloc;
  CompletionType.tp_doc = "completion(code, message, response=None): answers the call.";
  ServerType.tp_basicsize = sizeof(Server);
  ServerType.tp_flags = Py_TPFLAGS_DEFAULT;
  ServerType.tp_new = ServerNew;
  ServerType.tp_dealloc = ServerDealloc;
  ServerType.tp_methods = server_methods;
  ServerType.tp_getset = server_properties;
  ServerType.tp_doc =
      "Server(address|None, handler, direct_methods, backend, max_message_bytes, tls=None)";
  if (PyType_Ready(&CompletionType) < 0 || PyType_Ready(&ServerType) < 0) return nullptr;
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddObjectRef(m, "Server", reinterpret_cast<PyObject*>(&ServerType)) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
