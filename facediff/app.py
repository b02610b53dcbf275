"""The interactive page (`facediff-app ckpt_path=...`, Gradio): attributes in three states, a
mask from the validation set, an upload or painted by class, a part swapped in from another
face, guidance per condition, steps and seed; it shows the samples and the mask they used.

The logic lives in plain functions (`read_mask_file`, `painted_mask`, `FaceApp.generate`) that
the tests call directly; `FaceApp.blocks()` only lays them out. A bad upload (not an image, a
wrong size, colours outside the palette) is a message in the page, never a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from facediff.api import FaceGenerator, datamodule_for
from facediff.conditions import label_map
from facediff.data.labels import MASK_CLASSES, MASK_PALETTE, NUM_MASK_CLASSES
from facediff.editing import PART_GROUPS, swap_parts
from facediff.visualize import colorize

STATES = {"+1 present": 1, "0 unknown": None, "-1 absent": 0}
MASK_SOURCES = ("none", "validation set", "upload", "painted")
GROUPS = (  # (group, keywords): the first group whose keyword is in the name takes it
    ("Hair", ("Hair", "Bald", "Bangs", "Receding")),
    ("Beard", ("Beard", "Goatee", "Mustache", "Shadow", "Sideburns")),
    ("Accessories", ("Wearing", "Eyeglasses", "Eyewear", "Makeup")),
    ("Eyes and brows", ("Eye", "Brow")),
    ("Mouth", ("Smiling", "Mouth", "Lips")),
    ("Face", ("Face", "Nose", "Cheek", "Chin", "Chubby", "Skin", "Forehead")),
)


def attribute_groups(names: list[str]) -> dict[str, list[str]]:
    """Attribute names grouped for the page (the rest under "Person")."""
    out: dict[str, list[str]] = {}
    for name in names:
        group = next((g for g, keys in GROUPS if any(k in name for k in keys)), "Person")
        out.setdefault(group, []).append(name)
    return out


class MaskError(ValueError):
    """A mask the page cannot use; the message is shown in the page."""


def labels_from_colours(rgb: np.ndarray, where: str) -> np.ndarray:
    """An (H, W, 3) image coloured with MASK_PALETTE -> labels; other colours are an error."""
    flat = rgb.reshape(-1, 3).astype(np.int64)
    codes = flat @ np.array([65536, 256, 1])
    palette = MASK_PALETTE[:NUM_MASK_CLASSES].astype(np.int64) @ np.array([65536, 256, 1])
    lut = {int(c): i for i, c in enumerate(palette)}
    unknown = sorted(set(np.unique(codes).tolist()) - set(lut))
    if unknown:
        c = unknown[0]
        raise MaskError(
            f"{where}: {len(unknown)} colour(s) outside the mask palette, e.g. RGB "
            f"({c >> 16}, {(c >> 8) & 255}, {c & 255}); upload a label map (pixel values "
            f"0..{NUM_MASK_CLASSES - 1}) or a mask coloured with facediff's palette"
        )
    return np.vectorize(lut.__getitem__)(codes).reshape(rgb.shape[:2])


MAX_UPLOAD_BYTES = 5_000_000  # an uploaded mask file, checked before it is read
MAX_UPLOAD_PIXELS = 4096 * 4096  # its width x height, checked before it is decoded


def read_mask_file(
    path,
    res: int,
    resize: bool = False,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
) -> torch.Tensor:
    """An uploaded mask: a label PNG (values 0..18, grey or palette mode) or a colour PNG in the
    mask palette, of the model's size (or any size with `resize`). Raises MaskError.

    The file's size and then its pixel count (from the header) are checked before anything is
    decoded: a small PNG can declare 13000 x 13000 pixels, which would take ~15 GB to decode."""
    where = f"upload {Path(path).name}"
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise MaskError(f"{where}: cannot be read ({e.strerror})") from None
    if size > max_bytes:
        raise MaskError(
            f"{where}: {size:,} bytes, more than the {max_bytes:,} allowed (max_upload_bytes); "
            "a label map of a face is a few kB"
        )
    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
            if w * h > max_pixels:
                raise MaskError(
                    f"{where}: {w} x {h} pixels, more than the {max_pixels:,} allowed "
                    f"(max_upload_pixels); the model draws {res} x {res}"
                )
            im.load()
            mode, arr = im.mode, np.asarray(im)
    except MaskError:
        raise
    except Image.DecompressionBombError:
        raise MaskError(f"{where}: too many pixels to decode safely (max_upload_pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise MaskError(f"{where}: not an image (expected a PNG label map)") from None
    if mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if (rgb == rgb[..., :1]).all():  # a grey image saved as RGB: its values are labels
            arr = rgb[..., 0]
        else:
            arr = labels_from_colours(rgb, where)
    elif arr.ndim != 2:
        raise MaskError(f"{where}: image mode {mode} is not a label map")
    try:
        return label_map(arr, res, resize)
    except ValueError as e:
        raise MaskError(str(e).replace("mask:", f"{where}:", 1)) from None


def painted_mask(value, res: int) -> torch.Tensor:
    """The painted mask of the editor (its composite, any size) -> (res, res) labels: every
    pixel takes the nearest palette colour, then nearest-neighbour down to the model's size."""
    image = value.get("composite") if isinstance(value, dict) else value
    if image is None:
        raise MaskError("painted: nothing painted yet (choose a starting mask, then paint)")
    rgb = np.asarray(Image.fromarray(np.asarray(image).astype(np.uint8)).convert("RGB"))
    rgb = np.asarray(Image.fromarray(rgb).resize((res, res), Image.NEAREST)).astype(np.int64)
    dist = ((rgb[:, :, None, :] - MASK_PALETTE[:NUM_MASK_CLASSES].astype(np.int64)) ** 2).sum(-1)
    return torch.as_tensor(dist.argmin(-1)).long()


