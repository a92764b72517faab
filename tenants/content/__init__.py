"""The content model: a linear classifier over hashed text, URL and structure features of a mail.

``features`` turns a mail into a vector, ``model`` holds a trained model (the MSP-level base shipped in ``data/``),
``online`` learns a tenant's delta on top of the base one mail at a time, ``train`` builds a base from labelled
corpora (``mailward model train``).
"""
