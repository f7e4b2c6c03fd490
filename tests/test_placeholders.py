"""Placeholder text, image markers, reserved tokens and image_bound spans.

Token ids come from a toy tokenizer: each special string of the layout is one id, every other
character one id. Where a test checks against ``minicpmv-e2e.md`` it uses the real 2.6 ids of §0.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wstream.errors import ImageBoundError, ReservedTokenInPrompt
from wstream.pipeline.image import PreprocessorConfig, SliceGeometry, slice_geometry
from wstream.pipeline.placeholders import (
    IMAGE,
    IMAGE_MARKER,
    ContentPart,
    check_image_bounds,
    check_text,
    expand_images,
    image_bounds,
    image_placeholder,
    message_content,
    reserved_strings,
)

CFG = PreprocessorConfig()
SMALL = PreprocessorConfig(scale_resolution=112, image_feature_size=2)

# minicpmv-e2e.md §0: the real MiniCPM-V 2.6 ids (and §2.2: '0'..'9' -> 15..24, '\n' -> 198).
REAL_IDS = {
    "<unk>": 128244,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<image>": 151646,
    "</image>": 151647,
    "<slice>": 151656,
    "</slice>": 151657,
    "<image_id>": 151658,
    "</image_id>": 151659,
    "\n": 198,
    **{str(d): 15 + d for d in range(10)},
}
REAL = (151646, 151647, 151656, 151657)  # im_start, im_end, slice_start, slice_end


def toy_encode(text: str, cfg: PreprocessorConfig = CFG) -> list[int]:
    """Specials (and the chat template's) as one id each, any other character as 1000 + ord."""
    specials = [*reserved_strings(cfg), cfg.unk, "<|im_start|>", "<|im_end|>"]
    # (with the default strings every special has its real id; others get 10 + its index)
    pattern = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    ids: list[int] = []
    for piece in re.split(f"({pattern})", text):
        if piece in specials:
            ids.append(REAL_IDS.get(piece, 10 + specials.index(piece)))
        else:
            ids.extend(REAL_IDS.get(c, 1000 + ord(c)) for c in piece)
    return ids


def geom(size: tuple[int, int], cfg: PreprocessorConfig = CFG) -> SliceGeometry:
    return slice_geometry(size, cfg)


# --- placeholder text ----------------------------------------------------------------------------


def test_placeholder_text_exactly() -> None:
    u = "<unk><unk>"
    assert image_placeholder(geom((100, 60), SMALL), 0, SMALL) == (
        f"<image_id>0</image_id><image>{u}</image>"
    )
    # 224² at 112: a 2x2 grid; no newline after </image>, one between rows, none after the last.
    row = f"<slice>{u}</slice><slice>{u}</slice>"
    assert image_placeholder(geom((224, 224), SMALL), 3, SMALL) == (
        f"<image_id>3</image_id><image>{u}</image>{row}\n{row}"
    )
    # 420x100: a 4x1 grid (one row, so no newline); the id override drops <image_id>.
    assert image_placeholder(geom((420, 100), SMALL), 12, SMALL, use_image_id=False) == (
        f"<image>{u}</image>" + f"<slice>{u}</slice>" * 4
    )
    no_id = PreprocessorConfig(scale_resolution=112, image_feature_size=2, use_image_id=False)
    assert image_placeholder(geom((100, 60), SMALL), 0, no_id) == f"<image>{u}</image>"
    assert image_placeholder(geom((100, 60), SMALL), 0, no_id, use_image_id=True).startswith(
        "<image_id>0</image_id><image>"
    )


# minicpmv-e2e.md §1.3, last column: 3 <image_id> tokens + 66 per slice + (rows - 1) newlines.
PLACEHOLDER_TOKENS = [
    ((448, 448), 69),
    ((300, 200), 69),
    ((600, 300), 69),
    ((640, 480), 201),
    ((500, 500), 202),
    ((800, 600), 334),
    ((1024, 768), 334),
    ((1280, 720), 466),
    ((1920, 1080), 598),
    ((1080, 1920), 600),
    ((1344, 1344), 665),
    ((1017, 1017), 466),
    ((3000, 1000), 598),
    ((4032, 3024), 665),
]


@pytest.mark.parametrize(("size", "n_tokens"), PLACEHOLDER_TOKENS)
def test_placeholder_token_counts_of_the_worked_table(size: tuple[int, int], n_tokens: int) -> None:
    g = geom(size)
    ids = toy_encode(image_placeholder(g, 0, CFG))
    assert len(ids) == n_tokens
    assert ids.count(REAL_IDS["<unk>"]) == 64 * g.n_slices


def test_worked_ids_of_the_doc_2x2_grid() -> None:
    # §2.3 and §4.2: 800x600 (a 2x2 grid), use_image_id, no system prompt, "What is in this
    # image?". The template's words are single Qwen2 ids (user 872, What 3838, ...) from the doc.
    final = expand_images(message_content([IMAGE, ""], CFG), [geom((800, 600))], CFG)
    assert final.endswith("</slice>\n")  # the content join's newline before the question
    head = [151644, 872, 198]  # <|im_start|> user \n
    question = [3838, 374, 304, 419, 2168, 30]  # What is in this image ?
    tail = [151645, 198, 151644, 77091, 198]  # <|im_end|> \n <|im_start|> assistant \n
    ids = head + toy_encode(final) + question + tail
    assert len(ids) == 349
    assert ids[3:8] == [151658, 15, 151659, 151646, 128244]
    bounds = image_bounds(ids, *REAL)
    assert bounds == [(7, 71), (73, 137), (139, 203), (206, 270), (272, 336)]
    assert ids[203:206] == [151657, 198, 151656]  # </slice> \n <slice> between the rows
    check_image_bounds(bounds, 5, 64)


# --- the prompt ----------------------------------------------------------------------------------


def test_message_content_as_chat() -> None:
    assert message_content([IMAGE, "What?"], CFG) == f"{IMAGE_MARKER}\nWhat?"
    assert message_content([IMAGE, IMAGE, "Compare."], CFG) == (
        f"{IMAGE_MARKER}\n{IMAGE_MARKER}\nCompare."
    )
    assert message_content(["a", IMAGE, "b"], CFG) == f"a\n{IMAGE_MARKER}\nb"
    assert message_content(["only text <unk> is fine"], CFG) == "only text <unk> is fine"


def test_several_images_in_order() -> None:
    sizes = [(100, 60), (224, 224), (420, 100)]
    geoms = [geom(s, SMALL) for s in sizes]
    text = "sys\n" + message_content([IMAGE, "q1", IMAGE, IMAGE, "q2"], SMALL)
    final = expand_images(text, geoms, SMALL)
    parts = [image_placeholder(g, i, SMALL) for i, g in enumerate(geoms)]
    assert final == f"sys\n{parts[0]}\nq1\n{parts[1]}\n{parts[2]}\nq2"
    assert re.findall(r"<image_id>(\d+)</image_id>", final) == ["0", "1", "2"]
    ids = toy_encode(final, SMALL)
    check_image_bounds(image_bounds(ids, *REAL), sum(g.n_slices for g in geoms), 2)


def test_marker_count_must_match_images() -> None:
    g = geom((448, 448))
    with pytest.raises(ImageBoundError, match=r"2 image markers .* for 1 images"):
        expand_images(f"{IMAGE_MARKER}{IMAGE_MARKER}", [g], CFG)
    with pytest.raises(ImageBoundError, match=r"0 image markers .* for 1 images"):
        expand_images("no images here", [g], CFG)
    assert expand_images("plain", [], CFG) == "plain"
    # Text built by hand around the markers, carrying a stray token: caught after expansion.
    with pytest.raises(ImageBoundError, match=r"2 '<image>' tokens after expansion, expected 1"):
        expand_images(f"<image>{IMAGE_MARKER}", [g], CFG)


@pytest.mark.parametrize("token", reserved_strings(CFG))
def test_typed_image_tokens_are_rejected(token: str) -> None:
    text = f"Describe {token} please"
    with pytest.raises(ReservedTokenInPrompt) as e:
        message_content([IMAGE, text], CFG)
    msg = str(e.value)
    assert f"{token!r} at character 9" in msg and "prompt part 1" in msg and "\n" not in msg
    with pytest.raises(ReservedTokenInPrompt, match="system: "):
        check_text(text, "system", CFG)


def test_marker_typed_by_the_user_is_rejected_unless_allowed() -> None:
    with pytest.raises(ReservedTokenInPrompt, match="'<image>' at character 6"):
        message_content([f"look {IMAGE_MARKER}"], CFG)
    check_text(f"raw {IMAGE_MARKER} prompt", "prompt", CFG, allow_markers=True)
    with pytest.raises(ReservedTokenInPrompt, match="'<slice>' at character 24"):
        check_text(f"raw {IMAGE_MARKER} <slice>", "prompt", CFG, allow_markers=True)
    with pytest.raises(ReservedTokenInPrompt, match="not a string"):
        message_content([b"bytes"], CFG)  # type: ignore[list-item]


def test_custom_token_strings_are_the_reserved_ones() -> None:
    cfg = PreprocessorConfig(slice_start="[S]", slice_end="[/S]")
    check_text("a <slice> is fine when the config names another token", "prompt", cfg)
    with pytest.raises(ReservedTokenInPrompt, match=r"'\[S\]'"):
        check_text("not [S]", "prompt", cfg)


# --- image_bound ---------------------------------------------------------------------------------


S, E, SS, SE, U = 1, 2, 3, 4, 9  # toy ids: <image> </image> <slice> </slice> <unk>


def test_bounds_are_half_open_between_start_and_end() -> None:
    ids = [7, S, U, U, E, SS, U, U, SE, 198, SS, U, U, SE, 7]
    assert image_bounds(ids, S, E, SS, SE) == [(2, 4), (6, 8), (11, 13)]
    assert image_bounds(np.array(ids, np.int32), S, E, SS, SE) == [(2, 4), (6, 8), (11, 13)]
    assert image_bounds([], S, E, SS, SE) == []
    assert image_bounds([S, E], S, E, SS, SE) == [(1, 1)]  # empty span: caught by the check
    with pytest.raises(ImageBoundError, match=r"span 0 = \[1, 1\) holds 0 tokens, expected 64"):
        check_image_bounds([(1, 1)], 1, 64)
    with pytest.raises(ImageBoundError, match="3 image spans for 2 slices"):
        check_image_bounds([(2, 4), (6, 8), (11, 13)], 2, 2)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([S, U, U, E, SS, U, U], "2 image/slice start ids but 1 end ids"),  # truncated prompt
        ([E, S, U, E, S], r"span 0 ends at 0 before it starts at 2"),  # an end first
        ([S, SS, U, SE, E], "span 0 = .* not closed before the next one opens"),  # nested
    ],
)
def test_malformed_spans_are_named_errors(ids: list[int], match: str) -> None:
    with pytest.raises(ImageBoundError, match=match):
        image_bounds(ids, S, E, SS, SE)


