"""What training, the server and the client share: the contract between them
(``common.contract``, ``common.idx``), the test set's files (``common.dataset``), how their
command lines read env vars (``common.flags``) and paths (``common.paths``) and say a usage
error (``common.usage``), TLS's PEM files checked (``common.pem``), a picture made a 28x28
image (``common.pictures``), and onnxruntime's telemetry turned off (``common.telemetry``). The
standard library and numpy only when imported (Pillow only on a picture's first use), so that
each side imports it without the others' dependencies."""

# The release's version, read here by pyproject.toml, said by each command's --version and by
# ServerMetadata from the code it runs, installed or not (importlib.metadata said "unknown"
# for a copied tree); here, as the image's training stage has no serving.
__version__ = "0.1.0"
