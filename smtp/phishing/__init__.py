"""Phishing features: pure functions over a parsed mail's parts, used by :mod:`smtp.checks.phishing`.

``urls`` (registrable domains by the Public Suffix List, hosts, credential words), ``lookalike`` (IDN decoding,
Unicode TR39 confusable skeletons, edit distance against protected domains), ``brands`` (the shipped brand list),
``html`` (forms, password fields, hidden text, link text), ``qr`` (QR codes in images and PDFs) and ``display``
(display names that claim a brand or a colleague). Nothing here touches the network, the database or Redis.
"""
