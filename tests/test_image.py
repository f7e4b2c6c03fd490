"""Image preprocessing: the config, loading files as RGB, the slicing geometry, the pixels.

The geometry vectors are ``minicpmv-e2e.md`` §1.3 (HF 2.6 at 448); the 112-px vectors are worked
by hand from the same rules (noted beside each). Mode conversions are checked against Pillow's own
``convert("RGB")``, which is what the HF processor calls.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from wstream.errors import (
    ImageFileError,
    ImageTooLarge,
    InputError,
    PreprocessorConfigError,
)
from wstream.pipeline.image import (
    MAX_PIXELS,
    PreprocessorConfig,
    ensure_divide,
    get_sliced_grid,
    load_image,
    normalise,
    preprocess,
    slice_geometry,
    slice_images,
)

CFG = PreprocessorConfig()
SMALL = PreprocessorConfig(scale_resolution=112)

# The real openbmb/MiniCPM-V-2_6 preprocessor_config.json (minicpmv-e2e.md [B]).
REAL_26 = json.loads(
    """{
  "image_processor_type": "MiniCPMVImageProcessor",
  "auto_map": {
    "AutoProcessor": "processing_minicpmv.MiniCPMVProcessor",
    "AutoImageProcessor": "image_processing_minicpmv.MiniCPMVImageProcessor"
  },
  "processor_class": "MiniCPMVProcessor",
  "max_slice_nums": 9, "scale_resolution": 448, "patch_size": 14, "use_image_id": true,
  "image_feature_size": 64, "im_start": "<image>", "im_end": "</image>",
  "slice_start": "<slice>", "slice_end": "</slice>", "unk": "<unk>",
  "im_id_start": "<image_id>", "im_id_end": "</image_id>", "slice_mode": true,
  "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5], "version": 2.6
}"""
)


# --- config --------------------------------------------------------------------------------------


def test_real_26_config_equals_the_defaults() -> None:
    assert PreprocessorConfig.from_hf(REAL_26) == PreprocessorConfig()
    assert PreprocessorConfig.from_hf({}) == PreprocessorConfig()


def test_config_fields_are_read() -> None:
    d = dict(REAL_26, max_slice_nums=4, scale_resolution=112, image_feature_size=16)
    d.update(use_image_id=False, norm_mean=[0.1, 0.2, 0.3], norm_std=[1, 2, 3], unk="<u>")
    cfg = PreprocessorConfig.from_hf(d)
    assert (cfg.max_slice_nums, cfg.scale_resolution, cfg.image_feature_size) == (4, 112, 16)
    assert cfg.use_image_id is False and cfg.unk == "<u>"
    assert cfg.norm_mean == (0.1, 0.2, 0.3) and cfg.norm_std == (1.0, 2.0, 3.0)


@pytest.mark.parametrize(
    ("key", "value", "limit"),
    [
        ("max_slice_nums", 0, "[1, 64]"),
        ("max_slice_nums", 65, "[1, 64]"),
        ("max_slice_nums", True, "[1, 64]"),
        ("max_slice_nums", 9.0, "[1, 64]"),
        ("patch_size", 0, "[1, 256]"),
        ("scale_resolution", 13, "[14, 4096]"),  # below one patch
        ("scale_resolution", "448", "[14, 4096]"),
        ("image_feature_size", -1, "[1, 4096]"),
        ("norm_mean", [0.5, 0.5], "3 finite numbers"),
        ("norm_mean", [0.5, float("nan"), 0.5], "3 finite numbers"),
        ("norm_std", [0.5, 0.0, 0.5], "3 positive finite numbers"),
        ("norm_std", "0.5", "3 positive finite numbers"),
        ("slice_mode", 1, "true or false"),
        ("use_image_id", "yes", "true or false"),
        ("im_start", "", "1 to 64 characters"),
        ("unk", 5, "1 to 64 characters"),
        ("version", 2.5, "2.6 layout"),
        ("version", "2.6", "2.6 layout"),
    ],
)
def test_bad_config_field_is_named(key: str, value: object, limit: str) -> None:
    with pytest.raises(PreprocessorConfigError) as e:
        PreprocessorConfig.from_hf(dict(REAL_26, **{key: value}))
    msg = str(e.value)
    assert key in msg and repr(value) in msg and limit in msg and "\n" not in msg


def test_config_tokens_must_be_distinct_and_config_an_object() -> None:
    with pytest.raises(PreprocessorConfigError, match="distinct"):
        PreprocessorConfig.from_hf(dict(REAL_26, slice_start="<image>"))
    with pytest.raises(PreprocessorConfigError, match="not a JSON object"):
        PreprocessorConfig.from_hf([1, 2])  # type: ignore[arg-type]


# --- geometry ------------------------------------------------------------------------------------

# minicpmv-e2e.md §1.3: W, H, overview, grid (cols, rows), refined, cell, slices, ViT patches.
TABLE_448 = [
    ((448, 448), (448, 448), None, None, None, 1, 1024),
    ((300, 200), (546, 364), None, None, None, 1, 1014),
    ((600, 300), (630, 322), None, None, None, 1, 1035),
    ((640, 480), (518, 392), (2, 1), (728, 546), (364, 546), 3, 3064),
    ((500, 500), (448, 448), (1, 2), (630, 644), (630, 322), 3, 3094),
    ((800, 600), (518, 392), (2, 2), (1036, 784), (518, 392), 5, 5180),
    ((1024, 768), (518, 392), (2, 2), (1036, 784), (518, 392), 5, 5180),
    ((1280, 720), (602, 336), (3, 2), (1470, 812), (490, 406), 7, 7122),
    ((1920, 1080), (602, 336), (4, 2), (1680, 952), (420, 476), 9, 9192),
    ((1080, 1920), (336, 602), (2, 4), (952, 1680), (476, 420), 9, 9192),
    ((1344, 1344), (448, 448), (3, 3), (1344, 1344), (448, 448), 10, 10240),
    ((1017, 1017), (448, 448), (3, 2), (1092, 1092), (364, 546), 7, 7108),
    ((3000, 1000), (770, 252), (4, 2), (2184, 728), (546, 364), 9, 9102),
    ((4032, 3024), (518, 392), (3, 3), (1554, 1176), (518, 392), 10, 10360),
    ((100, 2000), (98, 2002), None, None, None, 1, 1001),  # §1.3 note: tgt (143, 7)
]

# The same rules at scale_resolution 112 (the tiny fixture's), worked by hand:
TABLE_112 = [
    # 1x1 and 100x60: area below 112², up-scaled to about 112² (100x60: r=5/3, h=int(86.75)=86,
    # w=int(143.3)=143 -> 140x84).
    ((1, 1), (112, 112), None, None, None, 1, 64),
    ((100, 60), (140, 84), None, None, None, 1, 60),
    # 224²: mult 4, [2,2] exact; cells 112².
    ((224, 224), (112, 112), (2, 2), (224, 224), (112, 112), 5, 320),
    # 300x200: mult 5, [3,2] has error 0; overview h=int(91.45)=91 -> round(6.5)=6 (banker's) -> 84.
    ((300, 200), (140, 84), (3, 2), (336, 224), (112, 112), 7, 60 + 6 * 64),
    # 420x100: mult 4, [4,1] closest to log 4.2; overview 226x54 -> 224x56.
    ((420, 100), (224, 56), (4, 1), (448, 112), (112, 112), 5, 64 + 4 * 64),
]


@pytest.mark.parametrize(
    ("cfg", "row"), [(CFG, r) for r in TABLE_448] + [(SMALL, r) for r in TABLE_112]
)
def test_worked_geometry(cfg: PreprocessorConfig, row: tuple) -> None:  # type: ignore[type-arg]
    size, overview, grid, refined, cell, n, patches = row
    g = slice_geometry(size, cfg)
    assert (g.overview, g.grid, g.refined, g.cell, g.n_slices) == (overview, grid, refined, cell, n)
    assert sum(h * w for h, w in g.tgt_sizes) == patches
    assert g.tgt_sizes[0] == (overview[1] // 14, overview[0] // 14)


def test_tie_cases_and_rounding() -> None:
    # Square, mult 2: [1,2] and [2,1] tie exactly (log(1/2) = -log 2); the first candidate stays.
    assert get_sliced_grid((500, 500), 9, 448) == (1, 2)
    # Square, mult 6: float64 |log(2/3)| is 1 ulp above log(3/2), so [3,2] wins over [2,3].
    assert math.log(2 / 3) == -0.40546510810816444 and math.log(3 / 2) == 0.4054651081081644
    assert get_sliced_grid((1017, 1017), 9, 448) == (3, 2)
    # Banker's rounding: round(2.5) = 2, round(3.5) = 4 (llama.cpp would give 42 and 56).
    assert ensure_divide(35, 14) == 28 and ensure_divide(49, 14) == 56
    assert ensure_divide(3, 14) == 14 and ensure_divide(0, 14) == 14  # at least one patch
    assert get_sliced_grid((448, 448), 9, 448) is None  # area exactly 448²: mult 1


def test_max_slice_nums_override() -> None:
    g = slice_geometry((1344, 1344), CFG, max_slice_nums=1)
    assert (g.grid, g.overview, g.n_slices) == (None, (448, 448), 1)
    assert slice_geometry((1344, 1344), CFG, max_slice_nums=4).grid == (2, 2)  # mult min(9, 4)
    for bad in (0, 65, 2.0):
        with pytest.raises(InputError, match="max_slice_nums"):
            slice_geometry((10, 10), CFG, max_slice_nums=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="positive integers"):
        slice_geometry((0, 10), CFG)


def test_extreme_aspect_ratio_is_refused_by_name() -> None:
    assert slice_geometry((1, 10000), CFG).overview == (14, 44800)  # 3200 patches: allowed
    with pytest.raises(ImageTooLarge, match=r"photo.png: 1x100000 .* 10119 patches.*limit 4096"):
        slice_geometry((1, 100000), CFG, name="photo.png")


def test_slice_mode_off_crops_to_whole_patches() -> None:
    cfg = PreprocessorConfig(slice_mode=False)
    g = slice_geometry((1000, 30), cfg)
    assert (g.overview, g.grid, g.resized, g.tgt_sizes) == ((994, 28), None, False, ((2, 71),))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 1000, 3), np.uint8))
    (s,) = slice_images(img, g)
    assert np.array_equal(np.asarray(s), np.asarray(img)[:28, :994])
    with pytest.raises(ImageFileError, match="smaller than one 14x14 patch"):
        slice_geometry((13, 100), cfg)


sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))


@given(
    size=sizes,
    scale=st.sampled_from([112, 224, 448]),
    n_max=st.integers(1, 9),
)
def test_geometry_properties(size: tuple[int, int], scale: int, n_max: int) -> None:
    cfg = PreprocessorConfig(scale_resolution=scale)
    try:
        g = slice_geometry(size, cfg, n_max)
    except ImageTooLarge:
        assert max(size) / min(size) > 900  # only absurd aspect ratios reach the patch limit
        return
    for w, h in g.slice_sizes:
        assert w % 14 == 0 and h % 14 == 0 and w >= 14 and h >= 14
    assert g.tgt_sizes == tuple((h // 14, w // 14) for w, h in g.slice_sizes)
    assert len(g.slice_sizes) == g.n_slices
    if g.grid is None:
        assert g.n_slices == 1 and (size[0] * size[1] <= scale * scale or n_max == 1)
    else:
        cols, rows = g.grid
        assert 2 <= cols * rows <= n_max and g.cell is not None
        assert g.refined == (g.cell[0] * cols, g.cell[1] * rows)
        assert g.overview[0] * g.overview[1] <= (scale + 14) ** 2  # a down-scale to about scale²


@given(
    size=st.tuples(st.integers(1, 360), st.integers(1, 360)),
    seed=st.integers(0, 2**32 - 1),
)
def test_slices_tile_the_refined_image(size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    out = preprocess(img, SMALL)
    g = out.geometry
    bicubic = Image.Resampling.BICUBIC
    assert np.array_equal(
        np.asarray(slice_images(img, g)[0]), np.asarray(img.resize(g.overview, bicubic))
    )
    assert len(out.pixels) == g.n_slices
    for px, (h, w) in zip(out.pixels, out.tgt_sizes):
        assert px.dtype == np.float32 and px.shape == (3, h * 14, w * 14)
        assert px.flags.c_contiguous
    if g.grid is not None and g.refined is not None:
        cols, rows = g.grid
        cells = [normalise_back(p) for p in out.pixels[1:]]
        tiled = np.concatenate(
            [np.concatenate(cells[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0
        )
        assert np.array_equal(tiled, np.asarray(img.resize(g.refined, bicubic)))


def normalise_back(px: np.ndarray) -> np.ndarray:
    """Undo mean = std = 0.5 normalisation exactly (each uint8 value maps to a distinct float)."""
    table = (np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    idx = np.searchsorted(table, px.transpose(1, 2, 0))
    assert np.array_equal(table[idx], px.transpose(1, 2, 0))
    return idx.astype(np.uint8)


# --- pixels --------------------------------------------------------------------------------------


def test_normalise_is_hf_float32_arithmetic() -> None:
    arr = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3)  # every byte value, wrapped
    px = normalise(Image.fromarray(arr), CFG)
    x = arr.astype(np.float32) / 255
    want = (x - np.array([0.5] * 3, np.float32)) / np.array([0.5] * 3, np.float32)
    assert px.dtype == np.float32 and np.array_equal(px, want.transpose(2, 0, 1))
    assert px.min() == -1.0 and px.max() == 1.0
    cfg = PreprocessorConfig(norm_mean=(0.1, 0.2, 0.3), norm_std=(0.9, 0.8, 0.7))
    px = normalise(Image.fromarray(arr), cfg)
    mean, std = np.float32([0.1, 0.2, 0.3]), np.float32([0.9, 0.8, 0.7])
    assert np.array_equal(px, ((x - mean) / std).transpose(2, 0, 1))


def test_channels_are_rgb_first() -> None:
    red = Image.new("RGB", (28, 14), (255, 0, 0))
    px = normalise(red, CFG)
    assert px.shape == (3, 14, 28) and (px[0] == 1).all() and (px[1:] == -1).all()
    with pytest.raises(InputError, match="mode 'L'"):
        normalise(Image.new("L", (14, 14)), CFG)


def test_slice_order_is_overview_then_row_major() -> None:
    # 224² at 112 is a 2x2 grid of 112² cells with the refined image unchanged (224²): paint the
    # quadrants and check the order overview, top-left, top-right, bottom-left, bottom-right.
    arr = np.zeros((224, 224, 3), np.uint8)
    colours = [(10, 0, 0), (0, 20, 0), (0, 0, 30), (40, 40, 40)]
    for k, c in enumerate(colours):
        r, q = divmod(k, 2)
        arr[r * 112 : (r + 1) * 112, q * 112 : (q + 1) * 112] = c
    out = slice_images(Image.fromarray(arr), slice_geometry((224, 224), SMALL))
    assert len(out) == 5 and out[0].size == (112, 112)
    for s, c in zip(out[1:], colours):
        assert (np.asarray(s) == c).all()


def test_preprocess_1344_photo_gives_ten_slices() -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1344, 1344, 3), np.uint8))
    out = preprocess(img, CFG)
    assert out.grid == (3, 3) and out.tgt_sizes == ((32, 32),) * 10
    assert all(p.shape == (3, 448, 448) for p in out.pixels)
    # The refined image is the original size: the cells are exact crops of the photo.
    assert np.array_equal(normalise_back(out.pixels[5]), np.asarray(img)[448:896, 448:896])


# --- loading -------------------------------------------------------------------------------------


def _png(w: int, h: int, bitdepth: int, colortype: int, raw: bytes) -> bytes:
    """A PNG file written by hand, for headers Pillow will not write (bombs, 48-bit RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _save(tmp_path: Path, name: str, img: Image.Image, **kw: object) -> Path:
    p = tmp_path / name
    img.save(p, **kw)
    return p


def _rand(mode: str, size: tuple[int, int] = (19, 11)) -> Image.Image:
    rng = np.random.default_rng(7)
    w, h = size
    if mode in ("RGB", "RGBA", "CMYK", "LA"):
        bands = {"RGB": 3, "RGBA": 4, "CMYK": 4, "LA": 2}[mode]
        return Image.fromarray(rng.integers(0, 256, (h, w, bands), np.uint8), mode=mode)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-1000, 70000, (h, w), np.int32))
    if mode == "F":
        return Image.fromarray(rng.uniform(-50, 400, (h, w)).astype(np.float32))
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    if mode == "P":
        return _rand("RGB", size).quantize(16)
    return Image.fromarray(rng.integers(0, 256, (h, w), np.uint8))  # L