def test_ids_must_be_one_dimensional_integers() -> None:
    with pytest.raises(ImageBoundError, match="1-D integers"):
        image_bounds(np.zeros((2, 2), np.int64), S, E, SS, SE)
    with pytest.raises(ImageBoundError, match="1-D integers"):
        image_bounds([1.0, 2.0], S, E, SS, SE)


safe_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12).filter(
    lambda t: not any(s in t for s in reserved_strings(SMALL))
)


@given(
    sizes=st.lists(st.tuples(st.integers(1, 600), st.integers(1, 600)), max_size=4),
    texts=st.lists(safe_text, min_size=5, max_size=5),
    use_id=st.booleans(),
    query=st.integers(1, 5),
)
def test_bounds_recover_every_span(
    sizes: list[tuple[int, int]], texts: list[str], use_id: bool, query: int
) -> None:
    cfg = PreprocessorConfig(scale_resolution=112, image_feature_size=query)
    geoms = [geom(s, cfg) for s in sizes]
    parts: list[str | ContentPart] = []
    for text in texts[: len(sizes)]:
        parts += [text, IMAGE]
    content = message_content([*parts, texts[-1]], cfg)
    template = f"<|im_start|>user\n{content}<|im_end|>"
    final = expand_images(template, geoms, cfg, use_image_id=use_id)
    unk = REAL_IDS["<unk>"]
    n_slices = sum(g.n_slices for g in geoms)
    placeholder_ids = 0
    for i, g in enumerate(geoms):
        n = len(toy_encode(image_placeholder(g, i, cfg, use_image_id=use_id)))
        # query_num per slice, plus the layout: <image_id>, the digits of i, </image_id> (when
        # use_image_id), a start and an end token per slice, a newline between grid rows.
        layout = (2 + len(str(i)) if use_id else 0) + 2 * g.n_slices
        layout += g.grid[1] - 1 if g.grid else 0
        assert n == query * g.n_slices + layout
        placeholder_ids += n
    ids = toy_encode(final)
    assert len(ids) == len(toy_encode(template.replace(IMAGE_MARKER, ""))) + placeholder_ids
    bounds = image_bounds(ids, *REAL)
    check_image_bounds(bounds, n_slices, query)
    for a, b in bounds:
        assert ids[a:b] == [unk] * query
