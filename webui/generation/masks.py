"""Image and mask geometry for img2img, inpainting and outpainting (A1111's semantics).

Pure PIL/numpy, no models: resize modes, mask blur/invert, the "Only masked" crop region, the
"fill" pre-fill, and the overlay that puts the original pixels back outside the mask.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")
LANCZOS = Image.Resampling.LANCZOS


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image (RGBA, palette, greyscale, 16-bit) as RGB; transparency over `background`."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background + (255,))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    if image.mode in ("I;16", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = arr.max() or 1.0
        return Image.fromarray((arr / peak * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize modes: 0 stretch, 1 cover + centre crop, 2 fit + fill borders with stretched edges.
    Mode 3 (latent upscale) resizes in latent space; for pixels it behaves as 0."""
    if mode in (0, 3) or image.size == (width, height):
        return image.resize((width, height), LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        scale = width / image.width if ratio > src_ratio else height / image.height
        w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        resized = image.resize((w, h), LANCZOS)
        left, top = (w - width) // 2, (h - height) // 2
        return resized.crop((left, top, left + width, top + height))
    if mode == 2:
        scale = width / image.width if ratio < src_ratio else height / image.height
        w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        resized = image.resize((w, h), LANCZOS)
        canvas = Image.new(image.mode, (width, height))
        x, y = (width - w) // 2, (height - h) // 2
        canvas.paste(resized, (x, y))
        if h < height:  # stretch the top and bottom rows into the empty bands
            if y > 0:
                canvas.paste(resized.crop((0, 0, w, 1)).resize((w, y)), (x, 0))
            bottom = height - y - h
            if bottom > 0:
                canvas.paste(resized.crop((0, h - 1, w, h)).resize((w, bottom)), (x, y + h))
        if w < width:
            if x > 0:
                canvas.paste(resized.crop((0, 0, 1, h)).resize((x, h)), (0, y))
            right = width - x - w
            if right > 0:
                canvas.paste(resized.crop((w - 1, 0, w, h)).resize((right, h)), (x + w, y))
        return canvas
    raise ValueError(f"resize_mode: must be 0-3 (got {mode})")


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool) -> Image.Image:
    """Greyscale mask at the image's size (white = regenerate), inverted and blurred as asked."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        # a painted layer: the strokes' opacity is the mask (transparent = keep)
        rgba = mask.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        lum = np.asarray(rgba.convert("L"))
        grey = Image.fromarray(alpha if alpha.min() < 255 else lum)
    else:
        grey = mask.convert("L")
    if grey.size != size:
        grey = grey.resize(size, LANCZOS)
    if invert:
        grey = ImageOps.invert(grey)
    if blur > 0:
        grey = grey.filter(ImageFilter.GaussianBlur(blur))
    return grey


def mask_is_empty(mask: Image.Image) -> bool:
    return np.asarray(mask).max() == 0


def check_mask(mask: Image.Image, size: tuple[int, int], invert: bool) -> None:
    """The one "is there anything to regenerate?" check (every entry path's requests run it).
    Raises ValueError naming the field `mask`."""
    if mask_is_empty(prepare_mask(mask, size, 0, invert)):
        what = "white" if invert else "black"
        raise ValueError(f"mask: the mask is empty (all {what}{' with Inpaint not masked' if invert else ''}): "
                         "paint the area to regenerate, or leave the mask out for img2img")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int]:
    """Bounding box (x1, y1, x2, y2) of the mask's non-zero pixels, grown by `padding`, inside the image."""
    arr = np.asarray(mask)
    ys, xs = np.nonzero(arr)
    if len(xs) == 0:
        return (0, 0, mask.width, mask.height)
    x1, y1 = max(0, int(xs.min()) - padding), max(0, int(ys.min()) - padding)
    x2, y2 = min(mask.width, int(xs.max()) + 1 + padding), min(mask.height, int(ys.max()) + 1 + padding)
    return (x1, y1, x2, y2)


def expand_to_aspect(region: tuple[int, int, int, int], width: int, height: int,
                     image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """Grow a crop region to the target's aspect ratio, staying inside the image where it can."""
    x1, y1, x2, y2 = region
    w, h = x2 - x1, y2 - y1
    target = width / height
    if w / h < target:  # too narrow: widen
        new_w = min(image_w, round(h * target))
        x1 = max(0, min(x1 - (new_w - w) // 2, image_w - new_w))
        x2 = x1 + new_w
    elif w / h > target:  # too flat: heighten
        new_h = min(image_h, round(w / target))
        y1 = max(0, min(y1 - (new_h - h) // 2, image_h - new_h))
        y2 = y1 + new_h
    return (x1, y1, x2, y2)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": replace the masked area with ever blurrier copies of its surroundings,
    so no colour of the original survives under the mask."""
    keep = np.asarray(mask, dtype=np.float32)[..., None] / 255.0 < 0.5
    rgb = np.asarray(image, dtype=np.float32)
    out = np.where(keep, rgb, 0.0)
    for radius in (256, 64, 16, 4, 1):
        blurred = np.asarray(Image.fromarray((rgb * keep).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)),
                             dtype=np.float32)
        coverage = np.asarray(Image.fromarray((keep[..., 0] * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(radius)), dtype=np.float32)[..., None] / 255.0
        estimate = np.where(coverage > 1e-3, blurred / np.maximum(coverage, 1e-3), 0)
        out = np.where(keep, rgb, np.where(coverage > 1e-3, estimate, out))
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def overlay_original(generated: Image.Image, original: Image.Image, overlay_mask: Image.Image,
                     paste_box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Composite the original back outside the mask (A1111's overlay).

    `overlay_mask` is at the original's size, white where the generated pixels show. With
    `paste_box` (x1, y1, x2, y2), the generated image is first resized into that box of the original
    ("Only masked"). Where the mask is 0 the result is exactly the original."""
    if paste_box is not None:
        x1, y1, x2, y2 = paste_box
        base = original.copy()
        base.paste(generated.resize((x2 - x1, y2 - y1), LANCZOS), (x1, y1))
        generated = base
    elif generated.size != original.size:
        generated = generated.resize(original.size, LANCZOS)
    return Image.composite(generated, original, overlay_mask)