CASES = [
    ("rgb.png", "RGB", {}),
    ("grey.png", "L", {}),
    ("bilevel.png", "1", {}),
    ("grey_alpha.png", "LA", {}),
    ("rgba.png", "RGBA", {}),
    ("palette.png", "P", {}),
    ("palette_transparent.png", "P", {"transparency": 3}),
    ("palette.gif", "P", {}),
    ("cmyk.jpg", "CMYK", {}),
    ("cmyk.tif", "CMYK", {}),
    ("grey16.png", "I;16", {}),
    ("int32.tif", "I", {}),
    ("float.tif", "F", {}),
    ("rgb.webp", "RGB", {"lossless": True}),
]


@pytest.mark.parametrize(("name", "mode", "kw"), CASES)
def test_mode_conversion_is_pillows_convert(
    tmp_path: Path, name: str, mode: str, kw: dict[str, object]
) -> None:
    p = _save(tmp_path, name, _rand(mode), **kw)
    got = load_image(p)
    with Image.open(p) as ref:
        want = np.asarray(ref.convert("RGB"))
    assert got.mode == "RGB" and got.size == (19, 11)
    assert np.array_equal(np.asarray(got), want)


def test_documented_conversions(tmp_path: Path) -> None:
    # RGBA: alpha dropped, not composited over white: a transparent pixel keeps its colour.
    rgba = Image.new("RGBA", (2, 1), (200, 10, 20, 0))
    assert np.asarray(load_image(_save(tmp_path, "a.png", rgba)))[0, 0].tolist() == [200, 10, 20]
    # 16-bit grey: clipped to 255, not scaled (as Pillow, hence HF).
    g16 = Image.fromarray(np.array([[0, 200, 256, 65535]], np.uint16))
    assert np.asarray(load_image(_save(tmp_path, "g.png", g16)))[0, :, 0].tolist() == [
        0,
        200,
        255,
        255,
    ]
    # 48-bit RGB PNG: Pillow opens it as 8-bit RGB keeping the high byte (0x9c40 -> 0x9c).
    raw = b"".join(b"\x00" + bytes([0x9C, 0x40]) * 3 * 2 for _ in range(2))
    (tmp_path / "rgb48.png").write_bytes(_png(2, 2, 16, 2, raw))
    assert (np.asarray(load_image(tmp_path / "rgb48.png")) == 0x9C).all()
    # Multi-frame GIF: the first frame.
    frames = [Image.new("P", (4, 4), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(tmp_path / "anim.gif"))[0, 0].tolist() == [255, 0, 0]
    # A 1x1 image loads and is up-scaled to one 448² slice.
    tiny = load_image(_save(tmp_path, "tiny.png", Image.new("RGB", (1, 1), (9, 9, 9))))
    assert preprocess(tiny, CFG).tgt_sizes == ((32, 32),)


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a viewer would show it 11 wide, 19 high
    p = _save(tmp_path, "phone.jpg", _rand("RGB"), exif=exif.tobytes())
    with Image.open(p) as raw:
        assert raw.getexif()[0x0112] == 6
    assert load_image(p).size == (19, 11)  # as stored, as HF


def _one_line_naming(e: pytest.ExceptionInfo[BaseException], path: Path) -> str:
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_bad_files_are_named_errors(tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = []
    cases.append((tmp_path / "missing.png", "no such file"))
    (tmp_path / "dir.png").mkdir()
    cases.append((tmp_path / "dir.png", "is a directory"))
    (tmp_path / "notes.txt").write_text("hello, not an image")
    cases.append((tmp_path / "notes.txt", "not an image"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases.append((tmp_path / "empty.jpg", "not an image"))
    for fmt, name in (("PNG", "cut.png"), ("JPEG", "cut.jpg")):
        buf = io.BytesIO()
        _rand("RGB", (64, 64)).save(buf, fmt)
        data = buf.getvalue()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        cases.append((tmp_path / name, "truncated"))
    (tmp_path / "header_only.png").write_bytes(_png(64, 64, 8, 2, b"")[:-12])  # no pixel rows
    cases.append((tmp_path / "header_only.png", "cannot be read or decoded"))
    for path, reason in cases:
        with pytest.raises(ImageFileError) as e:
            load_image(path)
        assert reason in _one_line_naming(e, path), (path, str(e.value))


def test_decompression_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    # 10000² = 1e8 pixels: over our limit (Pillow would only warn); 1e10: Pillow's own error.
    for side in (10_000, 100_000):
        p = tmp_path / f"bomb{side}.png"
        p.write_bytes(_png(side, side, 8, 2, b""))  # a tiny file claiming a huge image
        with pytest.raises(ImageTooLarge) as e:
            load_image(p)
        assert "pixels" in _one_line_naming(e, p)
    assert MAX_PIXELS == Image.MAX_IMAGE_PIXELS  # Pillow's default threshold, stated as ours
    p = _save(tmp_path, "small.png", _rand("RGB"))
    with pytest.raises(ImageTooLarge, match=r"19x11 = 209 pixels is more than the limit 200"):
        load_image(p, max_pixels=200)
    assert load_image(p, max_pixels=209).size == (19, 11)


def _seed_files() -> list[bytes]:
    img = _rand("RGB", (12, 9))
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "DDS", "TGA"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_files()


@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255), st.booleans()), max_size=6),
    cut=st.floats(0.05, 1.0),
)
def test_corrupt_files_load_or_fail_by_name(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    edits: list[tuple[float, int, bool]],
    cut: float,
) -> None:
    data = bytearray(SEEDS[seed])
    for where, byte, insert in edits:
        i = int(where * (len(data) - 1))
        if insert:
            data[i:i] = bytes([byte])
        else:
            data[i] = byte
    path = tmp_path_factory.mktemp("fuzz") / "f.bin"
    path.write_bytes(bytes(data[: max(1, int(len(data) * cut))]))
    try:
        img = load_image(path)
    except ImageFileError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:
        assert img.mode == "RGB"
