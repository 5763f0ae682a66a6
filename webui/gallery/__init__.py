"""The gallery: every output image indexed for browsing, text search, near-duplicate and content search.

- `index.GalleryIndex`: the SQLite index (FTS5 + hashes + vectors); also the image store's save hook.
- `service.Gallery`: what the app uses: the index, scans, thumbnails, who sees what, the background embedder.
- `query`: the search box syntax.
- `hashing`, `matrix`: perceptual hashes and the numpy caches searched over every image.
Reading an image's infotext (PNG, JPEG/WEBP EXIF, ComfyUI) is webui/images/metadata.py, shared with PNG Info.
"""
from .index import GalleryIndex, GalleryRow, ImageRecord, ScanCounts, SearchPage
from .service import Gallery, Similar

__all__ = ["Gallery", "GalleryIndex", "GalleryRow", "ImageRecord", "ScanCounts", "SearchPage", "Similar"]
