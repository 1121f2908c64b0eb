"""The audit: re-evaluate someone else's model and checkpoint against a claimed number.

``run`` (claim parsing, guard rails, the verdict, ``harness audit``) and ``model_files`` (a
user's model file and factory, loaded by choice). The audit renders through ``reports/``
(``reports.audit_report`` for audit.md / audit.html, ``reports.summaries`` for the CLI text).
It stands on the application's evaluation engine and on the kernel; nothing below imports it.
"""
