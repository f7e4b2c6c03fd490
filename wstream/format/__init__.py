"""The .wst format: spec constants, the manifest (the only parser of untrusted bytes), codecs,
CRC-32 and quantized layouts. Imports only :mod:`wstream.errors`."""
