"""A picture file framed as Fashion-MNIST's images are (``common.pictures``): trimmed of its
black edges, fitted (longer side 28) and centred, so that a garment small in a corner of a
photo (or of the page's drawing pad) fills the model's 28x28 as the dataset's garments do."""

import numpy as np
from PIL import Image

from common.pictures import load_png
from serving.client.inputs import load_images


def test_a_small_garment_in_a_corner_fills_the_frame_centred(tmp_path, test_set):
    """A picture was fitted whole into 28x28: a garment in a corner of a photo stayed a few
    pixels in a corner of what the model saw."""
    garment = np.kron(test_set[0][1], np.ones((3, 3), np.uint8))  # 84x84, a pullover
    Image.fromarray(garment).save(tmp_path / "alone.png")
    photo = np.zeros((300, 400), np.uint8)
    photo[10:94, 300:384] = garment
    Image.fromarray(photo).save(tmp_path / "in-a-corner.png")
    Image.fromarray(255 - photo).save(tmp_path / "dark-on-light.png")
    framed = load_png(tmp_path / "alone.png")
    assert framed.any(axis=0)[[0, -1]].all() or framed.any(axis=1)[[0, -1]].all()  # fills it
    np.testing.assert_array_equal(load_png(tmp_path / "in-a-corner.png"), framed)
    np.testing.assert_array_equal(load_png(tmp_path / "dark-on-light.png", invert=True), framed)


def test_a_trimmed_pictures_own_border_is_not_taken_for_a_light_background(tmp_path):
    """Trimmed, a light square on black fills its frame to the edges: its border is the
    square's, and `fmnist classify` would say "(a light background: try --invert)" of it."""
    square = np.zeros((300, 300), np.uint8)
    square[50:150, 100:200] = 230
    Image.fromarray(square).save(tmp_path / "square.png")
    assert load_images([tmp_path / "square.png"])[1] == [str(tmp_path / "square.png")]
    assert load_png(tmp_path / "square.png").min() == 230  # filled, edge to edge
