"""The library: the items on disk, `index.json` (the commit point) and what changes them.

Belongs here: the store and its commit protocol and start-up recovery, upload intake, progress
jobs, re-rendering (the maintenance thread), backup and restore.

Must not be here: HTTP parsing, driver calls, playback decisions. The library uses media to
render, never the player or a driver (docs/architecture.md, "Packages").
"""
