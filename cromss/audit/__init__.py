"""``cromss audit``: the wrong labels of a whole dataset, scored by a pretrained CromSS run, ranked and on the map.

* :mod:`~cromss.audit.samples` — every labelled (location, timestamp) of any dataset kind, streamed;
* :mod:`~cromss.audit.scoring` — ``1 - W_l`` with per-class thresholds over the whole dataset (pure torch);
* :mod:`~cromss.audit.maps` — score GeoTIFFs on the label's grid;
* :mod:`~cromss.audit.ranking` — the ranked table of samples;
* :mod:`~cromss.audit.reference` — ROC-AUC / AP / precision@k against a reference label, streamed;
* :mod:`~cromss.audit.cleaning` — ``--clean``: a generic dataset with flagged labels ignored or relabelled;
* :mod:`~cromss.audit.panels` — panels of the worst samples and the ``cromss report`` section;
* :mod:`~cromss.audit.run` — the two passes (:func:`run_audit`).

See docs/audit.md.
"""

from cromss.audit.run import SUMMARY_FILE, AuditOptions, run_audit

__all__ = ["SUMMARY_FILE", "AuditOptions", "run_audit"]
