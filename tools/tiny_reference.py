"""An independent torch implementation of a MiniCPM-V 2.6 request: image in, logits out.

Maintainer-only (torch + transformers), used by tools/train_tiny.py to train the tiny fixture and
to write its float64 golden outputs. It never imports wstream's pipeline: it is what the numpy
pipeline is tested against, so it follows the official Hugging Face remote code of
MiniCPM-V 2.6 line by line (``image_processing_minicpmv.py``, ``processing_minicpmv.py``,
``modeling_minicpmv.py``, ``modeling_navit_siglip.py``, ``resampler.py``; facts and worked sizes
in shared/reference/minicpmv-e2e.md sections 1-3):

- image: ``convert("RGB")`` (no EXIF transpose), ``get_sliced_grid`` / ``find_best_resize`` /
  ``get_refine_size`` / ``split_to_patches`` with PIL bicubic, ``/255``, mean = std = 0.5,
  ``reshape_by_patch`` to ``[3, 14, L*14]``, ``tgt_sizes = (H/14, W/14)``;
- text: the chat template rendered with jinja2 as transformers renders it, each
  ``(<image>./</image>)`` replaced by ``<image_id>i</image_id><image>`` + ``<unk>`` * query_num
  + ``</image>`` + the ``<slice>`` rows joined by ``"\\n"``; ``image_bound`` from the ids;
- model: every slice padded into one batch with ``patch_attention_mask`` (NaViT bucketed
  position ids per slice, additive key mask), the resampler per slice with its own ``tgt_size``
  and key padding mask, the result scattered over ``image_bound``, then ``Qwen2ForCausalLM`` on
  ``inputs_embeds``.

The modules carry the real tensor names: ``vpm.*`` is transformers' Idefics2VisionTransformer
(the same NaViT SigLIP; its own forward buckets positions differently from MiniCPM-V's at some
sides, so only its submodules are used), ``resampler.*`` a port of resampler.py around
``torch.nn.MultiheadAttention``, ``llm.*`` transformers' Qwen2ForCausalLM.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from PIL import Image
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

IMAGE_PATTERN = "(<image>./</image>)"  # what chat() puts in the text for each image


@dataclass(frozen=True)
class Processor:
    """preprocessor_config.json of MiniCPM-V 2.6 (the values this implementation uses)."""

    max_slice_nums: int
    scale_resolution: int
    patch_size: int
    image_feature_size: int  # = query_num
    use_image_id: bool = True
    slice_mode: bool = True
    norm_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    norm_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    im_start: str = "<image>"
    im_end: str = "</image>"
    slice_start: str = "<slice>"
    slice_end: str = "</slice>"
    unk: str = "<unk>"
    im_id_start: str = "<image_id>"
    im_id_end: str = "</image_id>"

    # --- image_processing_minicpmv.py ----------------------------------------------------------

    def ensure_divide(self, length: float, patch_size: int) -> int:
        return max(round(length / patch_size) * patch_size, patch_size)

    def find_best_resize(
        self,
        original_size: tuple[float, float],
        scale_resolution: int,
        patch_size: int,
        allow_upscale: bool = False,
    ) -> tuple[int, int]:
        width, height = original_size
        if (width * height > scale_resolution * scale_resolution) or allow_upscale:
            r = width / height
            height = int(scale_resolution / math.sqrt(r))
            width = int(height * r)
        best_width = self.ensure_divide(width, patch_size)
        best_height = self.ensure_divide(height, patch_size)
        return (best_width, best_height)

    def get_refine_size(
        self,
        original_size: tuple[int, int],
        grid: list[int],
        scale_resolution: int,
        patch_size: int,
        allow_upscale: bool = False,
    ) -> tuple[int, int]:
        width, height = original_size
        grid_x, grid_y = grid
        refine_width = self.ensure_divide(width, grid_x)
        refine_height = self.ensure_divide(height, grid_y)
        grid_width = refine_width / grid_x
        grid_height = refine_height / grid_y
        best_grid_size = self.find_best_resize(
            (grid_width, grid_height), scale_resolution, patch_size, allow_upscale=allow_upscale
        )
        return (best_grid_size[0] * grid_x, best_grid_size[1] * grid_y)

    def split_to_patches(self, image: Image.Image, grid: list[int]) -> list[list[Image.Image]]:
        patches = []
        width, height = image.size
        grid_x = int(width / grid[0])
        grid_y = int(height / grid[1])
        for i in range(0, height, grid_y):
            images = []
            for j in range(0, width, grid_x):
                box = (j, i, j + grid_x, i + grid_y)
                images.append(image.crop(box))
            patches.append(images)
        return patches

    def slice_image(
        self, image: Image.Image
    ) -> tuple[Image.Image, list[list[Image.Image]], list[int] | None]:
        original_size = image.size
        best_grid = self.get_sliced_grid(original_size, self.max_slice_nums)
        patches: list[list[Image.Image]] = []
        if best_grid is None:
            # dont need to slice, upsample
            best_size = self.find_best_resize(
                original_size, self.scale_resolution, self.patch_size, allow_upscale=True
            )
            source_image = image.resize(best_size, resample=Image.Resampling.BICUBIC)
        else:
            # source image, down-sampling and ensure divided by patch_size
            best_resize = self.find_best_resize(
                original_size, self.scale_resolution, self.patch_size
            )
            source_image = image.copy().resize(best_resize, resample=Image.Resampling.BICUBIC)
            refine_size = self.get_refine_size(
                original_size,
                best_grid,
                self.scale_resolution,
                self.patch_size,
                allow_upscale=True,
            )
            refine_image = image.resize(refine_size, resample=Image.Resampling.BICUBIC)
            patches = self.split_to_patches(refine_image, best_grid)
        return source_image, patches, best_grid

    def get_sliced_grid(
        self, image_size: tuple[int, int], max_slice_nums: int, never_split: bool = False
    ) -> list[int] | None:
        original_width, original_height = image_size
        log_ratio = math.log(original_width / original_height)
        ratio = original_width * original_height / (self.scale_resolution * self.scale_resolution)
        multiple = min(math.ceil(ratio), max_slice_nums)
        if multiple <= 1 or never_split:
            return None
        candidate_split_grids_nums = []
        for i in [multiple - 1, multiple, multiple + 1]:
            if i == 1 or i > max_slice_nums:
                continue
            candidate_split_grids_nums.append(i)
        candidate_grids = []
        for split_grids_nums in candidate_split_grids_nums:
            m = 1
            while m <= split_grids_nums:
                if split_grids_nums % m == 0:
                    candidate_grids.append([m, split_grids_nums // m])
                m += 1
        best_grid = [1, 1]
        min_error = float("inf")
        for grid in candidate_grids:
            error = abs(log_ratio - math.log(grid[0] / grid[1]))
            if error < min_error:
                best_grid = grid
                min_error = error
        return best_grid

    def get_sliced_images(self, image: Image.Image) -> list[Image.Image]:
        slice_images = []
        if not self.slice_mode:
            return [image]
        source_image, patches, _ = self.slice_image(image)
        slice_images.append(source_image)
        for row in patches:
            slice_images.extend(row)
        return slice_images

    def get_grid_placeholder(self, grid: list[int] | None) -> str:
        if grid is None:
            return ""
        slice_image_placeholder = (
            self.slice_start + self.unk * self.image_feature_size + self.slice_end
        )
        cols, rows = grid[0], grid[1]
        slices = []
        for _ in range(rows):
            slices.append("".join(slice_image_placeholder for _ in range(cols)))
        return "\n".join(slices)

    def get_image_id_placeholder(self, idx: int = 0) -> str:
        return f"{self.im_id_start}{idx}{self.im_id_end}"

    def get_slice_image_placeholder(self, image_size: tuple[int, int], image_idx: int = 0) -> str:
        grid = self.get_sliced_grid(image_size, self.max_slice_nums)
        image_placeholder = self.im_start + self.unk * self.image_feature_size + self.im_end
        if self.use_image_id:
            final_placeholder = self.get_image_id_placeholder(image_idx) + image_placeholder
        else:
            final_placeholder = image_placeholder
        if self.slice_mode:
            final_placeholder = final_placeholder + self.get_grid_placeholder(grid)
        return final_placeholder

    def reshape_by_patch(self, image: np.ndarray) -> np.ndarray:
        """[3, H, W] -> [3, patch, h*w*patch]: patch k (row-major) in columns k*14..k*14+13."""
        t = torch.from_numpy(image)
        p = self.patch_size
        patches = torch.nn.functional.unfold(t, (p, p), stride=(p, p))
        patches = patches.reshape(t.size(0), p, p, -1)
        patches = patches.permute(0, 1, 3, 2).reshape(t.size(0), p, -1)
        return patches.numpy()

    def preprocess(self, image: Image.Image) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """One image -> (pixel_values per slice [3, 14, L*14] float32, tgt_sizes (h, w))."""
        image = image.convert("RGB")
        pixel_values, tgt_sizes = [], []
        mean = np.array(self.norm_mean, dtype=np.float32)[:, None, None]
        std = np.array(self.norm_std, dtype=np.float32)[:, None, None]
        for piece in self.get_sliced_images(image):
            x = np.asarray(piece, dtype=np.float32) / np.float32(255.0)  # rescale 1/255
            x = x.transpose(2, 0, 1)  # HWC -> CHW
            x = ((x - mean) / std).astype(np.float32)
            pixel_values.append(self.reshape_by_patch(np.ascontiguousarray(x)))
            tgt_sizes.append((x.shape[1] // self.patch_size, x.shape[2] // self.patch_size))
        return pixel_values, tgt_sizes

    def slice_sizes(self, image: Image.Image) -> list[tuple[int, int]]:
        """(W, H) in pixels of each slice, overview first."""
        return [s.size for s in self.get_sliced_images(image.convert("RGB"))]


# --- processing_minicpmv.py + the chat template ---------------------------------------------------


@functools.lru_cache(maxsize=4)
def _compiled(chat_template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(chat_template)


def render_chat(chat_template: str, messages: list[dict[str, str]]) -> str:
    """apply_chat_template(tokenize=False, add_generation_prompt=True), as transformers renders."""
    return str(_compiled(chat_template).render(messages=messages, add_generation_prompt=True))


def user_content(n_images: int, question: str) -> str:
    """chat(): each image becomes the literal pattern; the content parts are joined with \\n."""
    return "\n".join([IMAGE_PATTERN] * n_images + [question])


def expand_images(proc: Processor, text: str, image_sizes: list[tuple[int, int]]) -> str:
    """_convert_images_texts_to_inputs: replace image i's pattern by its placeholder text."""
    image_tags = re.findall(re.escape(IMAGE_PATTERN), text)
    if len(image_tags) != len(image_sizes):
        raise ValueError(f"{len(image_tags)} image patterns for {len(image_sizes)} images")
    text_chunks = text.split(IMAGE_PATTERN)
    final_text = ""
    for i in range(len(image_tags)):
        final_text += text_chunks[i] + proc.get_slice_image_placeholder(image_sizes[i], i)
    return final_text + text_chunks[-1]


