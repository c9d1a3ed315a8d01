"""A large picture given to ``fmnist classify`` costs about its decoded size, not that again;
one too large for the memory there is says so."""

import resource
import struct
import subprocess
import sys
import zlib
from functools import partial

from PIL import Image

# VmHWM: this process's peak since its exec (ru_maxrss keeps the peak of the process forked);
# VmPeak: its address space's, which RLIMIT_AS holds
PEAK = ("import re, sys; from pathlib import Path; from serving.client.inputs import "
        "load_images; load_images([Path(sys.argv[1])]); print(re.search(sys.argv[2] + "
        "r':\\s+(\\d+) kB', Path('/proc/self/status').read_text())[1])")


def _peak_kb(path, which: str = "VmHWM") -> int:
    return int(subprocess.run([sys.executable, "-c", PEAK, str(path), which],
                              capture_output=True, text=True, timeout=120, check=True).stdout)


def test_a_large_picture_is_not_copied_whole_to_be_turned_upright(tmp_path):
    """An 8000x8000 RGB PNG of one colour (a 200 KB file, 192 MB decoded) took ~550 MB more
    than a small one: ImageOps.exif_transpose returned a whole copy of a picture it did not
    turn, beside the grayscale one (now ~300 MB more)."""
    for name, size in (("small.png", 80), ("large.png", 8000)):
        Image.new("RGB", (size, size), (200, 30, 30)).save(tmp_path / name)
    decoded_kb = 8000 * 8000 * 3 // 1024
    extra_kb = _peak_kb(tmp_path / "large.png") - _peak_kb(tmp_path / "small.png")
    assert extra_kb < 1.8 * decoded_kb, f"{extra_kb // 1024} MB for {decoded_kb // 1024} MB"


def _flat_png(width: int, height: int) -> bytes:
    """An RGBA PNG of one colour, written row by row (never held decoded: 676 MB at 13000)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(
            kind + data))

    packer, row = zlib.compressobj(1), b"\0" + b"\x80" * (4 * width)  # filter 0, grey
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits, RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def test_a_picture_too_large_for_the_memory_is_said_in_one_line(tmp_path):
    """Under Pillow's pixel limit (13000x13000: 169 of its 179 million), decoded 676 MB, in a
    process whose address space may grow 300 MB past what the client takes with a small
    picture (~250 MB here; more where numpy's threads or malloc's arenas reserve more): Pillow's
    MemoryError was said as "a damaged PNG image, or cut short"."""
    Image.new("RGB", (80, 80)).save(tmp_path / "small.png")
    limit = (_peak_kb(tmp_path / "small.png", "VmPeak") << 10) + (300 << 20)
    path = tmp_path / "wall.png"
    path.write_bytes(_flat_png(13000, 13000))
    held = partial(resource.setrlimit, resource.RLIMIT_AS, (limit, limit))
    run = subprocess.run(
        [sys.executable, "-m", "serving.client", "classify", "--target", "127.0.0.1:1",
         str(path)], preexec_fn=held, capture_output=True, text=True, timeout=120, check=False)
    assert (run.returncode, run.stderr) == (1, (
        f"fmnist classify: error: {path}: 13000x13000 pixels, more than the memory here can "
        "decode; scale it down first\n"))
