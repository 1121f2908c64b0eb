"""The audit: re-evaluate someone else's model and checkpoint against a claimed number.

``run`` (claim parsing, guard rails, the verdict, ``harness audit``), ``model_files`` (a user's
model file and factory, loaded by choice) and ``report`` (the audit's Markdown / HTML / CLI text).
It stands on the application's evaluation engine and on the kernel; nothing below imports it.
"""