def image_bound(ids: list[int], special: dict[str, int]) -> list[tuple[int, int]]:
    """_convert: [start, end) of each run of placeholders, from <image>/<slice> and their ends."""
    t = torch.tensor(ids, dtype=torch.int32)
    start_cond = (t == special["<image>"]) | (t == special["<slice>"])
    end_cond = (t == special["</image>"]) | (t == special["</slice>"])
    starts = (torch.where(start_cond)[0] + 1).tolist()
    ends = torch.where(end_cond)[0].tolist()
    n = max(len(starts), len(ends))
    return list(zip(starts[:n], ends[:n]))


# --- resampler.py ---------------------------------------------------------------------------------


def get_2d_sincos_pos_embed(embed_dim: int, image_size: tuple[int, int]) -> np.ndarray:
    grid_h_size, grid_w_size = image_size
    grid_h = np.arange(grid_h_size, dtype=np.float32)
    grid_w = np.arange(grid_w_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)
    emb_h = _1d_sincos_from_grid(embed_dim // 2, grid[0])  # (H, W, D/2)
    emb_w = _1d_sincos_from_grid(embed_dim // 2, grid[1])  # (H, W, D/2)
    return np.concatenate([emb_h, emb_w], axis=-1)  # (H, W, D)


def _1d_sincos_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float32)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega  # (D/2,)
    out = np.einsum("hw,d->hwd", pos, omega)  # (H, W, D/2), outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=-1)  # (H, W, D)


class Resampler(nn.Module):
    """resampler.py's Resampler (adaptive=True): one cross-attention from learned queries."""

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_post = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Parameter((embed_dim**-0.5) * torch.randn(embed_dim, embed_dim))
        self.max_size = (70, 70)
        self._set_2d_pos_cache(self.max_size)
        nn.init.trunc_normal_(self.query, std=0.02)
        nn.init.trunc_normal_(self.kv_proj.weight, std=0.02)

    def _set_2d_pos_cache(self, max_size: tuple[int, int]) -> None:
        pos_embed = torch.from_numpy(get_2d_sincos_pos_embed(self.embed_dim, max_size)).float()
        self.register_buffer("pos_embed", pos_embed, persistent=False)

    def _adjust_pos_cache(self, tgt_sizes: torch.Tensor) -> None:
        max_h = int(torch.max(tgt_sizes[:, 0]))
        max_w = int(torch.max(tgt_sizes[:, 1]))
        if max_h > self.max_size[0] or max_w > self.max_size[1]:
            self.max_size = (max(max_h, self.max_size[0]), max(max_w, self.max_size[1]))
            self._set_2d_pos_cache(self.max_size)

    def forward(self, x: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        bs = x.shape[0]
        dtype = x.dtype
        patch_len = tgt_sizes[:, 0] * tgt_sizes[:, 1]
        self._adjust_pos_cache(tgt_sizes)
        max_patch_len = int(torch.max(patch_len))
        key_padding_mask = torch.zeros((bs, max_patch_len), dtype=torch.bool)
        pos_embed = []
        for i in range(bs):
            tgt_h, tgt_w = int(tgt_sizes[i][0]), int(tgt_sizes[i][1])
            pos_embed.append(
                self.pos_embed[:tgt_h, :tgt_w, :].reshape((tgt_h * tgt_w, -1)).to(dtype)
            )
            key_padding_mask[i, int(patch_len[i]) :] = True
        pos = nn.utils.rnn.pad_sequence(pos_embed, batch_first=True, padding_value=0.0)
        pos = pos.permute(1, 0, 2)  # BLD => LBD
        x = self.kv_proj(x)  # B * L * D
        x = self.ln_kv(x).permute(1, 0, 2)  # L * B * D
        q = self.ln_q(self.query)  # Q * D
        out = self.attn(
            q.unsqueeze(1).repeat(1, bs, 1),  # Q * B * D
            x + pos,  # L * B * D +  L * B * D
            x,
            key_padding_mask=key_padding_mask,
        )[0]
        x = out.permute(1, 0, 2)  # B * Q * D
        x = self.ln_post(x)
        return x @ self.proj


# --- modeling_minicpmv.py + modeling_navit_siglip.py ----------------------------------------------


@dataclass(frozen=True)
class Dims:
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    vision_layers: int
    vision_image_size: int  # 980 -> 70 position buckets per side
    patch: int
    query_num: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    vocab: int
    rope_theta: float
    eps: float = 1e-6


class MiniCPMV(nn.Module):
    """vpm + resampler + llm, with the tensor names of the 2.6 checkpoint."""

    def __init__(self, d: Dims) -> None:
        super().__init__()
        self.dims = d
        vcfg = Idefics2VisionConfig(
            hidden_size=d.vision_hidden,
            intermediate_size=d.vision_intermediate,
            num_hidden_layers=d.vision_layers,
            num_attention_heads=d.vision_heads,
            image_size=d.vision_image_size,
            patch_size=d.patch,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=d.eps,
        )
        vcfg._attn_implementation = "sdpa"  # the math kernel in float64; additive mask honoured
        self.vpm = Idefics2VisionTransformer(vcfg)
        self.resampler = Resampler(d.query_num, d.hidden, d.hidden // 128, d.vision_hidden)
        lcfg = Qwen2Config(
            vocab_size=d.vocab,
            hidden_size=d.hidden,
            intermediate_size=d.intermediate,
            num_hidden_layers=d.layers,
            num_attention_heads=d.heads,
            num_key_value_heads=d.kv_heads,
            rms_norm_eps=d.eps,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": d.rope_theta},
            max_position_embeddings=32768,
            use_sliding_window=False,
        )
        lcfg._attn_implementation = "sdpa"
        self.llm = Qwen2ForCausalLM(lcfg)

    # modeling_navit_siglip.SiglipVisionEmbeddings.forward (with tgt_sizes)
    def vision_embeddings(
        self,
        pixel_values: torch.Tensor,
        patch_attention_mask: torch.Tensor,
        tgt_sizes: torch.Tensor,
    ) -> torch.Tensor:
        emb = self.vpm.embeddings
        batch_size = pixel_values.size(0)
        patch_embeds = emb.patch_embedding(pixel_values)
        embeddings = patch_embeds.flatten(2).transpose(1, 2)
        max_im_h, max_im_w = pixel_values.size(2), pixel_values.size(3)
        patch = self.dims.patch
        max_nb_patches_h, max_nb_patches_w = max_im_h // patch, max_im_w // patch
        side = self.dims.vision_image_size // patch
        boundaries = torch.arange(1 / side, 1.0, 1 / side)
        position_ids = torch.full((batch_size, max_nb_patches_h * max_nb_patches_w), 0)
        for batch_idx, p_attn_mask in enumerate(patch_attention_mask):
            nb_patches_h = tgt_sizes[batch_idx][0]
            nb_patches_w = tgt_sizes[batch_idx][1]
            fractional_coords_h = torch.arange(0, 1 - 1e-6, 1 / nb_patches_h)
            fractional_coords_w = torch.arange(0, 1 - 1e-6, 1 / nb_patches_w)
            bucket_coords_h = torch.bucketize(fractional_coords_h, boundaries, right=True)
            bucket_coords_w = torch.bucketize(fractional_coords_w, boundaries, right=True)
            pos_ids = (bucket_coords_h[:, None] * side + bucket_coords_w).flatten()
            position_ids[batch_idx][p_attn_mask.view(-1)] = pos_ids
        return embeddings + emb.position_embedding(position_ids)

    # modeling_navit_siglip.SiglipVisionTransformer.forward
    def vision_tower(
        self,
        pixel_values: torch.Tensor,
        patch_attention_mask: torch.Tensor,
        tgt_sizes: torch.Tensor,
    ) -> torch.Tensor:
        batch_size = pixel_values.size(0)
        hidden = self.vision_embeddings(pixel_values, patch_attention_mask, tgt_sizes)
        mask = patch_attention_mask.view(batch_size, -1)
        attention_mask = None
        if torch.any(~mask):
            # _prepare_4d_attention_mask: finfo.min on padded keys, for every query row
            inverted = 1.0 - mask[:, None, None, :].to(hidden.dtype)
            attention_mask = inverted.masked_fill(inverted.bool(), torch.finfo(hidden.dtype).min)
            attention_mask = attention_mask.expand(batch_size, 1, mask.shape[1], mask.shape[1])
        out = self.vpm.encoder(inputs_embeds=hidden, attention_mask=attention_mask)
        return self.vpm.post_layernorm(out.last_hidden_state)

    # modeling_minicpmv.MiniCPMV.get_vllm_embedding (vision part)
    def image_features(
        self, pixel_values: list[torch.Tensor], tgt_sizes: torch.Tensor, vision_batch_size: int = 16
    ) -> torch.Tensor:
        """Slices [3, 14, L_i*14] -> resampler output [n_slices, query_num, hidden]."""
        dtype = self.llm.model.embed_tokens.weight.dtype
        max_patches = int(torch.max(tgt_sizes[:, 0] * tgt_sizes[:, 1]))
        all_pixel_values = [i.flatten(end_dim=1).permute(1, 0) for i in pixel_values]
        padded = nn.utils.rnn.pad_sequence(all_pixel_values, batch_first=True, padding_value=0.0)
        b, length, _ = padded.shape
        padded = padded.permute(0, 2, 1).reshape(b, 3, -1, length)
        patch_attn_mask = torch.zeros((b, 1, max_patches), dtype=torch.bool)
        for i in range(b):
            patch_attn_mask[i, 0, : int(tgt_sizes[i][0] * tgt_sizes[i][1])] = True
        chunks = []
        for i in range(0, b, vision_batch_size):
            chunks.append(
                self.vision_tower(
                    padded[i : i + vision_batch_size].type(dtype),
                    patch_attn_mask[i : i + vision_batch_size],
                    tgt_sizes[i : i + vision_batch_size],
                )
            )
        vision_embedding = torch.cat(chunks, dim=0)
        return self.resampler(vision_embedding, tgt_sizes)

    def embed(
        self, input_ids: torch.Tensor, bounds: list[list[tuple[int, int]]], features: torch.Tensor
    ) -> torch.Tensor:
        """input_ids [B, T]; bounds per row; features [sum of spans, Q, D] in bound order."""
        emb = self.llm.model.embed_tokens(input_ids)
        rows, cols = [], []
        for b, spans in enumerate(bounds):
            for s, e in spans:
                rows.append(torch.full((e - s,), b, dtype=torch.long))
                cols.append(torch.arange(s, e))
        if not rows:
            return emb
        emb = emb.clone()
        emb[torch.cat(rows), torch.cat(cols)] = features.reshape(-1, emb.shape[-1])
        return emb


def build_dims(vocab: int) -> Dims:
    """The tiny fixture's sizes (shared/reference/minicpmv-e2e.md section 8)."""
    return Dims(
        vision_hidden=64,
        vision_intermediate=256,
        vision_heads=4,
        vision_layers=4,
        vision_image_size=980,
        patch=14,
        query_num=16,
        hidden=128,
        intermediate=384,
        heads=4,
        kv_heads=2,
        layers=2,
        vocab=vocab,
        rope_theta=10000.0,
    )


def tensor_dict(model: MiniCPMV) -> dict[str, torch.Tensor]:
    """The checkpoint tensors by their 2.6 names (the resampler's sin-cos cache is not one)."""
    return {k: v for k, v in model.state_dict().items() if k != "resampler.pos_embed"}


def as_tensors(
    pixel_values: list[np.ndarray], tgt_sizes: list[tuple[int, int]], dtype: torch.dtype
) -> tuple[list[torch.Tensor], torch.Tensor]:
    px = [torch.from_numpy(p).to(dtype) for p in pixel_values]
    return px, torch.tensor(tgt_sizes, dtype=torch.int32)


def greedy(
    model: MiniCPMV, embeds: torch.Tensor, stop_ids: set[int], max_new_tokens: int
) -> tuple[torch.Tensor, list[int], list[float]]:
    """Prefill [1, T, D], then greedy with the KV cache: (prefill logits [T, V], ids, gaps)."""
    out = model.llm(inputs_embeds=embeds, use_cache=True)
    prefill = out.logits[0]
    step = prefill[-1]
    tokens: list[int] = []
    margins: list[float] = []
    while len(tokens) < max_new_tokens:
        top2 = torch.topk(step, 2).values
        margins.append(float(top2[0] - top2[1]))
        tokens.append(int(step.argmax()))
        if tokens[-1] in stop_ids:
            break
        cache: Any = getattr(out, "cache", None) or out.past_key_values
        out = model.llm(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
        step = out.logits[0, -1]
    return prefill, tokens, margins
