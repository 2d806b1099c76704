"""Scenario's API: the client (the one choke point every request goes through), how its
requests travel (:mod:`.transport`), assets into verified files (:mod:`.download`), its
JSON read into records (:mod:`.records`), and models' inputs with the pre-flight check of
a manifest against them (:mod:`.inputs`, :mod:`.preflight`)."""
