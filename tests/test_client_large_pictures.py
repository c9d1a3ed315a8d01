"""A large picture given to ``fmnist classify`` costs about its decoded size, not that again."""

import subprocess
import sys

from PIL import Image

# VmHWM: this process's peak since its exec (ru_maxrss keeps the peak of the process forked)
PEAK = ("import re, sys; from pathlib import Path; from serving.client.inputs import "
        "load_images; load_images([Path(sys.argv[1])]); print(re.search(r'VmHWM:\\s+(\\d+) kB', "
        "Path('/proc/self/status').read_text())[1])")


def _peak_kb(path) -> int:
    return int(subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True,
                              text=True, timeout=120, check=True).stdout)


def test_a_large_picture_is_not_copied_whole_to_be_turned_upright(tmp_path):
    """An 8000x8000 RGB PNG of one colour (a 200 KB file, 192 MB decoded) took ~550 MB more
    than a small one: ImageOps.exif_transpose returned a whole copy of a picture it did not
    turn, beside the grayscale one (now ~300 MB more)."""
    for name, size in (("small.png", 80), ("large.png", 8000)):
        Image.new("RGB", (size, size), (200, 30, 30)).save(tmp_path / name)
    decoded_kb = 8000 * 8000 * 3 // 1024
    extra_kb = _peak_kb(tmp_path / "large.png") - _peak_kb(tmp_path / "small.png")
    assert extra_kb < 1.8 * decoded_kb, f"{extra_kb // 1024} MB for {decoded_kb // 1024} MB"
