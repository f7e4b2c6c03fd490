"""The real request: an image file and a prompt in, token ids, pixels and image spans out.

- :mod:`wstream.pipeline.image`: the preprocessor config, loading an image file as RGB, the
  MiniCPM-V slicing geometry, the slices as normalised ``[3, h, w]`` float32 arrays;
- :mod:`wstream.pipeline.placeholders`: the placeholder text of each image, the prompt's image
  markers, and the ``image_bound`` spans recovered from token ids.

Both follow the Hugging Face remote code of MiniCPM-V 2.6 (``image_processing_minicpmv.py``,
``processing_minicpmv.py``); the project reference ``minicpmv-e2e.md`` §1–§2 has the facts,
with sources.
"""
