"""What stays on disk: the journal (the durable record, :mod:`.journal`) and its group
commit (:mod:`.commits`), the output lock (:mod:`.lock`), files, hashes and atomic writes
(:mod:`.files`), and the views rebuilt from the journal: ``results.jsonl``
(:mod:`.results`) and ``metadata.jsonl`` (:mod:`.dataset`)."""
