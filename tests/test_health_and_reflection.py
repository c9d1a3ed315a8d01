"""Health and reflection beside the APIs, over a real in-process server (on each gRPC server,
as every test of the ``channel`` fixture)."""

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICE = "fashion_mnist.v1.Classifier"


async def test_health_is_serving_for_the_server_and_the_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_lists_every_service_it_serves(channel):
    """Health's List (in grpc.health.v1, and so in reflection's description of it) answered
    UNIMPLEMENTED: grpcio-health-checking 1.85's servicer has no List."""
    health = health_pb2_grpc.HealthStub(channel)
    statuses = (await health.List(health_pb2.HealthListRequest(), timeout=5)).statuses
    assert {name: answer.status for name, answer in statuses.items()} == dict.fromkeys(
        ("", SERVICE, "inference.GRPCInferenceService"), health_pb2.HealthCheckResponse.SERVING)


async def test_reflection_lists_the_services(channel):
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_reflection_answers_at_v1_too(channel):
    """grpc.reflection.v1 (the stable name, the same messages as v1alpha's) answered
    UNIMPLEMENTED: tools that ask v1 alone (grpc-java's and tonic's v1 clients, Kreya) found no
    services; grpcurl and Postman ask v1 first. Both names answer the same."""
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    answers = []
    for version in ("v1alpha", "v1"):
        info = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        answers.append([r async for r in info(iter([request]), timeout=5)])
    assert answers[0][0].file_descriptor_response.file_descriptor_proto
    assert answers[1] == answers[0]
