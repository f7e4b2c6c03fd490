"""The real request: image slicing, placeholders, tokenizer, chat template, sampling."""
