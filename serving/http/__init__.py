"""The HTTP transport: Open Inference Protocol REST (with Triton's binary tensor extension), the
domain endpoints under /v1 and the web page, translated to and from the same protobuf messages
and data plane that gRPC serves."""
