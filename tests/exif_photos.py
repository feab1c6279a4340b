"""Real photos stored the way cameras store them: for each EXIF orientation, pixels such that
applying the orientation gives back the upright photo (shared by the CPU and GPU tests)."""

from __future__ import annotations

import io

from PIL import Image

# Pillow's transpose that undoes what orientation N asks a viewer to do.
_STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_jpeg(upright_jpeg: bytes, orientation: int, quality: int = 95) -> bytes:
    """`upright_jpeg` re-encoded as a camera would store it with EXIF `orientation` (1..8)."""
    viewed = Image.open(io.BytesIO(upright_jpeg)).convert("RGB")
    stored = viewed if orientation == 1 else viewed.transpose(_STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()
