"""Named, calibrated W+ directions (issue 16): ``directions find`` (sample, render, measure, fit,
calibrate) and ``directions from-labels`` (labelled photos encoded by pSp). The file format is
``talkcli.models.directions``; the measured quantities are ``talkcli.face.measures``."""
