"""File kinds every stage recognises (stdlib only, so the Pi runtime can import it too)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
