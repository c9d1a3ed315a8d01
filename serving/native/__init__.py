"""The native gRPC server: a faster implementation of grpcio's synchronous server, behind the
same interface (``add_generic_rpc_handlers``, ``grpc.ServerInterceptor``s, ``add_*_port``,
``start``, ``stop``), for every method: unary, client/server/bidi streams, health (its
non-blocking Watch included) and reflection.

One gRPC runtime listens: gRPC C++ (Debian's libgrpc++, ``serving/native/server.cc``, the
async API: one ``AsyncGenericService`` and one completion queue). One C++ thread polls that
queue, which also reads and writes the sockets; it never runs Python: it queues each new call
once its first message is in (or its client said it sends none: a client that never sends one
holds no thread) and wakes the Python thread waiting on a call (a mutex and condition
variable per call). gRPC's callback API was used first: its two threads handing each event to
each other, and its executor, cost ~9 thread switches per call at batch 1 x 1 (BENCHMARKS.md,
"Issue 12, third session"). A fixed pool of Python threads (``--call-threads``) takes the calls
(``next_call()``), resolves each handler through the interceptors and the generic handlers as
grpcio does, and runs it. A thread releases the GIL only where it may wait (for a call; for a
message, a write or initial metadata; before an error status), since under contention each
release costs a thread switch to take it back. For the same reason a thread that ends its call
OK (no write in flight) while other threads are at work does not send the end itself, holding
the GIL through the system calls: the polling thread sends it (an alarm on its queue;
BENCHMARKS.md, "Issue 12, eleventh session"). At most ``max_running`` threads are woken to
take calls while others are at work (the server sets 4 per core; threads waiting on the
network do not count, and one coming back may briefly exceed it): a new call waits for one of
them to come back rather than wake another thread (BENCHMARKS.md, "Threads at work"). A thread
that finds no call spins 0.3 ms before it sleeps, one at a time: the next new call is its own,
no thread woken for it (a wake-up was ~15% of a lone client's latency; BENCHMARKS.md,
thirty-fifth session). So:

- a unary call holds a pool thread while it runs, a streaming call from its first message to
  its end; a non-blocking handler (health's Watch) holds none while it waits: it writes from
  whichever thread calls its ``send_response_callback``, and a cancellation finishes it in C++;
- ``add_callback``s run when the call ends: on the thread that finishes it (a Watch ended by
  ``send_response_callback(None)``: the thread that called it, the health servicer's sender),
  or, for a cancelled call, on a pool thread once C++ queues it again; ``stop`` (on a thread
  of its own: its caller bounds the wait for its event) joins every pool thread, so a stopped
  server leaves no thread behind (the polling thread and gRPC C++'s own threads hold no Python
  state; ``stop`` joins the polling thread once gRPC holds no call);
- a call cancelled (by its client, or its deadline) while it waits in the queue is finished
  in C++ and leaves the queue (a health check is skipped when its turn comes): no thread
  takes it, so a flood of calls whose clients gave up costs no Python work; while the oldest
  queued call is within 10 ms of its deadline, threads take the newest calls first (oldest
  first, past capacity, answers few calls in time);
- a request whose bytes cannot be read (``ByteBuffer::DumpToSingleSlice`` fails) is refused
  INTERNAL, never parsed as an empty message.

And by construction: no gRPC thread ever holds a Python thread state; ``Finish`` is started in
two places: ``Call::End`` (from ``Call::Complete`` or the polling thread) for every call a
Python thread holds, whatever the path, and ``Call::Drop`` for a cancelled call none holds
(queued, or parked), and no gRPC thread ever waits for the GIL; one
``ServicerContext`` (``serving.native.context``) serves every method, with trailing metadata,
``set_code``, cancellation and the rest, as grpcio's does.

``available()`` says whether the extension is built (``setup.py``: g++, pkg-config and
libgrpc++-dev); where it is not, ``serving.grpc_transport`` serves with grpcio.
"""

UNAVAILABLE_REASON = ""
try:
    # not "from serving.native import _server": where it is not built, that blamed "a
    # circular import"
    import serving.native._server as _server  # noqa: PLR0402
except ImportError as error:  # grpcio serves; Python's words only if built but not loadable
    _server = None
    UNAVAILABLE_REASON = ("not built" if isinstance(error, ModuleNotFoundError) else
                          f"built but cannot be loaded ({error})") + (
        "; to build it, install g++, pkg-config and libgrpc++-dev, then pip install -e .")


def available() -> bool:
    return _server is not None
