"""Large photos: decoded at a reduced JPEG scale, turned upright, measured at full size."""

import io

from PIL import Image

from loop import config
from loop.media.frames import FrameFile
from loop.media.geometry import Target
from loop.media.image import EXIF_ORIENTATION, open_image, upright_still
from loop.media.pixels import frame_image
from loop.media.render import render as render_upload

TARGET = Target(64, 32)


def halves_jpeg(size, left, right, orientation=None) -> bytes:
    img = Image.new("RGB", size, left)
    img.paste(Image.new("RGB", (size[0] // 2, size[1]), right), (size[0] // 2, 0))
    kwargs = {}
    if orientation:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        kwargs["exif"] = exif
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95, **kwargs)
    return out.getvalue()


def test_big_jpeg_is_decoded_at_a_reduced_scale_but_reports_its_size(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(halves_jpeg((4000, 3000), (250, 0, 0), (0, 0, 250)))
    with open_image(str(path), 40_000_000) as img:
        still, size = upright_still(img, TARGET)
        assert size == (4000, 3000)
        assert still.size == (500, 375)  # 1/8 scale: still far above the panel
    rendered = render_upload(str(path), str(tmp_path / "frames.bin"), TARGET,
                            config.defaults().media)
    assert (rendered.width, rendered.height, rendered.frames) == (4000, 3000, 1)
    frames = FrameFile(str(tmp_path / "frames.bin"))
    image = frame_image(frames.frame(0), 64, 32)
    frames.close()
    # contain: 4:3 letterboxed to 43x32, red on the left, blue on the right
    left, right = image.getpixel((20, 16)), image.getpixel((44, 16))
    assert left[0] > 200 and left[2] < 50, left
    assert right[2] > 200 and right[0] < 50, right
    assert image.getpixel((2, 16)) == (0, 0, 0)


def test_small_jpeg_is_not_reduced(tmp_path):
    path = tmp_path / "small.jpg"
    path.write_bytes(halves_jpeg((300, 200), (250, 0, 0), (0, 0, 250)))
    with open_image(str(path), 40_000_000) as img:
        still, size = upright_still(img, TARGET)
        assert still.size == size == (300, 200)


def test_exif_rotated_photo_stands_upright_with_its_upright_size(tmp_path):
    path = tmp_path / "phone.jpg"
    # stored landscape, orientation 6: shown rotated 90 degrees clockwise (portrait)
    path.write_bytes(halves_jpeg((2000, 1000), (250, 0, 0), (0, 0, 250), orientation=6))
    with open_image(str(path), 40_000_000) as img:
        still, size = upright_still(img, TARGET)
        assert size == (1000, 2000)
        assert still.width < still.height
        # clockwise: the stored left (red) half ends up on top
        top, bottom = still.getpixel((still.width // 2, 5)), \
            still.getpixel((still.width // 2, still.height - 5))
        assert top[0] > 200 and bottom[2] > 200, (top, bottom)
