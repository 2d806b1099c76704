"""Where a run's images, views and journal go: a folder (:mod:`.local`) or a bucket
(:mod:`.bucket`), behind one interface (:class:`Output`).  The run, status, verify,
prune, export and the gallery ask an output for what they need and never which kind it
is; what a bucket cannot do is refused in one place (:meth:`Output.refuse`).

Light to import: the command line's fast path loads the lease's length from here.
"""
