"""Container I/O: byte sources (the :class:`~wstream.container.source.ByteSource` protocol and the
local file), the reader (:class:`~wstream.container.reader.Container`), the writer, atomic
writes and the safetensors checkpoint source. Imports only the format layer and errors."""
