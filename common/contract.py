"""The contract between training, the server and the client: the classes, the image, and the
model repository's file and tensor names. Defined once here so that the sides cannot drift
apart; standard library only, so that each side can import it."""

# The ten Fashion-MNIST classes, in label order 0..9.
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)

IMAGE_SHAPE = (28, 28)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # the features a model sees: 784
IMAGE_BYTES = PIXELS  # an image on the wire: one uint8 per pixel

# A model version is <repository>/<model>/<version>/MODEL_FILE + MANIFEST.
MODEL_FILE = "model.onnx"
MANIFEST = "model.json"
MAX_VERSION = 2**63 - 1  # <model>/<version>/: the protocols' version fields are int64


def is_version_name(name: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²", which int() refuses."""
    return name.isascii() and name.isdigit()


# Every graph takes IMAGES uint8 [N,28,28] and returns PROBABILITIES float32 [N,10] and
# LABEL int64 [N].
IMAGES = "images"
PROBABILITIES = "probabilities"
LABEL = "label"

# Fashion-MNIST's IDX files, by the SHA-256 of their decompressed content: training refuses
# other data, the client and the web page another test set (training/data.py says why the
# content and not the .gz).
DATA_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
