"""PNG pixels as stored: what Pillow and imageio decode differently (16-bit colour, palettes, 1-bit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_png(path: Path) -> np.ndarray:
    """A PNG's stored values: 16-bit samples kept, a colour palette's indices, 1-bit pixels as 0/1 (``bool``)."""
    import imageio.v3 as iio
    from PIL import Image as PILImage

    with PILImage.open(path) as png:  # checks every chunk's CRC (decoding does not): a flipped bit is
        png.verify()                  # otherwise read as valid pixels
    with open(path, "rb") as f:
        depth, colour = f.read(26)[24:26]  # IHDR: bit depth, colour type
    if depth == 16 and colour in (2, 4, 6):  # Pillow gives 16-bit RGB(A) and grey+alpha as 8 bits (>> 8)
        import imagecodecs

        return np.asarray(imagecodecs.png_decode(path.read_bytes()))
    if colour == 3:
        with PILImage.open(path) as png:
            idx, pal = np.asarray(png), np.asarray(png.getpalette() or [], np.uint8).reshape(-1, 3)
        used = np.unique(idx)
        # a colour palette is a display LUT (ImageJ, label maps): the indices are the values (the ids); a grey one
        # holds the values themselves
        if used.max() < len(pal) and (pal[used] == pal[used, :1]).all():
            return pal[idx, 0]
        return idx
    arr = np.asarray(iio.imread(path))
    # Pillow's 1-bit pixels are bools stored as 0/255 bytes (a label map's id would read as 255)
    return arr.view(np.uint8) != 0 if arr.dtype == bool else arr
