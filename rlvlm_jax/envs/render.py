"""Pictures drawn on the device from a few precomputed tiles.

A task's picture is a fixed background plus a handful of *regions* (a card slot, a digit, a formula
slot), each showing one of K variants. At construction we paint every variant of every region on
the host with a real font (PIL, DejaVu Sans Bold shipped with matplotlib), find the box of pixels
that a region's variants change, and keep those crops as a tile table. On the device a picture is
then a few `dynamic_update_slice` writes of gathered tiles at fixed positions: no per-pixel work,
no host round trip, and in a `lax.scan` the writes land in place in the carried picture.

Text whose position depends on what precedes it (the original gym_cards' formula line, one string
of tokens joined by spaces) cannot be a fixed region: it is a `TextRun`. Each token's glyph mask
is painted once per sub-pixel pen phase (1/64 px, FreeType's unit) and the device composes a line
as PIL lays it out: pen positions are running sums of the tokens' advances, masks are combined
by maximum and blended into the background with PIL's own integer formula.

The host painter is the single source of truth for the layout; tests check that the device picture
equals the painter's picture for random states, which proves the decomposition exact.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

DESIGN_SIZE = 300  # layouts are written for 300x300 pictures (the original's size) and scaled
MIN_FONT_PX = 7  # smaller text is not reliably legible; sizes that need it are refused

FELT = (0x35, 0x65, 0x4D)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
RED = (200, 0, 0)

SUITS = "\u2660\u2665\u2666\u2663"  # spades, hearts, diamonds, clubs (suit index 0..3)
RANK_NAMES = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")  # rank 1..13
NUM_CARDS = 52  # card id = (rank - 1) * 4 + suit


def card_id(rank, suit):
    """Card id in 0..51 from rank 1..13 and suit 0..3 (works on ints and arrays)."""
    return (rank - 1) * 4 + suit


@functools.cache
def font_path() -> str:
    """DejaVu Sans Bold as shipped by matplotlib (a gymnax dependency), so every install has it."""
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans-Bold.ttf")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"DejaVuSans-Bold.ttf not found at {path}; reinstall matplotlib (pinned in "
            "requirements.txt), which ships the font the pictures are drawn with."
        )
    return path


@functools.cache
def font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(), px)


class Layout:
    """Scales design coordinates (300x300) to a picture of `size` pixels."""

    def __init__(self, size: int, task: str, smallest_font: float):
        if not isinstance(size, int | np.integer) or isinstance(size, bool):
            raise TypeError(f"image_size must be an int, got {size!r}")
        self.size = int(size)
        min_size = min_image_size(smallest_font)
        if self.size < min_size:
            raise ValueError(
                f"image_size={size} is too small to draw {task} legibly: its smallest text would "
                f"be {self.px(smallest_font)} px tall (< {MIN_FONT_PX}); use image_size >= "
                f"{min_size}."
            )

    def px(self, v: float) -> int:
        return int(round(v * self.size / DESIGN_SIZE))

    def font(self, v: float) -> ImageFont.FreeTypeFont:
        return font(max(1, self.px(v)))


def min_image_size(smallest_font: float) -> int:
    """Smallest picture size at which a design font size of `smallest_font` stays legible."""
    size = 1
    while int(round(smallest_font * size / DESIGN_SIZE)) < MIN_FONT_PX:
        size += 1
    return size


# ----------------------------------------------------------------------------------------- painting
def new_canvas(size: int, color) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (size, size), color)
    return img, ImageDraw.Draw(img)


@functools.cache
def card_face(rank: int, suit: int, w: int, h: int) -> np.ndarray:
    """A playing card, w x h pixels: rank in the top-left corner, a large suit in the middle."""
    img = Image.new("RGB", (w, h), FELT)
    draw = ImageDraw.Draw(img)
    radius = max(2, round(0.08 * w))
    draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=radius, fill=WHITE, outline=(90, 90, 90))
    color = RED if suit in (1, 2) else BLACK
    rank_font = font(max(1, round(0.27 * h)))
    draw.text(
        (round(0.08 * w), round(0.04 * h)),
        RANK_NAMES[rank - 1],
        font=rank_font,
        fill=color,
        anchor="la",
    )
    suit_font = font(max(1, round(0.46 * h)))
    draw.text((w // 2, round(0.66 * h)), SUITS[suit], font=suit_font, fill=color, anchor="mm")
    return np.asarray(img)


@functools.cache
def card_back(w: int, h: int) -> np.ndarray:
    """The face-down card: a blue lattice inside a white frame, clearly not a face."""
    img = Image.new("RGB", (w, h), FELT)
    draw = ImageDraw.Draw(img)
    radius = max(2, round(0.08 * w))
    draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=radius, fill=WHITE, outline=(90, 90, 90))
    m = max(2, round(0.1 * w))
    inner = Image.new("RGB", (w - 2 * m, h - 2 * m), (30, 60, 150))
    lattice = ImageDraw.Draw(inner)
    step = max(3, round(0.15 * w))
    for k in range(-h, w + h, step):
        lattice.line((k, 0, k + h, h), fill=(120, 150, 220))
        lattice.line((k, 0, k - h, h), fill=(120, 150, 220))
    img.paste(inner, (m, m))
    return np.asarray(img)


def paste(img: Image.Image, arr: np.ndarray, x: int, y: int) -> None:
    img.paste(Image.fromarray(arr), (x, y))


# ------------------------------------------------------------------------------------------ regions
@dataclasses.dataclass(frozen=True)
class Region:
    """A box of the picture whose pixels are one of `tiles` (K variants of shape h x w x 3)."""

    name: str
    y: int
    x: int
    tiles: np.ndarray


_PHASES = 64  # FreeType positions glyphs in 1/64 px


@dataclasses.dataclass(frozen=True)
class TextRun:
    """A line of tokens drawn where the text before them ends: rows `y:y + masks.shape[2]` of the
    picture are rewritten from `band` (the background's rows) blended with `ink` through the
    composed alpha. `masks[k, phase]` is token k's alpha with its pen at column `lead` plus
    phase/64 px; `advances[k]` its advance (its text and the separator) in 1/64 px; `start` the
    first token's pen in 1/64 px from the picture's left edge."""

    name: str
    y: int
    band: np.ndarray  # uint8 [h, S, 3]
    masks: np.ndarray  # uint8 [K, 64, h, w]
    advances: np.ndarray  # int32 [K]
    start: int
    lead: int
    ink: tuple[int, int, int]

    def draw(self, canvas: jax.Array, codes: jax.Array, length: jax.Array) -> jax.Array:
        """Writes the line of `codes[:length]` (jittable; `codes` has a static length)."""
        masks = jnp.asarray(self.masks)
        advances = jnp.asarray(self.advances)
        _, _, h, w = self.masks.shape
        size = self.band.shape[1]
        # Column j of `acc` is picture column j - lead; the last pen is bounded by the advances.
        width = self.lead + (self.start + len(codes) * int(self.advances.max())) // _PHASES + w
        acc = jnp.zeros((h, max(width, self.lead + size)), jnp.uint8)
        pen = jnp.int32(self.start)
        for i in range(codes.shape[0]):
            live = i < length
            k = codes[i]
            col = pen // _PHASES
            here = jax.lax.dynamic_slice(acc, (0, col), (h, w))
            mask = jnp.where(live, masks[k, pen % _PHASES], 0)
            acc = jax.lax.dynamic_update_slice(acc, jnp.maximum(here, mask), (0, col))
            pen = pen + jnp.where(live, advances[k], 0)
        alpha = acc[:, self.lead:self.lead + size, None].astype(jnp.int32)
        band = jnp.asarray(self.band).astype(jnp.int32)
        ink = jnp.asarray(self.ink, jnp.int32)
        # PIL's BLEND for a mask fill (libImaging/Paste.c): DIV255(bg * (255 - a) + ink * a).
        tmp = band * (255 - alpha) + ink * alpha + 128
        line = ((tmp >> 8) + tmp) >> 8
        return jax.lax.dynamic_update_slice(canvas, line.astype(canvas.dtype), (self.y, 0, 0))


def text_run(name: str, background: np.ndarray, xy: tuple[float, float], prefix: str,
             tokens: Mapping[int, str], fnt: ImageFont.FreeTypeFont, ink, separator: str = " "
             ) -> TextRun:
    """The `TextRun` of `draw.text(xy, prefix + separator.join(texts), font=fnt, fill=ink)` on
    `background`, a picture that already shows `prefix` (it is part of the background). `tokens`
    maps each code to its text; codes missing from it draw nothing and do not move the pen."""
    size = background.shape[1]
    num_codes = max(tokens) + 1
    advances = np.zeros((num_codes,), np.int32)
    for k, text in tokens.items():
        advances[k] = round(fnt.getlength(text + separator) * _PHASES)
    lead = int(fnt.size)  # room for glyphs that reach left of their pen
    w = lead + int(np.ceil(max(fnt.getlength(t) for t in tokens.values()))) + lead
    full = np.zeros((num_codes, _PHASES, size, w), np.uint8)
    for k, text in tokens.items():
        for phase in range(_PHASES):
            im = Image.new("L", (w, size), 0)
            ImageDraw.Draw(im).text((lead + phase / _PHASES, xy[1]), text, font=fnt, fill=255)
            full[k, phase] = np.asarray(im)
    rows = np.nonzero(full.any(axis=(0, 1, 3)))[0]
    if rows.size == 0:
        raise ValueError(f"text run {name!r}: its tokens draw nothing")
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    start = round((xy[0] + (fnt.getlength(prefix) if prefix else 0.0)) * _PHASES)
    return TextRun(name, y0, np.ascontiguousarray(background[y0:y1]), full[:, :, y0:y1], advances,
                   start, lead, tuple(int(c) for c in ink))


class Picture:
    """Background + regions (+ text runs), built once per (task, size) by painting every variant
    on the host.

    `paint(assignment) -> uint8[S, S, 3]` draws the whole picture for a mapping region name ->
    variant index (and run name -> tuple of codes); `variants` maps each region name to its
    number of variants. `runs(background) -> TextRuns` builds the text runs from the background
    (the picture with every region at variant 0 and every run empty).
    """

    def __init__(
        self,
        size: int,
        paint: Callable[[Mapping[str, int]], np.ndarray],
        variants: Mapping[str, int],
        runs: Callable[[np.ndarray], tuple[TextRun, ...]] | None = None,
        run_names: tuple[str, ...] = (),
    ):
        self.size = size
        self.paint = paint
        self.names = tuple(variants)
        base_assign = {name: 0 for name in variants} | {name: () for name in run_names}
        base = paint(base_assign)
        regions = []
        occupied = np.zeros((size, size), bool)
        for name, k in variants.items():
            images = [base] + [paint({**base_assign, name: v}) for v in range(1, k)]
            changed = np.zeros((size, size), bool)
            for im in images[1:]:
                changed |= (im != base).any(-1)
            if not changed.any():
                raise ValueError(f"region {name!r}: its variants draw identical pictures")
            ys, xs = np.nonzero(changed)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            if occupied[y0:y1, x0:x1].any():
                raise ValueError(f"region {name!r} overlaps another region; fix the layout")
            occupied[y0:y1, x0:x1] = True
            tiles = np.stack([im[y0:y1, x0:x1] for im in images])
            regions.append(Region(name, int(y0), int(x0), tiles))
        self.background = base
        self.regions = tuple(regions)
        self.runs = tuple(runs(base)) if runs is not None else ()
        for run in self.runs:
            rows = slice(run.y, run.y + run.band.shape[0])
            if occupied[rows].any():
                raise ValueError(f"text run {run.name!r} overlaps a region; fix the layout")
            occupied[rows] = True
        # Tile tables shared between regions that show the same things (e.g. all card slots).
        tables = {}
        self._table_of = {
            r.name: tables.setdefault((r.tiles.shape, hash(r.tiles.tobytes())), r.tiles)
            for r in self.regions
        }

    def tile_bytes(self) -> int:
        """Bytes written per picture update (all regions)."""
        return int(sum(r.tiles[0].nbytes for r in self.regions))

    def draw(self, canvas: jax.Array, assignment: Mapping[str, jax.Array]) -> jax.Array:
        """Writes every region's current tile into `canvas` (jittable; in place in a scan)."""
        for r in self.regions:
            tile = jnp.asarray(self._table_of[r.name])[assignment[r.name]]
            canvas = jax.lax.dynamic_update_slice(canvas, tile, (r.y, r.x, 0))
        for run in self.runs:
            codes, length = assignment[run.name]
            canvas = run.draw(canvas, jnp.asarray(codes, jnp.int32), length)
        return canvas

    def paint_state(self, assignment: Mapping[str, object]) -> np.ndarray:
        """The host painter's picture for a device assignment (variant ints, run (codes, length)
        pairs): what `draw` must produce."""
        host = jax.device_get(dict(assignment))
        args = {}
        for name in self.names:
            args[name] = int(host[name])
        for run in self.runs:
            codes, length = host[run.name]
            args[run.name] = tuple(int(c) for c in np.asarray(codes)[: int(length)])
        return self.paint(args)

    def render(self, assignment: Mapping[str, jax.Array]) -> jax.Array:
        """A fresh picture (used on reset through the public gymnax API)."""
        return self.draw(jnp.asarray(self.background), assignment)
