"""Container I/O: byte sources, reader, writer, checkpoint sources."""
