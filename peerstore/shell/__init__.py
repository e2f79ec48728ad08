"""I/O: the helpers both shells use, the piece store, the trio daemon and the client."""
