"""Readers and file conventions: DICOM series (``dicom``), BraTS Task 1 cases (``brats``), the Task 2
layout (``task2``), SETTINGS.json (``settings``), atomic writes (``io``), intensity scaling
(``intensity``) and the input contract of a checkpoint (``contract``). Also holds the shipped
published fold assignment (``t4e_folds.csv``)."""

from mgmt2d._lazy import lazy_exports

__all__ = ["DicomSeriesError", "SeriesMeta", "load_settings", "read_series", "read_series_many"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "read_series": "mgmt2d.data.dicom",
    "read_series_many": "mgmt2d.data.dicom",
    "SeriesMeta": "mgmt2d.data.dicom",
    "DicomSeriesError": "mgmt2d.data.dicom",
    "load_settings": "mgmt2d.data.settings",
})
