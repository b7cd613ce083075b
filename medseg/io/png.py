"""PNG pixels as stored: what Pillow and imageio decode differently (16-bit colour, palettes, 1-bit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_png(path: Path) -> np.ndarray:
    """A PNG's stored values: 16-bit samples kept, a colour palette's indices, 1-bit pixels as 0/1 (``bool``).

    Parameters
    ----------
    path : Path
        The PNG file; a chunk whose CRC does not match is an error (Pillow's).

    Returns
    -------
    ndarray
        ``(rows, columns)``, or ``(rows, columns, samples)`` for colour or grey with alpha, in the stored type
        (uint8, uint16; ``bool`` for 1-bit). A palette's indices, unless its colours used are greys (then their
        values).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from PIL import Image
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.array([[0, 1000], [65535, 7]], np.uint16)).save(folder / "grey16.png")
    >>> read_png(folder / "grey16.png").dtype.name, read_png(folder / "grey16.png").tolist()
    ('uint16', [[0, 1000], [65535, 7]])
    >>> labels = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    >>> labels.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])  # ids 1 and 2 shown red and green
    >>> labels.save(folder / "labels.png")
    >>> read_png(folder / "labels.png").tolist()  # the ids, not the colours
    [[0, 1], [2, 1]]
    """
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
