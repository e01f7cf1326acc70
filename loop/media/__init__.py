"""Media: turning untrusted uploads into panel frames, and the frame file they are kept in.

Belongs here: decoding images (Pillow) and video (ffmpeg), fitting pictures to the panel,
pixel formats, the on-disk frame-file format, thumbnails, status screens and text rendering.
Pure functions of their inputs (files, a `Target`, a config section).

Must not be here: anything that knows the library on disk, HTTP, a driver, a thread or the
service. This package imports nothing else of LOOP (docs/architecture.md, "Packages").
"""
