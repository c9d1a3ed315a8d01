# syntax=docker/dockerfile:1
# The Fashion-MNIST service image, built in stages from one base:
#   train  fits the models on the Debian Fashion-MNIST package and writes the model repository
#   serve  the packaged model: the server, its runtime (onnxruntime, grpcio, numpy, Debian's
#          gRPC C++ libraries for the native gRPC server; no TensorFlow, no scikit-learn, no
#          pip, no compiler), the model repository from `train` and the test set
#   lb     an optional gRPC load balancer (nginx) in front of scaled `serve` replicas
# BASE_IMAGE is any Debian-based image with Python 3.11 or 3.12 (the locks' wheels are checked
# for those: deploy/*.lock) and venv: the official python image
# by default, or the debootstrapped Debian 12 image that CI builds because it has no registry.
# Only `python3 -m venv`, pip and apt-get are used, so both work.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS train
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
# The dependencies, from their lock alone (scripts/lock_dependencies.py writes it from
# pyproject.toml), before the code: editing the code does not reinstall them. Every package is
# pinned and hash-checked, wheels only: no file that differs, and no build running code of its own.
COPY deploy/train.lock /build/train.lock
# The cache mount keeps pip's downloads between builds where the builder supports it.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
 && pip install --require-hashes --only-binary :all: -r /build/train.lock
# Only the training code: editing the server does not retrain. `python -m training` is
# fmnist-train without installing the project. The report stays out of the serve image.
WORKDIR /src
COPY common common
COPY training training
RUN python -m training --out /models --report-dir /reports --progress epoch

# The server's virtual environment, built here and copied whole into `serve`, so that the
# installer (pip, setuptools) stays out of the runtime image.
# The native gRPC server (serving/native/server.cc) is compiled here against Debian's gRPC C++;
# native-packages.txt lists the Debian packages of the libraries it links, which the `serve`
# stage installs (the compiler and headers stay here).
FROM ${BASE_IMAGE} AS serve-venv
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ pkg-config libgrpc++-dev \
    $(python3 -c 'import os, sysconfig; print("" if os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") else "python3-dev")') \
 && rm -rf /var/lib/apt/lists/*
# As in `train`; build.lock is setuptools, which builds the project below and is then removed.
COPY deploy/serve.lock deploy/build.lock /build/
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
 && pip install --require-hashes --only-binary :all: -r /build/serve.lock -r /build/build.lock
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos protos
COPY common common
COPY training training
COPY serving serving
COPY deploy/native-packages.sh deploy/
RUN pip install --no-deps --no-build-isolation . \
 && (cd / && python -c 'import serving.native._server') \
 && pip uninstall -y setuptools \
 && python -m pip uninstall -y pip \
 && deploy/native-packages.sh /opt/venv >/opt/native-packages.txt

FROM ${BASE_IMAGE} AS serve
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 fmnist \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin fmnist
# The runtime libraries of the native gRPC server (Debian's gRPC C++), no compiler or headers.
COPY --from=serve-venv /opt/native-packages.txt /opt/native-packages.txt
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    $(cat /opt/native-packages.txt) \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
# The test set that `fmnist score` reads (the t10k IDX files, ~4.4 MB), the packaged model,
# then the code, which changes most often.
COPY --from=train /usr/share/datasets/fashion-mnist/t10k-*-idx*-ubyte.gz /data/
COPY --from=train /models /models
COPY --from=serve-venv /opt/venv /opt/venv
# The user fmnist, by number: kubelet checks runAsNonRoot against a number, not a name.
USER 10001:10001
# Settings come from FMNIST_* variables (or flags); the server writes no files but its
# metrics' in /dev/shm (a tmpfs), so the container can run with a read-only root file system.
ENV FMNIST_MODEL_REPOSITORY=/models \
    FMNIST_DATA_DIR=/data \
    FMNIST_HOST=0.0.0.0 \
    FMNIST_PORT=50051 \
    FMNIST_HTTP_PORT=8080 \
    FMNIST_METRICS_PORT=9090
# glibc's malloc gives a buffer over 1 MiB (a large request's body) back to the system when
# it is freed, instead of keeping it: after a burst of 64 large JSON requests a server held
# ~535 MB, not ~1,000 (bench/memory.py --transports http-json; README, "Memory"). Smaller
# buffers stay reused: at 128 KiB, batches of 1,000 images scored ~15% slower.
ENV MALLOC_MMAP_THRESHOLD_=1048576
EXPOSE 50051 8080 9090
# The server drains in-flight calls on SIGTERM (and SIGINT) and then exits 0.
STOPSIGNAL SIGTERM
CMD ["fmnist-serve"]

# nginx balancing gRPC calls over every replica of the `classifier` service.
FROM ${BASE_IMAGE} AS lb
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled
COPY deploy/nginx-grpc-lb.conf /etc/nginx/nginx.conf
# Starts nginx with every replica's address and follows them as replicas come and go.
COPY deploy/nginx-lb.sh /usr/local/bin/nginx-lb.sh
EXPOSE 50050 8080
# Not root: its ports are above 1024, and it writes only under /tmp (nginx-grpc-lb.conf).
USER www-data
# SIGQUIT is nginx's graceful shutdown (nginx-lb.sh passes it on, and SIGTERM as SIGQUIT).
STOPSIGNAL SIGQUIT
CMD ["nginx-lb.sh"]