def palette_legend() -> str:
    """The mask classes with their colours (what each brush colour paints)."""
    cells = "".join(
        f'<span style="display:inline-block;margin:2px 6px 2px 0"><span style="display:'
        f"inline-block;width:12px;height:12px;background:rgb{tuple(int(v) for v in c)};"
        f'border:1px solid #888;vertical-align:middle"></span> {name}</span>'
        for name, c in zip(MASK_CLASSES, MASK_PALETTE)
    )
    return f'<div style="font-size:12px">{cells}</div>'


def upscaled(image: np.ndarray, factor: int) -> Image.Image:
    h, w = image.shape[:2]
    return Image.fromarray(image).resize((w * factor, h * factor), Image.NEAREST)


class FaceApp:
    """A trained model and the validation masks of its data (when the data is there)."""

    def __init__(
        self,
        gen: FaceGenerator,
        upscale: int = 4,
        num_validation: int = 16,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_upload_pixels: int = MAX_UPLOAD_PIXELS,
    ):
        self.gen, self.upscale = gen, upscale
        self.max_upload_bytes, self.max_upload_pixels = max_upload_bytes, max_upload_pixels
        self.res = gen.model.image_size
        self.masks: list[torch.Tensor] = []
        self.data_note = ""
        if "mask" in gen.conditions:
            try:
                ds = datamodule_for(gen.model).dataset("val")
                self.masks = [ds[i]["mask"] for i in range(min(num_validation, len(ds)))]
            except Exception as e:  # noqa: BLE001 - the page works without the data
                self.data_note = f"validation masks unavailable ({e})"

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", **kwargs) -> FaceApp:
        return cls(FaceGenerator.from_checkpoint(path, device), **kwargs)

    def base_mask(self, source: str, index: int, upload, painted, resize: bool):
        """The mask the samples use, or None (the mask condition dropped)."""
        if source == "none":
            return None
        if source == "validation set":
            if not self.masks:
                raise MaskError(f"validation set: no masks ({self.data_note or 'none loaded'})")
            return self.masks[int(index) % len(self.masks)]
        if source == "upload":
            if not upload:
                raise MaskError("upload: no file uploaded")
            return read_mask_file(
                upload, self.res, resize, self.max_upload_bytes, self.max_upload_pixels
            )
        if source == "painted":
            return painted_mask(painted, self.res)
        raise MaskError(f"mask source {source!r}: expected one of {MASK_SOURCES}")

    def generate(
        self,
        states: dict[str, str],
        mask_source: str = "none",
        val_index: int = 0,
        upload=None,
        painted=None,
        resize: bool = False,
        swap: list[str] | None = None,
        swap_index: int = 1,
        guidance: dict[str, float] | None = None,
        steps: int = 25,
        seed: int = 0,
        num_samples: int = 4,
    ) -> tuple[list[Image.Image], Image.Image | None, str]:
        """(samples, the mask used, a status line). A bad input gives no samples and says why."""
        try:
            mask = self.base_mask(mask_source, val_index, upload, painted, resize)
            if swap:
                if mask is None or not self.masks:
                    raise MaskError(
                        "swap: needs a mask and the validation masks to take parts from"
                    )
                mask = swap_parts(mask, self.masks[int(swap_index) % len(self.masks)], swap)
        except (MaskError, ValueError) as e:
            return [], None, f"**Error:** {e}"
        attributes = {n: STATES[s] for n, s in states.items() if STATES.get(s) is not None}
        images = self.gen.sample(
            attributes=attributes if "attrs" in self.gen.conditions else None,
            mask=mask if "mask" in self.gen.conditions else None,
            num_samples=int(num_samples),
            num_steps=int(steps),
            guidance_scale={k: float(v) for k, v in (guidance or {}).items()} or None,
            seed=int(seed),
        )
        shown = upscaled(colorize(mask), self.upscale) if mask is not None else None
        status = f"{len(images)} samples, seed {int(seed)}, {int(steps)} steps"
        return [upscaled(x, self.upscale) for x in images], shown, status

    def blocks(self):
        """The Gradio page."""
        import gradio as gr

        gen = self.gen
        names = list(gen.attr_names) if "attrs" in gen.conditions else []
        default_scale = gen.model.sampler.guidance_scale
        with gr.Blocks(title="facediff") as page:
            gr.Markdown(
                f"### facediff: {len(names)} attributes, {self.res} px, conditions "
                f"{', '.join(gen.conditions) or 'none'}"
            )
            radios = {}
            with gr.Row():
                with gr.Column(scale=2):
                    for group, members in attribute_groups(names).items():
                        with gr.Accordion(group, open=True):
                            for n in members:
                                radios[n] = gr.Radio(
                                    list(STATES), value="0 unknown", label=n, elem_id=f"attr-{n}"
                                )
                with gr.Column(scale=2):
                    source = gr.Radio(
                        list(MASK_SOURCES),
                        value="validation set" if self.masks else "none",
                        label="mask",
                        elem_id="mask-source",
                    )
                    top = max(len(self.masks) - 1, 0)
                    val_index = gr.Slider(0, top, value=0, step=1, label="validation item")
                    upload = gr.File(label="upload a mask PNG", type="filepath", elem_id="upload")
                    resize = gr.Checkbox(False, label="resize an upload to the model's size")
                    start = self.masks[0] if self.masks else torch.zeros(self.res, self.res)
                    colours = [
                        "#" + bytes(int(v) for v in c).hex()
                        for c in MASK_PALETTE[:NUM_MASK_CLASSES]
                    ]
                    painted = gr.ImageEditor(
                        value=np.asarray(upscaled(colorize(start.long()), 8)),
                        label="paint by class (starts from the validation item)",
                        brush=gr.Brush(colors=colours, color_mode="fixed", default_size=8),
                        image_mode="RGB",
                        format="png",
                        layers=False,
                    )
                    gr.HTML(palette_legend(), elem_id="palette")
                    parts = sorted(set(MASK_CLASSES[1:]) | set(PART_GROUPS))
                    swap = gr.Dropdown(parts, multiselect=True, label="swap parts in from")
                    swap_index = gr.Slider(0, top, value=min(1, top), step=1, label="other face")
                with gr.Column(scale=3):
                    scales = {
                        c: gr.Slider(
                            0,
                            8,
                            value=float(
                                default_scale.get(c, 1.0)
                                if isinstance(default_scale, dict)
                                else default_scale
                            ),
                            step=0.25,
                            label=f"guidance: {c}",
                        )
                        for c in gen.conditions
                    }
                    steps = gr.Slider(
                        1, 100, value=int(gen.model.sampler.num_steps), step=1, label="steps"
                    )
                    seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                    count = gr.Slider(1, 8, value=4, step=1, label="samples")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    status = gr.Markdown(elem_id="status")
                    gallery = gr.Gallery(label="samples", columns=4, elem_id="samples")
                    shown = gr.Image(label="mask used", elem_id="mask-used")

            attr_names, cond_names = list(radios), list(scales)

            def run(*values):
                k = len(attr_names)
                states = dict(zip(attr_names, values[:k]))
                src, vi, up, paint, rs, sw, si = values[k : k + 7]
                g = dict(zip(cond_names, values[k + 7 : k + 7 + len(cond_names)]))
                st, sd, n = values[k + 7 + len(cond_names) :]
                return self.generate(states, src, vi, up, paint, rs, sw, si, g, st, sd, n)

            def paint_from(index):
                if not self.masks:
                    return gr.update()
                mask = self.masks[int(index) % len(self.masks)]
                return np.asarray(upscaled(colorize(mask), 8))

            val_index.change(paint_from, val_index, painted)
            inputs = [*radios.values(), source, val_index, upload, painted, resize, swap]
            inputs += [swap_index, *scales.values(), steps, seed, count]
            button.click(run, inputs, [gallery, shown, status])
        return page


def launch(cfg) -> None:
    """facediff-app: build the page and serve it on cfg.host:cfg.port (localhost by default)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = FaceApp.from_checkpoint(
        cfg.ckpt_path,
        cfg.device,
        upscale=cfg.upscale,
        num_validation=cfg.num_validation,
        max_upload_bytes=int(cfg.get("max_upload_bytes", MAX_UPLOAD_BYTES)),
        max_upload_pixels=int(cfg.get("max_upload_pixels", MAX_UPLOAD_PIXELS)),
    )
    page = app.blocks()
    page.queue().launch(
        server_name=cfg.host,
        server_port=cfg.port,
        share=False,
        max_file_size=app.max_upload_bytes,  # gradio refuses larger uploads before facediff
        prevent_thread_lock=bool(cfg.get("background", False)),
        quiet=bool(cfg.get("quiet", False)),
    )
