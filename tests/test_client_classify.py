"""``fmnist classify`` against a real server, and the image files it reads (more in
test_client_cli.py)."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from common.contract import CLASS_NAMES
from common.pictures import load_png
from serving.client import cli
from serving.client.inputs import load_images, load_npy
from tests.conftest import reference


def test_classifying_with_the_baseline_itself_prints_its_answer_once(target, capsys):
    """--model baseline printed the baseline's line twice, its top classes and then the same
    version again as "the baseline's answer" (``fmnist score`` prints it once)."""
    assert cli.main(["classify", "--target", target, "--test-index", "0", "5", "--model",
                     "baseline"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[::2] == ["test[0]  (true: Ankle boot)", "test[5]  (true: Trouser)"]
    assert [line[:15] for line in lines[1::2]] == ["  baseline v1  "] * 2
    assert lines[1].count("%") == 3  # its top classes


def test_another_model_is_shown_beside_the_baseline(target, capsys):
    assert cli.main(["classify", "--target", target, "--test-index", "0", "--model",
                     "softmax"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:15] for line in lines[1:]] == ["  softmax v1   ", "  baseline v1  "]


def test_image_files_may_follow_options(target, tmp_path, capsys, test_set):
    """`fmnist classify a.png --top 1 b.png` exited 2 with 'fmnist: error: unrecognized
    arguments: b.png', and `--test-index 0 a.png` with "invalid int value: 'a.png'"."""
    for name, index in (("a.png", 0), ("b.png", 5), ("c.png", 1)):
        Image.fromarray(test_set[0][index]).save(tmp_path / name)
    a, b, c = (str(tmp_path / name) for name in ("a.png", "b.png", "c.png"))
    assert cli.main(["classify", "--target", target, a, "--top", "1", b, "--test-index", "3",
                     "4", c, "--version", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[::3] == [
        a, b, c, "test[3]  (true: Trouser)", "test[4]  (true: Shirt)"]


def test_files_come_in_the_order_given_when_one_is_named_as_an_option_value(
        target, tmp_path, capsys, monkeypatch, test_set):
    """`--model mlp b.png mlp` printed the file `mlp` first: the files were sorted by the
    first argument equal to each, here the value of --model."""
    monkeypatch.chdir(tmp_path)
    for name in ("b.png", "mlp", "c.png", "1"):
        Image.fromarray(test_set[0][0]).save(name, format="PNG")
    assert cli.main(["classify", "--target", target, "--model", "mlp", "--top", "1", "b.png",
                     "mlp", "--test-index", "3", "c.png", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[::3] == [
        "b.png", "mlp", "c.png", "1", "test[3]  (true: Trouser)"]


def test_a_test_index_that_is_not_a_number_is_still_refused_as_one(capsys):
    with pytest.raises(SystemExit) as refused:
        cli.main(["classify", "--test-index", "x1"])
    assert refused.value.code == 2
    assert capsys.readouterr().err == ("fmnist classify: error: --test-index: invalid int value: "
                                       "'x1' (see fmnist classify --help)\n")


def test_png_files_of_any_size_and_mode_become_28x28_gray(tmp_path, test_set):
    image = test_set[0][0]
    Image.fromarray(image).save(tmp_path / "same.png")
    np.testing.assert_array_equal(load_png(tmp_path / "same.png"), image)
    photo = Image.fromarray(255 - image).convert("RGB").resize((112, 112), Image.Resampling.NEAREST)
    photo.save(tmp_path / "photo.png")
    restored = load_png(tmp_path / "photo.png", invert=True)
    assert restored.shape == (28, 28) and restored.dtype == np.uint8
    # trimmed and centred anew: to the half pixel either way the data set centres by
    assert min(np.abs(np.roll(restored.astype(int), shift, axis) - image).mean()
               for shift in (-1, 0, 1) for axis in (0, 1)) < 8


def test_photos_are_read_upright_and_16_bit_images_whole(tmp_path, test_set):
    """A phone photo is stored sideways with an EXIF orientation that viewers apply, and a
    16-bit PNG's values reach 65535: both must come out as a person sees them."""
    image = test_set[0][0]
    sideways = Image.fromarray(np.rot90(image, 1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    sideways.save(tmp_path / "phone.png", exif=exif)
    np.testing.assert_array_equal(load_png(tmp_path / "phone.png"), image)
    Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(load_png(tmp_path / "deep.png"), image)


@pytest.mark.parametrize(("name", "deep"), [("float.tiff", lambda image: image / 255),
                                            ("float-255.tiff", lambda image: image * 1.0),
                                            ("int32.tiff", lambda image: image * 257)])
def test_32_bit_pictures_are_whole(tmp_path, test_set, name, deep):
    """A float TIFF (Pillow's mode F: values 0..1, as numpy and scientific tools write them)
    came out all black, and a 32-bit integer one of 16-bit values (mode I) clipped at 255:
    Pillow's "L" clips at 255, and the model answered for a black or a white-on-black blot."""
    image = test_set[0][0]
    Image.fromarray(deep(image.astype(np.float32 if "float" in name else np.int32))).save(
        tmp_path / name)
    assert Image.open(tmp_path / name).mode == ("F" if "float" in name else "I")
    np.testing.assert_array_equal(load_png(tmp_path / name), image)


def test_transparent_pictures_get_the_background_the_inversion_turns_black(tmp_path, test_set):
    """A cut-out product picture keeps its background in the alpha channel, often over black
    RGB: that background must end up black in the image the model sees, as Fashion-MNIST's."""
    image = test_set[0][0]
    cut_out = np.zeros((*image.shape, 4), np.uint8)
    cut_out[..., :3] = (255 - image)[..., None]  # a dark object as a photo has it
    cut_out[..., 3] = np.where(image > 0, 255, 0)  # the rest transparent, black underneath
    Image.fromarray(cut_out, "RGBA").save(tmp_path / "cut-out.png")
    np.testing.assert_array_equal(load_png(tmp_path / "cut-out.png", invert=True), image)
    light = cut_out.copy()
    light[..., :3] = image[..., None]  # a light object: transparent over white underneath
    light[..., :3][image == 0] = 255
    Image.fromarray(light, "RGBA").save(tmp_path / "light.png")
    np.testing.assert_array_equal(load_png(tmp_path / "light.png"), image)
    palette = Image.fromarray(image, "L").convert("P")  # index k is gray k ...
    palette.putpalette([255, 255, 255] + [k for k in range(1, 256) for _ in range(3)])
    palette.save(tmp_path / "palette.png", transparency=0)  # ... but 0 is a transparent white
    np.testing.assert_array_equal(load_png(tmp_path / "palette.png"), image)


def test_classify_png_and_npy_files(target, tmp_path, capsys, test_set):
    Image.fromarray(test_set[0][5]).resize((56, 56)).save(tmp_path / "shirt.png")
    np.save(tmp_path / "three.npy", test_set[0][:3])
    status = cli.main(["classify", "--target", target, "--model", "softmax",
                       str(tmp_path / "shirt.png"), str(tmp_path / "three.npy")])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert [lines[i] for i in range(0, 12, 3)] == [
        str(tmp_path / "shirt.png"), *(f"{tmp_path / 'three.npy'}[{i}]" for i in range(3))]
    assert lines[1].startswith("  softmax v1 ")


def test_classify_more_images_than_one_request_takes(target, tmp_path, capsys, test_set,
                                                     model_repository):
    """1500 images in one .npy: one request of them all was refused (over 1024 images)."""
    np.save(tmp_path / "many.npy", test_set[0][:1500])
    status = cli.main(["classify", "--target", target, "--top", "1", str(tmp_path / "many.npy")])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0 and len(lines) == 1500 * 3
    _, labels = reference(model_repository, "mlp", 2, test_set[0][:1500])
    shown = [line.split("mlp v2", 1)[1].strip().rsplit(" ", 1)[0].strip()
             for line in lines[1::3]]
    assert shown == [CLASS_NAMES[label] for label in labels]


def test_a_near_certain_answer_is_not_shown_as_certain(target, tmp_path, capsys,
                                                     model_repository):
    """The trained mlp's answer to test image 0 (0.999735) was printed "Ankle boot 100.0%"
    beside "Sneaker 0.0%", a certainty and an impossibility the model did not say (the page
    says ">99.9%" and "<0.1%")."""
    weights = next(numpy_helper.to_array(tensor) for tensor in onnx.load(
        model_repository / "mlp" / "2" / "model.onnx").graph.initializer
        if tensor.name == "weights")  # tests/conftest.py's tiny classifier: [784, 10]
    # lit where they speak for class 0 more than for the others: near-certain of class 0
    image = np.where(weights[:, 0] > weights[:, 1:].mean(axis=1), 255, 0).astype(np.uint8)
    probabilities, _ = reference(model_repository, "mlp", 2, image.reshape(1, 28, 28))
    assert probabilities.max() > 0.9995 and probabilities.min() < 0.0005
    np.save(tmp_path / "drawn.npy", image.reshape(28, 28))
    assert cli.main(["classify", "--target", target, "--top", "10",
                     str(tmp_path / "drawn.npy")]) == 0
    shown = capsys.readouterr().out.splitlines()[1].split()
    assert shown[:4] == ["mlp", "v2", CLASS_NAMES[0], ">99.9%"], shown
    assert shown[-1] == "<0.1%" and "100.0%" not in shown and "0.0%" not in shown, shown


def test_an_image_file_error_names_the_file(target, tmp_path, capsys, test_set):
    Image.fromarray(test_set[0][0]).save(tmp_path / "boot.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "boot.png").read_bytes()[:100])
    status = cli.main(["classify", "--target", target, str(tmp_path / "boot.png"),
                       str(tmp_path / "cut.png")])
    assert status == 1
    assert capsys.readouterr().err.startswith(f"fmnist classify: error: {tmp_path / 'cut.png'}: ")


@pytest.mark.parametrize("name", ["missing.png", "missing.npy"])
def test_a_file_that_cannot_be_read_is_named_with_the_reason(tmp_path, capsys, name):
    """`fmnist classify missing.png` said "[Errno 2] No such file or directory: 'missing.png'",
    Python's words, where every other file error says "FILE: what is wrong" (a folder:
    test_client_folders.py)."""
    assert cli.main(["classify", str(tmp_path / name)]) == 1
    assert capsys.readouterr().err == (f"fmnist classify: error: {tmp_path / name}: No such "
                                       "file or directory\n")


def test_an_npy_file_without_images_is_refused_by_name(target, tmp_path, capsys, test_set):
    """An empty .npy took one name and no image: the answers after it were printed under the
    names before them, then the command crashed on an index."""
    Image.fromarray(test_set[0][0]).save(tmp_path / "boot.png")
    np.save(tmp_path / "empty.npy", np.zeros((0, 28, 28), np.uint8))
    status = cli.main(["classify", "--target", target, str(tmp_path / "empty.npy"),
                       str(tmp_path / "boot.png"), "--test-index", "3"])
    captured = capsys.readouterr()
    assert (status, captured.out) == (1, "")
    assert captured.err == (f"fmnist classify: error: {tmp_path / 'empty.npy'}: expected at "
                            "least 1 image, got 0\n")


def test_npy_files_must_hold_uint8_images(tmp_path):
    np.save(tmp_path / "floats.npy", np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="expected uint8 pixels, got float32"):
        load_npy(tmp_path / "floats.npy")
    np.save(tmp_path / "flat.npy", np.zeros((2, 784), dtype=np.uint8))
    assert load_npy(tmp_path / "flat.npy").shape == (2, 28, 28)


@pytest.mark.parametrize("given", [["--test-index", "0"], ["three.npy"]])
def test_invert_with_no_picture_file_to_invert_is_refused(target, tmp_path, capsys,
                                                          monkeypatch, given):
    """--invert was ignored without a word for test-set images and .npy arrays, which are
    taken as they are: the answers shown were not for the inverted images asked for."""
    monkeypatch.chdir(tmp_path)
    np.save("three.npy", np.zeros((3, 28, 28), np.uint8))
    assert cli.main(["classify", "--target", target, "--invert", *given]) == 2
    assert capsys.readouterr().err == (
        "fmnist classify: error: --invert: no picture file to invert (.npy arrays and "
        "--test-index images are taken as they are) (see fmnist classify --help)\n")


def test_a_file_that_is_no_npy_array_is_refused_as_such(target, tmp_path, capsys):
    """Text named .npy, or an array of Python objects: numpy's messages said the file held
    pickled data and to load it with `allow_pickle=`, a keyword no command line has."""
    (tmp_path / "notes.npy").write_text("not an array")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}]), allow_pickle=True)
    for name, why in (("notes.npy", "not a .npy file (NumPy's array format)"),
                      ("objects.npy", "expected uint8 pixels, got object")):
        assert cli.main(["classify", "--target", target, str(tmp_path / name)]) == 1
        assert capsys.readouterr().err == f"fmnist classify: error: {tmp_path / name}: {why}\n"


def test_a_picture_on_a_light_background_is_said_to_need_invert(target, tmp_path, capsys,
                                                                 test_set):
    """A product photo, a dark object on white, was answered as confidently as any ("Bag
    >99.9%" for a boot) without a word that the model saw it as Fashion-MNIST's never are:
    the photo's name now says so (no test image has a border that light)."""
    image = test_set[0][0]
    Image.fromarray(255 - image).resize((112, 112)).save(tmp_path / "photo.png")
    Image.fromarray(image).save(tmp_path / "as-the-data.png")
    assert cli.main(["classify", "--target", target, "--top", "1", str(tmp_path / "photo.png"),
                     str(tmp_path / "as-the-data.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path / 'photo.png'}  (a light background: try --invert)"
    assert lines[3] == str(tmp_path / "as-the-data.png")
    assert cli.main(["classify", "--target", target, "--top", "1", "--invert",
                     str(tmp_path / "photo.png"), str(tmp_path / "as-the-data.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(tmp_path / "photo.png")
    assert lines[3] == f"{tmp_path / 'as-the-data.png'}  (a light background: drop --invert)"


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (640, 360)])
def test_a_photo_not_square_on_a_light_background_is_said_to_need_invert(tmp_path, test_set,
                                                                          size):
    """Only a square picture was named: a photo's usual 4:3 or 16:9 is padded with black to
    28x28, and the padding darkened the border measured, so a boot on white went unremarked."""
    photo = Image.fromarray(255 - test_set[0][0]).resize((size[1], size[1]))
    on_white = Image.new("L", size, 255)
    on_white.paste(photo, ((size[0] - size[1]) // 2, 0) if size[0] > size[1] else
                   (0, (size[1] - size[0]) // 2))
    on_white.save(tmp_path / "photo.jpg")
    assert load_images([tmp_path / "photo.jpg"])[1] == [
        f"{tmp_path / 'photo.jpg'}  (a light background: try --invert)"]
    assert load_images([tmp_path / "photo.jpg"], invert=True)[1] == [str(tmp_path / "photo.jpg")]
    line = tmp_path / "line.png"  # thinner than a pixel once fitted: nothing, black
    Image.new("L", (3000, 1), 255).save(line)
    assert load_images([line])[1] == [str(line)]


def test_a_batch_that_fails_in_a_stream_raises_its_own_error(target, test_set):
    """ClassifierClient.classify_batches: a batch of the wrong shape (or a generator of
    batches that failed, reading files) raised only gRPC's 'UNKNOWN: Exception iterating
    requests!', and the error that said what was wrong went to gRPC's log."""
    from serving.client.api import ClassifierClient

    def batches():
        yield test_set[0][:2]
        raise OSError("cannot read batch 1")

    with ClassifierClient(target) as client:
        with pytest.raises(ValueError, match=r"^expected uint8 images \[N,28,28\], got uint8 "
                           r"\(2, 784\)$"):
            list(client.classify_batches([test_set[0][:2], test_set[0][:2].reshape(2, 784)]))
        with pytest.raises(OSError, match=r"^cannot read batch 1$"):
            list(client.classify_batches(batches()))
        assert len(client.classify(test_set[0][:3])) == 3  # the client still serves
