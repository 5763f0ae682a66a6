"""The gallery: every output image indexed for browsing, text search, near-duplicate and content search.

- `index.GalleryIndex`: the SQLite index (FTS5 + hashes + vectors); also the image store's save hook.
- `query`: the search box syntax.
- `metadata.read_image_metadata`: the infotext of a PNG, JPEG/WEBP (EXIF) or ComfyUI file (PNG Info uses it too).
- `hashing`, `matrix`: perceptual hashes and the numpy caches searched over every image.
"""
from .index import GalleryIndex, GalleryRow, ImageRecord, ScanCounts, SearchPage
from .metadata import ImageMetadata, read_image_metadata

__all__ = ["GalleryIndex", "GalleryRow", "ImageMetadata", "ImageRecord", "ScanCounts", "SearchPage",
           "read_image_metadata"]
