"""The operator console (routes.py): pages, the estimator, vendored browser assets."""
