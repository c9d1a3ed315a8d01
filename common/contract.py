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

# Every graph takes IMAGES uint8 [N,28,28] and returns PROBABILITIES float32 [N,10] and
# LABEL int64 [N].
IMAGES = "images"
PROBABILITIES = "probabilities"
LABEL = "label"
