"""Image data: real photos shipped by installed packages, and (later) the retrieval datasets."""
