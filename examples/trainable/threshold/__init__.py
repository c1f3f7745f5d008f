"""A one-feature logistic classifier on synthetic data: trained by ``train``, used by ``predict``."""
