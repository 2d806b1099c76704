"""Showing a run: where it stands as plain data (:mod:`.progress`), the progress line
(:mod:`.display`) and the live panel on a terminal (:mod:`.live`)."""
