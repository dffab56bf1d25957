"""A seed-style pipeline, to measure what the real services improved on.

This is the kind of code the original deployment ran, kept deliberately naive: kafka-python
clients, the producer and inference flushing after every single message, one image per forward
pass, and the sink doing a GET then a PUT per CouchDB document over plain `requests` (a new
connection each time). It speaks the same message contract and writes the same documents, so
`make bench` runs it end to end on the same broker and store as the real services.

Not for production: offsets are auto-committed (at-most-once on a crash), nothing is validated.
"""
