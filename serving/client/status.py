"""``fmnist health`` and ``fmnist models``: what the server says of itself. Health imports only
gRPC's health stubs: it is the container healthcheck, which starts fast."""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health(args, security) -> int:
    """``fmnist health``: prints the status; 0 if SERVING."""
    with security.channel(args.target, [("grpc.lb_policy_name", args.lb)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=args.service),
                                  timeout=args.timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            raise ValueError(f"NOT_FOUND: the server has no service {args.service!r}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def models(args, security) -> int:
    """``fmnist models``: a row per loaded model version."""
    from serving.client.api import ClassifierClient

    with ClassifierClient(args.target, args.timeout, security, args.lb) as client:
        loaded = client.list_models()
    # "newest": the version a call naming none gets ("default" read as the default model)
    print(f"{'model':<10} {'version':>7} {'newest':<7} {'accuracy':>8}  {'sha256':<12}  "
          f"{'created':<25} description")
    for m in loaded:
        print(f"{m.name:<10} {m.version:>7} {'yes' if m.is_default_version else '':<7} "
              f"{f'{m.test_accuracy:.4f}' if m.test_accuracy else '-':>8}  {m.sha256[:12]:<12}  "
              f"{m.created_at:<25} {m.description}")  # no accuracy in model.json: -
    return 0
