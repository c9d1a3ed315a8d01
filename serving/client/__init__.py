"""The client side of the Fashion-MNIST service: ``serving.client.api.ClassifierClient`` and the
``fmnist`` command line. Needs grpcio, numpy (and Pillow for PNG files), never onnxruntime or
the training package; this module imports nothing so that ``fmnist health`` starts fast."""

DEFAULT_TARGET = "127.0.0.1:50051"  # the server's default port, on this host
LB_POLICIES = ("pick_first", "round_robin")  # gRPC's load-balancing policies, default first
